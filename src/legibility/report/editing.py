"""Markdown tables of the editing experiment (fact edits and relation erase, knowledge vs random neurons)."""

from __future__ import annotations


def summary_markdown(summary: dict) -> str:
    """The summary as two markdown tables (fact edit, relation erase), knowledge neurons vs random."""

    def fmt(x: object) -> str:
        return (
            "n/a"
            if x is None or (isinstance(x, float) and x != x)
            else f"{x:.3f}"
            if isinstance(x, float)
            else str(x)
        )

    edit = summary["edit"]
    variants = list(edit)
    head = " | ".join(f"{v}: knowledge neurons | {v}: random neurons" for v in variants)
    lines = [f"| fact edit (mean over facts) | {head} |", "|---" * (1 + 2 * len(variants)) + "|"]
    for metric in edit[variants[0]]:
        cells = " | ".join(
            f"{fmt(edit[v][metric].get('kn'))} | {fmt(edit[v][metric].get('random'))}" for v in variants
        )
        lines.append(f"| {metric} | {cells} |")
    lines += ["", "| relation erase | knowledge neurons | random neurons |", "|---|---|---|"]
    kn, rnd = summary["erase"]
    for key in kn:
        if key in ("arm", "neurons"):
            continue
        lines.append(f"| {key} | {fmt(kn[key])} | {fmt(rnd.get(key))} |")
    return "\n".join(lines)


def collateral_markdown(effects: list, new: str) -> str:
    """Before/after p(correct) and top-1 share per group of facts (``GroupEffect``s), with ROME's
    neighborhood score (share of prompts where the correct object still beats ``new``) and the facts used."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None or x != x else f"{100 * x:.1f}%"

    lines = [
        f"collateral of the edit on facts the model knows (first 2 prompts each; NS = share of prompts where the "
        f"correct object still beats {new!r}, as ROME's neighborhood score):",
        "| facts | n | p(correct) before | after | change | top-1 before | after | argmax unchanged | NS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in effects:
        lines.append(
            f"| {e.group} | {len(e.fact_ids)} | {e.p_before:.3f} | {e.p_after:.3f} | {pct(e.p_change)} | "
            f"{pct(e.top1_before)} | {pct(e.top1_after)} | {pct(e.unchanged)} | {pct(e.neighborhood_score)} |"
        )
    for e in effects:
        lines.append(f"{e.group}: {', '.join(e.labels)}")
    return "\n".join(lines)
