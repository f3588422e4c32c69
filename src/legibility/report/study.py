"""The analysis of a study sweep: every variant against the baseline at every grid point, paired by seed.

A *cell* is one variant at one grid point (e.g. ``model.d_ffn = 256``), with one trial per seed. A variant's
*cost* is its general-text validation loss minus the baseline's at the same grid point and seed (nats/token,
SoLU's convention; the mixed validation loss stands in when the sweep trained without held-out text). Seeds
are the units of every interval here (95% Student-t over seeds or over (grid point, seed) pairs), so a CI
says how much the result moves when the model is trained again, not only how much it moves over facts.

The hypotheses to check are data (:class:`StudyPlan`, read from a YAML file beside the sweep config, e.g.
``configs/sweeps/study-hypotheses.yaml``): each is a paired difference of two variants on one metric with a
predicted sign. Each gets a two-sided paired t-test over its (grid point, seed) pairs, and the family of
tests is corrected with Holm's method: a hypothesis *held* when its Holm-adjusted p is below the family-wise
alpha and the difference has the predicted sign, was *contradicted* when it is below alpha with the other
sign, and is *not decided* otherwise. The unadjusted 95% CI is shown beside it. ``analyse_study`` returns
everything as plain data; ``study_markdown`` and the figures render it.

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

from legibility.metrics.stats import Estimate, holm, paired_test, t_estimate
from legibility.report.frontier import loss_key, trial_metrics
from legibility.report.plotting import pyplot

HEADLINE = "specific_suppressability"
# Columns of the per-cell table: (metric, label, decimals).
COLUMNS = (
    ("fact_accuracy", "held-out top-1", 3),
    ("specific_suppressability", "specific suppr.", 3),
    ("suppressability", "suppressability", 3),
    ("collateral.same_relation", "same-rel. collateral", 3),
    ("collateral.other_relation", "other-rel. collateral", 3),
    ("neurons.facts_with_any", "facts with neurons", 2),
    ("facts_scored", "facts scored", 1),
)


@dataclass(frozen=True)
class Hypothesis:
    """``variant`` minus ``reference`` on ``metric`` is predicted to have sign ``sign`` (+1 or -1)."""

    name: str
    claim: str  # the claim in a few words
    variant: str
    reference: str
    metric: str
    sign: int


@dataclass(frozen=True)
class Goal:
    """A cell reaches the goal when its mean ``metric`` is at least ``at_least`` at a cost of at most
    ``cost_at_most`` nats/token against the baseline."""

    metric: str = HEADLINE
    at_least: float = 0.8
    cost_at_most: float = 0.05


@dataclass(frozen=True)
class StudyPlan:
    """What a study checks: its hypotheses, the width comparison's metric (None: no width hypothesis),
    the goal, and the family-wise error rate of the Holm correction across every hypothesis."""

    hypotheses: tuple[Hypothesis, ...] = ()
    width_metric: str | None = HEADLINE
    goal: Goal = Goal()
    alpha: float = 0.05


def load_plan(path: str | Path) -> StudyPlan:
    """Read a study plan (hypotheses, width, goal, alpha) from YAML; one-line errors for bad files."""
    import yaml

    from legibility.errors import LegibilityError

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LegibilityError(f"cannot read study plan {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise LegibilityError(f"{p}: a study plan is a mapping with 'hypotheses' (a list), 'goal', 'width'")
    known = {"hypotheses", "goal", "width", "alpha"}
    if extra := set(raw) - known:
        raise LegibilityError(f"{p}: unknown key(s) {sorted(extra)}; a study plan has {sorted(known)}")
    fields = {"name", "claim", "variant", "reference", "metric", "sign"}
    hyps = []
    for i, h in enumerate(raw.get("hypotheses") or []):
        if not isinstance(h, dict) or set(h) != fields or h["sign"] not in (1, -1):
            raise LegibilityError(
                f"{p}: hypothesis {i + 1} needs exactly {sorted(fields)} with sign +1 or -1, got {h!r}"
            )
        text = {k: str(h[k]) for k in ("name", "claim", "variant", "reference", "metric")}
        hyps.append(Hypothesis(**text, sign=int(h["sign"])))
    try:
        goal = Goal(**(raw.get("goal") or {}))
    except TypeError:
        raise LegibilityError(
            f"{p}: goal takes metric, at_least, cost_at_most; got {raw.get('goal')!r}"
        ) from None
    width = raw.get("width", {"metric": HEADLINE})
    alpha = float(raw.get("alpha", 0.05))
    if not 0 < alpha < 1:
        raise LegibilityError(f"{p}: alpha must be in (0, 1), got {alpha}")
    return StudyPlan(tuple(hyps), (width or {}).get("metric"), goal, alpha)


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


def analyse_study(
    rows: Sequence[dict], baseline: str = "none", plan: StudyPlan | None = None
) -> dict[str, Any]:
    """Cells, paired costs, hypotheses (of ``plan``; none by default but the width comparison) and the
    goal check of the finished trials ``rows``."""
    plan = plan or StudyPlan()
    goal = plan.goal
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
            if goal.metric not in cell:
                cell[goal.metric] = _est(
                    t_estimate([m[goal.metric] for m in seeds.values() if goal.metric in m])
                )
            s, c = cell[goal.metric]["value"], (cell["cost"] or {}).get("value", float("nan"))
            cell["goal"] = bool(s >= goal.at_least and c <= goal.cost_at_most)
            cells.append(cell)

    hypotheses: list[dict[str, Any]] = []
    for h in plan.hypotheses:
        if (h.variant not in variants) or (h.reference not in variants):
            continue
        diffs = paired(h.variant, h.reference, h.metric)
        diff = t_estimate(diffs)
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
                "p": paired_test(diffs),
                "per_point": [_est(t_estimate(paired(h.variant, h.reference, h.metric, p))) for p in points],
                "cost": _est(h_cost) if h_cost else None,
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
    width = _width_hypothesis(keys, points, by_cell, baseline, variants, plan.width_metric)
    if width:
        hypotheses.insert(0, width)
    reject, adjusted = holm([h["p"] for h in hypotheses], plan.alpha)
    for row, significant, p_holm in zip(hypotheses, reject, adjusted, strict=True):
        row["p_holm"] = p_holm
        row["verdict"] = verdict(Estimate(**row["difference"]), row["sign"], significant)
        row["verdict_unadjusted"] = verdict(Estimate(**row["difference"]), row["sign"])
    return {
        "baseline": baseline,
        "grid": keys,
        "points": [list(p) for p in points],
        "cost_metric": loss,
        "variants": variants,
        "cells": cells,
        "hypotheses": hypotheses,
        "comparisons": comparisons,
        "goal": {"metric": goal.metric, "at_least": goal.at_least, "cost_nats": goal.cost_at_most},
        "alpha": plan.alpha,
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


def _width_hypothesis(keys, points, by_cell, baseline, variants, metric: str | None) -> dict | None:
    """Larger networks are more interpretable: the widest grid point minus the narrowest (a single numeric
    axis), paired by seed, for the baseline and pooled over every variant."""
    if (
        metric is None
        or len(keys) != 1
        or len(points) < 2
        or not all(isinstance(p[0], int | float) for p in points)
    ):
        return None
    lo, hi = points[0], points[-1]

    def diffs(vs: Sequence[str]) -> np.ndarray:
        return _seed_diffs([(by_cell.get((v, hi), {}), by_cell.get((v, lo), {})) for v in vs], metric)

    base_diffs = diffs([baseline])
    base, pooled = t_estimate(base_diffs), t_estimate(diffs(variants))
    return {
        "name": "width",
        "claim": "larger networks are more interpretable",
        "variant": f"{baseline} at {keys[0]} = {hi[0]}",
        "reference": f"{baseline} at {keys[0]} = {lo[0]}",
        "metric": metric,
        "sign": +1,
        "difference": _est(base),
        "p": paired_test(base_diffs),
        "pooled": _est(pooled),
        "cost": None,
    }


def verdict(diff: Estimate, sign: int, significant: bool | None = None) -> str:
    """``held`` when the difference is significant in the predicted direction, ``contradicted`` when it is
    significant the other way, ``not decided`` otherwise (or with fewer than 2 pairs). ``significant``: the
    corrected test's decision; None decides by the unadjusted CI excluding 0."""
    if diff.n < 2 or not np.isfinite(diff.ci_low):
        return "not decided"
    if significant is not None:
        if not significant:
            return "not decided"
        return "held" if sign * diff.value > 0 else "contradicted"
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
    if np.isfinite(h.get("p", float("nan"))):
        what += f"; p = {h['p']:.3g}, Holm-adjusted {h['p_holm']:.3g}"
        if h.get("verdict_unadjusted") and h["verdict_unadjusted"] != h["verdict"]:
            what += f" (unadjusted: {h['verdict_unadjusted']})"
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
    best = max(study["cells"], key=lambda c: c[goal["metric"]]["value"], default=None)
    out = [
        f"Cost = {study['cost_metric']} minus the `{study['baseline']}` baseline's at the same grid point and "
        "seed; intervals are 95% Student-t over seeds.",
        "",
        *lines,
        "",
        f"Hypotheses (paired by grid point and seed; two-sided paired t-tests, Holm-corrected across all "
        f"{len(study['hypotheses'])} at family-wise alpha = {study.get('alpha', 0.05)}):",
        "",
        *[f"- {sentence(h)}" for h in study["hypotheses"]],
        "",
        *_per_point_table(study),
        *_comparison_table(study),
    ]
    goal_head = f"Goal ({goal['metric']} >= {goal['at_least']} at <= {goal['cost_nats']} nats)"
    if reached:
        out.append(
            f"{goal_head}: reached by {', '.join(c['variant'] + ' at ' + c['label'] for c in reached)}."
        )
    elif best:
        out.append(
            f"{goal_head}: not reached. Closest: {best['variant']} at {best['label']}, {goal['metric']} "
            f"{_ci(best[goal['metric']])} at a cost of {_ci(best['cost'], signed=True)} nats."
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
    goal = study["goal"]
    rows = (
        ("cost", f"cost: {study['cost_metric']} - baseline (nats)", goal["cost_nats"]),
        ("accuracy_cost", "held-out fact top-1 lost against the baseline", None),
    )
    fig, axes = plt.subplots(
        len(rows), len(points), figsize=(4.2 * len(points) + 1, 8.2), sharey=True, squeeze=False
    )
    styles = _styles(plt, study["variants"])
    for r, (key, xlabel, limit) in enumerate(rows):
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
            ax.axhline(goal["at_least"], color="green", ls=":", lw=1)
            if limit is not None:
                ax.axhspan(goal["at_least"], 1.0, color="green", alpha=0.06)
                ax.axvline(limit, color="green", ls=":", lw=1)
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
