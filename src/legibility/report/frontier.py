"""Figures of a sweep: the interpretability-vs-performance frontier and the agreement between metrics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from legibility.metrics.table import names
from legibility.report.plotting import pyplot

# (column, label, True when higher is better)
PERFORMANCE = (("fact_accuracy", "held-out fact accuracy", True), ("val_loss", "validation loss", False))


def trial_metrics(row: dict) -> dict[str, float]:
    """Flat numeric metrics of a finished trial: training results and scorecard values."""
    out: dict[str, float] = {}
    for k, v in (row.get("train") or {}).items():
        if isinstance(v, int | float) and np.isfinite(v):
            out[k] = float(v)
    for k, m in (row.get("metrics") or {}).items():
        if (
            isinstance(m, dict)
            and isinstance(m.get("value"), int | float)
            and np.isfinite(m["value"])
            and "@" not in k
        ):
            out[k] = float(m["value"])
    return out


def loss_key(rows: Sequence[dict]) -> str:
    """``text_val_loss`` (held-out general text) when every trial has it, else the mixed ``val_loss``."""
    metrics = [trial_metrics(r) for r in rows]
    return "text_val_loss" if metrics and all("text_val_loss" in m for m in metrics) else "val_loss"


def by_variant(rows: Sequence[dict], key: str) -> dict[str, np.ndarray]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        v = trial_metrics(r).get(key)
        if v is not None:
            groups[r["variant"]].append(v)
    return {k: np.array(v) for k, v in groups.items()}


def pareto_front(points: dict[str, tuple[float, float]], x_higher: bool, y_higher: bool) -> list[str]:
    """Names of the points no other point beats on both axes (ties do not dominate)."""
    sx, sy = (1 if x_higher else -1), (1 if y_higher else -1)
    front = []
    for name, (x, y) in points.items():
        dominated = any(
            sx * ox >= sx * x and sy * oy >= sy * y and (sx * ox > sx * x or sy * oy > sy * y)
            for other, (ox, oy) in points.items()
            if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: sx * points[n][0])


def frontier_figure(rows: Sequence[dict], path: str | Path, x_key: str = "suppressability") -> Path:
    """Performance against suppressability: seeds as faint dots, variants as mean +- std, Pareto front marked."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PERFORMANCE), figsize=(6 * len(PERFORMANCE), 4.6))
    xs = by_variant(rows, x_key)
    palette = list(plt.matplotlib.colors.TABLEAU_COLORS.values())
    colors = {v: palette[i % len(palette)] for i, v in enumerate(sorted(xs))}

    panels = list(PERFORMANCE)
    if loss_key(rows) == "text_val_loss":  # the general-text loss, when held out
        panels[1] = ("text_val_loss", "validation loss on held-out text", False)
    for ax, (y_key, y_label, y_higher) in zip(axes, panels, strict=True):
        ys = by_variant(rows, y_key)
        means = {}
        for r in rows:
            m = trial_metrics(r)
            if x_key in m and y_key in m:
                ax.scatter(m[x_key], m[y_key], color=colors[r["variant"]], alpha=0.3, s=14)
        for v in sorted(set(xs) & set(ys)):
            x, y = xs[v], ys[v]
            means[v] = (float(x.mean()), float(y.mean()))
            ax.errorbar(
                x.mean(),
                y.mean(),
                xerr=x.std(),
                yerr=y.std(),
                fmt="o",
                color=colors[v],
                capsize=3,
                label=f"{v} (n={min(len(x), len(y))})",
            )
        front = pareto_front(means, True, y_higher)
        if len(front) > 1:
            ax.plot(
                [means[f][0] for f in front],
                [means[f][1] for f in front],
                "--",
                color="black",
                lw=1,
                label="Pareto front",
            )
        for f in front:
            ax.scatter(*means[f], s=160, facecolors="none", edgecolors="black")
        ax.set_xlabel(f"{x_key} (higher: more interpretable)")
        ax.set_ylabel(f"{y_label} ({'higher' if y_higher else 'lower'} is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Interpretability vs performance (dots: seeds; markers: variant mean +- std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def spearman_matrix(rows: Sequence[dict], keys: Sequence[str]) -> np.ndarray:
    """Spearman rank correlation (``scipy.stats.spearmanr``, ties averaged) between metrics across trials
    (NaN where fewer than 3 trials have both, or one of them is constant)."""
    from scipy import stats

    data = [trial_metrics(r) for r in rows]
    k = len(keys)
    out = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(k):
            pairs = [(d[keys[i]], d[keys[j]]) for d in data if keys[i] in d and keys[j] in d]
            if len(pairs) < 3:
                continue
            a, b = (np.array(c, dtype=float) for c in zip(*pairs, strict=True))
            if a.std() == 0 or b.std() == 0:
                continue
            out[i, j] = float(stats.spearmanr(a, b).statistic)
    return out


def agreement_keys(rows: Sequence[dict]) -> list[str]:
    """Metrics present in enough trials to correlate: the core columns, then every independent metric."""
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        for k in trial_metrics(r):
            counts[k] += 1
    head = [k for k in names("agreement") if counts.get(k, 0) >= 3]
    independent = sorted(k for k in counts if k.startswith("independent.") and counts[k] >= 3)
    return head + independent


def agreement_figure(rows: Sequence[dict], path: str | Path) -> Path:
    keys = agreement_keys(rows)
    mat = spearman_matrix(rows, keys)
    size = max(4.0, 0.45 * len(keys) + 2)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(keys)), keys, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(keys)), keys, fontsize=7)
    for i in range(len(keys)):
        for j in range(len(keys)):
            if np.isfinite(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.1f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="Spearman correlation across trials")
    ax.set_title("Do the metrics agree with suppressability?")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# (train key, axis label) of the costs a finetune records (legibility.training.finetune)
COSTS = (
    ("cost_nats", "held-out text NLL change (nats/token)"),
    ("kl", "KL(original || tuned) on held-out text (nats/token)"),
    ("facts_lost", "share of held-out known facts lost"),
)


def has_costs(rows: Sequence[dict]) -> bool:
    """Whether the trials are finetunes that recorded their cost."""
    return any("cost_nats" in (r.get("train") or {}) for r in rows)


def cost_figure(rows: Sequence[dict], path: str | Path, y_key: str = "specific_suppressability") -> Path:
    """Finetune frontier: ``y_key`` (held-out facts) against each cost, one point per trial with its 95% CI
    over facts as a bar, labelled with the variant and the number of facts scored (n)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(COSTS), figsize=(5.2 * len(COSTS), 4.4))
    variants = sorted({r["variant"] for r in rows})
    palette = list(plt.matplotlib.colors.TABLEAU_COLORS.values())
    colors = {v: palette[i % len(palette)] for i, v in enumerate(variants)}
    for ax, (x_key, x_label) in zip(axes, COSTS, strict=True):
        for r in rows:
            m = trial_metrics(r)
            if x_key in m and y_key in m:
                est = (r.get("metrics") or {}).get(y_key) or {}
                lo, hi = est.get("ci_low"), est.get("ci_high")
                if (
                    isinstance(lo, int | float)
                    and isinstance(hi, int | float)
                    and np.isfinite([lo, hi]).all()
                ):
                    ax.errorbar(
                        m[x_key],
                        m[y_key],
                        yerr=[[m[y_key] - lo], [hi - m[y_key]]],
                        color=colors[r["variant"]],
                        alpha=0.5,
                        capsize=3,
                        lw=1,
                    )
                ax.scatter(m[x_key], m[y_key], color=colors[r["variant"]], s=36)
                n = est.get("n")
                label = r["variant"] + (f" (n={n})" if isinstance(n, int) else "")
                ax.annotate(
                    label, (m[x_key], m[y_key]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{y_key} (held-out facts)")
        ax.grid(alpha=0.3)
    fig.suptitle("Finetune frontier: interpretability on held-out facts against cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
