"""The analysis of a study sweep: every variant against the baseline at every grid point, paired by seed.

A *cell* is one variant at one grid point (e.g. ``model.d_ffn = 256``), with one trial per seed. A variant's
*cost* is its general-text validation loss minus the baseline's at the same grid point and seed (nats/token,
SoLU's convention; the mixed validation loss stands in when the sweep trained without held-out text). Seeds
are the units of every interval here (95% Student-t over seeds or over (grid point, seed) pairs), so a CI
says how much the result moves when the model is trained again, not only how much it moves over facts.

The essay's hypotheses are checked as paired differences; each gets one sentence saying whether it held
(the CI excludes 0 in the predicted direction), was contradicted (it excludes 0 the other way) or was not
decided. ``analyse_study`` returns everything as plain data; ``study_markdown`` and the figures render it.

>>> rows = [
...     {"variant": v, "seed": s, "status": "done", "overrides": {"model.d_ffn": w},
...      "train": {"text_val_loss": 2.0 + (0.1 if v == "dropout" else 0) + 0.01 * s, "fact_accuracy": 0.9},
...      "metrics": {"specific_suppressability": {"value": w / 1000 + (0.0 if v == "none" else 0.05)}}}
...     for v in ("none", "dropout") for w in (64, 512) for s in (0, 1, 2)]
>>> study = analyse_study(rows)
>>> study["grid"], round(study["cells"][1]["cost"]["value"], 3)
(['model.d_ffn'], 0.1)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from legibility.metrics.stats import Estimate, t_estimate
from legibility.report.frontier import loss_key, trial_metrics
from legibility.report.plotting import pyplot

HEADLINE = "specific_suppressability"
# The goal of the issue: individually removable facts at a small cost.
GOAL_SPECIFIC, GOAL_COST = 0.8, 0.05
# Columns of the per-cell table: (metric, label, decimals).
COLUMNS = (
    ("fact_accuracy", "held-out top-1", 3),
    ("specific_suppressability", "specific suppr.", 3),
    ("suppressability", "suppressability", 3),
    ("suppression.own", "own drop", 3),
    ("suppression.same_relation", "same-rel. drop", 3),
    ("neurons.per_fact", "neurons/fact", 1),
    ("facts_scored", "facts scored", 1),
)


@dataclass(frozen=True)
class Hypothesis:
    """``variant`` minus ``reference`` on ``metric`` is predicted to have sign ``sign`` (+1 or -1)."""

    name: str
    claim: str  # the essay's claim in a few words
    variant: str
    reference: str
    metric: str
    sign: int


# The essay's hypotheses (../shared/docs/essay.txt, sections 2 and 4) as paired comparisons of variants.
HYPOTHESES = (
    Hypothesis("dropout", "dropout is bad for interpretability", "dropout", "none", HEADLINE, -1),
    Hypothesis(
        "explicit dropout",
        "an explicit dropout regularizer with gradient noise is more interpretable than dropout",
        "explicit_dropout",
        "dropout",
        HEADLINE,
        +1,
    ),
    Hypothesis(
        "sparse connections",
        "sparse connections force sparser, more interpretable representations",
        "sparse_connections",
        "none",
        HEADLINE,
        +1,
    ),
    Hypothesis(
        "locality",
        "locality (metabolic) costs make networks more interpretable",
        "locality",
        "none",
        HEADLINE,
        +1,
    ),
    Hypothesis(
        "decorrelation",
        "a loss on activation correlations makes networks more interpretable",
        "decorrelation",
        "none",
        HEADLINE,
        +1,
    ),
    Hypothesis("SoLU", "SoLU activations make neurons more interpretable", "solu", "none", HEADLINE, +1),
    Hypothesis(
        "suppressability objective (its own number)",
        "training for suppressability raises suppressability",
        "suppressability",
        "none",
        "suppressability",
        +1,
    ),
    Hypothesis(
        "suppressability objective (specific)",
        "training for suppressability makes single facts removable",
        "suppressability",
        "none",
        HEADLINE,
        +1,
    ),
    Hypothesis(
        "specific-suppressability objective",
        "training for specific suppressability makes single facts removable",
        "specific_suppressability",
        "none",
        HEADLINE,
        +1,
    ),
)


def grid_keys(rows: Sequence[dict]) -> list[str]:
    """Override keys whose value differs between trials of the same variant: the sweep's grid axes."""
    values: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        for k, v in (r.get("overrides") or {}).items():
            values[(r["variant"], k)].add(repr(v))
    return sorted({k for (_, k), vs in values.items() if len(vs) > 1})


def _point(row: dict, keys: Sequence[str]) -> tuple:
    over = row.get("overrides") or {}
    return tuple(over.get(k) for k in keys)


def _label(keys: Sequence[str], point: tuple) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in zip(keys, point, strict=True)) or "all"


def _est(e: Estimate) -> dict:
    return e.to_dict()


def analyse_study(rows: Sequence[dict], baseline: str = "none") -> dict[str, Any]:
    """Cells, paired costs, hypotheses and the goal check of the finished trials ``rows``."""
    done = [r for r in rows if r.get("status", "done") == "done"]
    keys = grid_keys(done)
    loss = loss_key(done)
    by_cell: dict[tuple[str, tuple], dict[int, dict[str, float]]] = defaultdict(dict)
    for r in done:
        m = trial_metrics(r)
        n = ((r.get("metrics") or {}).get(HEADLINE) or {}).get("n")
        if isinstance(n, int | float):
            m["facts_scored"] = float(n)  # the facts the model knew, over which the scorecard averages
        by_cell[(r["variant"], _point(r, keys))][int(r["seed"])] = m
    points = sorted({p for _, p in by_cell}, key=_sort_key)
    variants = sorted({v for v, _ in by_cell}, key=lambda v: (v != baseline, v))

    def paired(variant: str, reference: str, metric: str, only: tuple | None = None) -> np.ndarray:
        return _seed_diffs(
            [
                (by_cell.get((variant, p), {}), by_cell.get((reference, p), {}))
                for p in ([only] if only else points)
            ],
            metric,
        )

    cells = []
    for p in points:
        for v in variants:
            seeds = by_cell.get((v, p))
            if not seeds:
                continue
            cell: dict[str, Any] = {
                "variant": v,
                "point": list(p),
                "label": _label(keys, p),
                "seeds": sorted(seeds),
            }
            for metric, _, _ in COLUMNS:
                cell[metric] = _est(t_estimate([m[metric] for m in seeds.values() if metric in m]))
            cell["loss"] = _est(t_estimate([m[loss] for m in seeds.values() if loss in m]))
            has_base = (baseline, p) in by_cell  # the baseline's own cells pair with themselves: zero cost
            cell["cost"] = _est(t_estimate(paired(v, baseline, loss, p))) if has_base else None
            # the facts' own price: held-out top-1 lost against the baseline (what nats on text do not see)
            acc = paired(v, baseline, "fact_accuracy", p)
            cell["accuracy_cost"] = _est(t_estimate(-acc)) if has_base else None
            s, c = cell[HEADLINE]["value"], (cell["cost"] or {}).get("value", float("nan"))
            cell["goal"] = bool(s >= GOAL_SPECIFIC and c <= GOAL_COST)
            cells.append(cell)

    hypotheses = []
    for h in HYPOTHESES:
        if (h.variant not in variants) or (h.reference not in variants):
            continue
        diff = t_estimate(paired(h.variant, h.reference, h.metric))
        h_cost = t_estimate(paired(h.variant, baseline, loss)) if h.variant != baseline else None
        hypotheses.append(
            {
                "name": h.name,
                "claim": h.claim,
                "variant": h.variant,
                "reference": h.reference,
                "metric": h.metric,
                "sign": h.sign,
                "difference": _est(diff),
                "per_point": [_est(t_estimate(paired(h.variant, h.reference, h.metric, p))) for p in points],
                "cost": _est(h_cost) if h_cost else None,
                "verdict": verdict(diff, h.sign),
            }
        )
    comparisons = [
        {
            "variant": v,
            "points": [list(p) for p in points if (v, p) in by_cell and (baseline, p) in by_cell],
            **{
                m: _est(t_estimate(paired(v, baseline, m)))
                for m in (HEADLINE, "suppressability", "fact_accuracy")
            },
            "cost": _est(t_estimate(paired(v, baseline, loss))),
        }
        for v in variants
        if v != baseline
    ]
    width = _width_hypothesis(keys, points, by_cell, baseline, variants)
    if width:
        hypotheses.insert(0, width)
    return {
        "baseline": baseline,
        "grid": keys,
        "points": [list(p) for p in points],
        "cost_metric": loss,
        "variants": variants,
        "cells": cells,
        "hypotheses": hypotheses,
        "comparisons": comparisons,
        "goal": {"specific_suppressability": GOAL_SPECIFIC, "cost_nats": GOAL_COST},
    }


def _seed_diffs(pairs: Sequence[tuple[dict, dict]], metric: str) -> np.ndarray:
    """``a - b`` on ``metric`` for every seed both cells of each (a, b) pair have (cells: seed -> metrics)."""
    return np.array(
        [
            a[s][metric] - b[s][metric]
            for a, b in pairs
            for s in sorted(a)
            if s in b and metric in a[s] and metric in b[s]
        ]
    )


def _sort_key(p: tuple) -> tuple:
    return tuple((0, float(x)) if isinstance(x, int | float) else (1, repr(x)) for x in p)


def _width_hypothesis(keys, points, by_cell, baseline, variants) -> dict | None:
    """Larger networks are more interpretable: the widest grid point minus the narrowest (a single numeric
    axis), paired by seed, for the baseline and pooled over every variant."""
    if len(keys) != 1 or len(points) < 2 or not all(isinstance(p[0], int | float) for p in points):
        return None
    lo, hi = points[0], points[-1]

    def diffs(vs: Sequence[str]) -> np.ndarray:
        return _seed_diffs([(by_cell.get((v, hi), {}), by_cell.get((v, lo), {})) for v in vs], HEADLINE)

    base, pooled = t_estimate(diffs([baseline])), t_estimate(diffs(variants))
    return {
        "name": "width",
        "claim": "larger networks are more interpretable",
        "variant": f"{baseline} at {keys[0]} = {hi[0]}",
        "reference": f"{baseline} at {keys[0]} = {lo[0]}",
        "metric": HEADLINE,
        "sign": +1,
        "difference": _est(base),
        "pooled": _est(pooled),
        "cost": None,
        "verdict": verdict(base, +1),
    }


def verdict(diff: Estimate, sign: int) -> str:
    """``held`` when the CI excludes 0 in the predicted direction, ``contradicted`` when it excludes 0 the
    other way, ``not decided`` otherwise (or with fewer than 2 pairs)."""
    if diff.n < 2 or not np.isfinite(diff.ci_low):
        return "not decided"
    if sign * diff.ci_low > 0 and sign * diff.ci_high > 0:
        return "held"
    if sign * diff.ci_low < 0 and sign * diff.ci_high < 0:
        return "contradicted"
    return "not decided"


def _ci(e: dict | None, digits: int = 3, signed: bool = False) -> str:
    if not e or not np.isfinite(e["value"]):
        return "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if e["n"] < 2:
        return f.format(e["value"])
    return f"{f.format(e['value'])} [{e['ci_low']:.{digits}f}, {e['ci_high']:.{digits}f}]"


def sentence(h: dict) -> str:
    """One sentence on a hypothesis: the claim, what was measured, and the verdict."""
    d = h["difference"]
    what = (
        f"{h['metric']} of {h['variant']} minus {h['reference']}: {_ci(d, signed=True)} (n = {d['n']} pairs)"
    )
    if h.get("pooled"):
        what += f"; over every variant, {_ci(h['pooled'], signed=True)} (n = {h['pooled']['n']})"
    if h.get("cost"):
        what += f"; cost {_ci(h['cost'], signed=True)} nats"
    return f"**{h['name']}** ({h['claim']}): {h['verdict']}. {what}."


def study_markdown(study: dict) -> str:
    """The study as markdown: the per-cell table, the hypotheses' sentences, and the goal check."""
    head = ["grid point", "variant", "seeds", study["cost_metric"], "cost (nats)"]
    head += [label for _, label, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in study["cells"]:
        vals = [c["label"], c["variant"], str(len(c["seeds"])), _ci(c["loss"]), _ci(c["cost"], signed=True)]
        vals += [_ci(c[m], digits) for m, _, digits in COLUMNS]
        lines.append("| " + " | ".join(vals) + (" (goal)" if c["goal"] else "") + " |")
    goal = study["goal"]
    reached = [c for c in study["cells"] if c["goal"]]
    best = max(study["cells"], key=lambda c: c[HEADLINE]["value"], default=None)
    out = [
        f"Cost = {study['cost_metric']} minus the `{study['baseline']}` baseline's at the same grid point and "
        "seed; intervals are 95% Student-t over seeds.",
        "",
        *lines,
        "",
        "Hypotheses (paired by grid point and seed):",
        "",
        *[f"- {sentence(h)}" for h in study["hypotheses"]],
        "",
        *_per_point_table(study),
        *_comparison_table(study),
    ]
    if reached:
        out.append(
            f"Goal (specific suppressability >= {goal['specific_suppressability']} at <= {goal['cost_nats']} "
            f"nats): reached by {', '.join(c['variant'] + ' at ' + c['label'] for c in reached)}."
        )
    elif best:
        out.append(
            f"Goal (specific suppressability >= {goal['specific_suppressability']} at <= {goal['cost_nats']} "
            f"nats): not reached. Closest: {best['variant']} at {best['label']}, specific suppressability "
            f"{_ci(best[HEADLINE])} at a cost of {_ci(best['cost'], signed=True)} nats."
        )
    return "\n".join(out) + "\n"


def _per_point_table(study: dict) -> list[str]:
    """Each comparison's difference at every grid point (does an effect depend on the axis?)."""
    rows = [h for h in study["hypotheses"] if h.get("per_point")]
    if not rows or len(study["points"]) < 2:
        return []
    labels = [_label(study["grid"], tuple(p)) for p in study["points"]]
    out = [
        "The same differences at each grid point (n = seeds):",
        "",
        "| comparison | metric | " + " | ".join(labels) + " |",
        "|" + "---|" * (len(labels) + 2),
    ]
    for h in rows:
        cells = " | ".join(_ci(e, signed=True) for e in h["per_point"])
        out.append(f"| {h['variant']} - {h['reference']} | {h['metric']} | {cells} |")
    return [*out, ""]


def _comparison_table(study: dict) -> list[str]:
    """Every variant minus the baseline, paired over the grid points and seeds both have."""
    rows = study.get("comparisons") or []
    if not rows:
        return []
    out = [
        f"Every variant minus `{study['baseline']}` (paired over the grid points and seeds both have):",
        "",
        "| variant | grid points | specific suppr. | suppressability | held-out top-1 | cost (nats) |",
        "|---|---|---|---|---|---|",
    ]
    for c in rows:
        where = ", ".join(str(p[0]) if len(p) == 1 else str(p) for p in c["points"]) or "none shared"
        vals = [_ci(c[m], signed=True) for m in (HEADLINE, "suppressability", "fact_accuracy", "cost")]
        out.append(f"| {c['variant']} | {where} | " + " | ".join(vals) + " |")
    return [*out, ""]


MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _styles(plt, variants: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """(color, marker) per variant: the 10 Tableau colors, then the same colors with other markers."""
    palette = list(plt.matplotlib.colors.TABLEAU_COLORS.values())
    return {
        v: (palette[i % len(palette)], MARKERS[(i // len(palette)) % len(MARKERS)])
        for i, v in enumerate(variants)
    }


def _legend(fig, axes, ncol: int) -> None:
    """One legend below the panels with every variant of any panel (each once)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(len(seen), ncol), fontsize=8)


def _err(e: dict) -> tuple[float, list[list[float]]]:
    v = e["value"]
    return v, [[max(v - e["ci_low"], 0.0)], [max(e["ci_high"] - v, 0.0)]]


def study_frontier_figure(study: dict, path: str | Path) -> Path:
    """Specific suppressability against the cost, one column per grid point: the cost in nats on held-out
    text (top row, the goal region shaded) and the held-out fact top-1 lost (bottom row)."""
    plt = pyplot()
    points = study["points"]
    rows = (
        ("cost", f"cost: {study['cost_metric']} - baseline (nats)", GOAL_COST),
        ("accuracy_cost", "held-out fact top-1 lost against the baseline", None),
    )
    fig, axes = plt.subplots(
        len(rows), len(points), figsize=(4.2 * len(points) + 1, 8.2), sharey=True, squeeze=False
    )
    styles = _styles(plt, study["variants"])
    for r, (key, xlabel, goal) in enumerate(rows):
        for ax, p in zip(axes[r], points, strict=True):
            for c in study["cells"]:
                if c["point"] != p or not c.get(key):
                    continue
                x, xerr = _err(c[key])
                y, yerr = _err(c[HEADLINE])
                color, marker = styles[c["variant"]]
                ax.errorbar(
                    x, y, xerr=xerr, yerr=yerr, fmt=marker, color=color, capsize=2, label=c["variant"]
                )
            ax.axhline(GOAL_SPECIFIC, color="green", ls=":", lw=1)
            if goal is not None:
                ax.axhspan(GOAL_SPECIFIC, 1.0, color="green", alpha=0.06)
                ax.axvline(goal, color="green", ls=":", lw=1)
            ax.axvline(0, color="grey", lw=0.6)
            ax.set_title(_label(study["grid"], tuple(p)))
            ax.set_xlabel(xlabel)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[r][0].set_ylabel("specific suppressability")
    _legend(fig, axes.ravel(), 5)
    fig.suptitle(
        "Study frontier: means with 95% CIs over seeds; the goal is the shaded top-left corner of the top row"
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def study_width_figure(study: dict, path: str | Path) -> Path | None:
    """Specific suppressability, held-out fact accuracy and the absolute loss against a single numeric grid
    axis (absolute, not the cost: the axis' own effect on performance is the point here)."""
    if len(study["grid"]) != 1 or not all(isinstance(p[0], int | float) for p in study["points"]):
        return None
    plt = pyplot()
    panels = (
        (HEADLINE, "specific suppressability"),
        ("fact_accuracy", "held-out fact top-1"),
        ("loss", f"{study['cost_metric']} (nats/token, lower is better)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.4))
    styles = _styles(plt, study["variants"])
    for ax, (key, label) in zip(axes, panels, strict=True):
        for v in study["variants"]:
            cells = [c for c in study["cells"] if c["variant"] == v and c.get(key)]
            if not cells:
                continue
            xs = [c["point"][0] for c in cells]
            ys = [c[key]["value"] for c in cells]
            lo = [c[key]["value"] - c[key]["ci_low"] for c in cells]
            hi = [c[key]["ci_high"] - c[key]["value"] for c in cells]
            color, marker = styles[v]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker=marker, capsize=2, color=color, label=v)
        ax.set_xscale("log", base=2)
        ax.set_xticks([p[0] for p in study["points"]], [str(p[0]) for p in study["points"]])
        ax.set_xlabel(study["grid"][0])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    _legend(fig, axes, 7)
    fig.suptitle("Against width: means with 95% CIs over seeds")
    fig.tight_layout(rect=(0, 0.14, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
