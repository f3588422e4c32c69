"""Figures of a scoring run: where knowledge neurons live, and what suppressing/amplifying them does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from legibility.metrics.scorecard import layer_histogram
from legibility.report.plotting import available, pyplot


def layers_figure(
    neuron_records: Sequence[dict], n_layers: int, path: str | Path, title: str = ""
) -> Path | None:
    """Bar chart: share of knowledge neurons in each layer (paper Fig. 2); None without matplotlib."""
    if not available(Path(path).name):
        return None
    plt = pyplot()
    hist = layer_histogram(neuron_records, n_layers) * 100
    fig, ax = plt.subplots(figsize=(max(6, n_layers * 0.25), 3.2))
    ax.bar(np.arange(1, n_layers + 1), hist, color="#3b6ea8")
    ax.set_xlabel("layer")
    ax.set_ylabel("% of knowledge neurons")
    n = sum(len(r["neurons"]) for r in neuron_records)
    ax.set_title(title or f"Layer distribution of {n} knowledge neurons")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


BARS = (
    ("own", "own fact, knowledge neurons", "#3b6ea8"),
    ("random", "own fact, random neurons", "#9a9a9a"),
    ("activation", "own fact, activation-selected neurons", "#d08c2f"),
    ("same_relation", "same-relation facts, knowledge neurons", "#8c6bb1"),
    ("other_relation", "other-relation facts, knowledge neurons", "#6aa56a"),
)


def suppression_figure(metrics: dict[str, dict], path: str | Path, title: str = "") -> Path | None:
    """Per-relation relative change of p(correct) when suppressing / amplifying (paper Fig. 3/4), with controls.

    Bars are ratios of means per relation (the paper's aggregate); the rightmost group pools all facts.
    None without matplotlib.
    """
    if not available(Path(path).name):
        return None
    plt = pyplot()
    relations = sorted({k.split("@")[1] for k in metrics if "@" in k})
    groups = [*relations, "all"]
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.1 * len(groups) + 2), 6.5), sharex=True)
    width = 0.8 / len(BARS)
    for ax, name in zip(axes, ("suppression", "amplification"), strict=True):
        for j, (control, label, color) in enumerate(BARS):
            vals, lows, highs = [], [], []
            for g in groups:
                if control.endswith("_relation"):
                    key = f"{name}.{control}" + (f"@{g}" if g != "all" else "")
                else:
                    key = f"{name}.{control}.ratio_of_means" + (f"@{g}" if g != "all" else "")
                m = metrics.get(key)
                v = m["value"] * 100 if m else np.nan
                vals.append(v)
                lows.append(v - m["ci_low"] * 100 if m else 0)
                highs.append(m["ci_high"] * 100 - v if m else 0)
            x = np.arange(len(groups)) + (j - (len(BARS) - 1) / 2) * width
            ax.bar(
                x,
                vals,
                width,
                label=label,
                color=color,
                yerr=[np.nan_to_num(lows), np.nan_to_num(highs)],
                capsize=2,
            )
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel(f"{name}: change of p(correct) %")
    axes[0].legend(fontsize=7, ncol=2, loc="best")
    axes[1].set_xticks(np.arange(len(groups)), groups, rotation=45, ha="right")
    axes[0].set_title(
        title
        or "Suppressing / amplifying knowledge neurons (own fact: ratio of means; other facts: mean change; 95% CI)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
