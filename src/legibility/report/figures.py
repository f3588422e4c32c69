"""Figures of a scoring run: where knowledge neurons live, and what suppressing/amplifying them does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from legibility.metrics.scorecard import layer_histogram
from legibility.report.plotting import available, pyplot


def short_model_name(name: str, width: int = 40) -> str:
    """A model name short enough for a title: a long local path keeps its last two parts."""
    if len(name) <= width:
        return name
    parts = Path(name).parts
    tail = str(Path(*parts[-2:])) if len(parts) >= 2 else name
    return tail if len(tail) <= width else "..." + tail[-(width - 3) :]


def _title(ax, text: str, fig_width: float) -> None:
    """A title wrapped to the figure's width, so long names never clip."""
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(text, max(30, int(fig_width * 11)))), fontsize=10)


def draw_run_figures(
    out_dir: str | Path,
    neuron_records: Sequence[dict],
    metrics: dict[str, dict],
    n_layers: int,
    model: str,
) -> list[Path]:
    """The figures of a run directory: layers.png, and suppression.png when the run measured effects."""
    out = Path(out_dir)
    name = short_model_name(model)
    drawn = [
        layers_figure(neuron_records, n_layers, out / "layers.png", f"{name}: layers of knowledge neurons")
    ]
    if any(k.startswith("suppression.") for k in metrics):
        drawn.append(
            suppression_figure(metrics, out / "suppression.png", f"{name}: knowledge neuron interventions")
        )
    return [p for p in drawn if p is not None]  # None: matplotlib is not installed


def layers_figure(
    neuron_records: Sequence[dict], n_layers: int, path: str | Path, title: str = ""
) -> Path | None:
    """Bar chart: share of knowledge neurons in each layer (paper Fig. 2); layers count from 0 as in the
    data (neurons.jsonl). None without matplotlib."""
    if not available(Path(path).name):
        return None
    plt = pyplot()
    hist = layer_histogram(neuron_records, n_layers) * 100
    width = max(6, n_layers * 0.25)
    fig, ax = plt.subplots(figsize=(width, 3.4))
    ax.bar(np.arange(n_layers), hist, color="#3b6ea8")
    ax.set_xticks(np.arange(0, n_layers, max(1, n_layers // 15)))
    ax.set_xlabel("layer (from 0)")
    ax.set_ylabel("% of knowledge neurons")
    n = sum(len(r["neurons"]) for r in neuron_records)
    _title(ax, title or f"Layer distribution of {n} knowledge neurons", width)
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
    fig_w = max(7, 1.1 * len(groups) + 2)
    fig, axes = plt.subplots(2, 1, figsize=(fig_w, 7.2), sharex=True)
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
    axes[1].set_xticks(np.arange(len(groups)), groups, rotation=45, ha="right")
    _title(
        axes[0],
        title
        or "Suppressing / amplifying knowledge neurons (own fact: ratio of means; other facts: mean change; 95% CI)",
        fig_w,
    )
    # The legend sits below the plots, where it cannot cover a bar.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=2, loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
