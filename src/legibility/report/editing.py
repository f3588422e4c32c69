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
