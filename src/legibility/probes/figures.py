"""Figures of probe runs (written by the runs, embedded by legibility.report.probes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from legibility.report.plotting import pyplot


def _band(ax, rows: list[dict], key: str, label: str, color: str, style: str = "-") -> None:
    xs = np.arange(len(rows))
    v = np.array([r[key]["value"] for r in rows])
    lo = np.array([r[key]["ci_low"] for r in rows])
    hi = np.array([r[key]["ci_high"] for r in rows])
    ax.plot(xs, v, style, color=color, label=label)
    ax.fill_between(xs, lo, hi, color=color, alpha=0.2)


def accuracy_figure(layers: dict[str, list[dict]], chance: float, path: Path, title: str) -> Path:
    """Held-out accuracy (and control accuracy) by layer for every site, 95% CI bands."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = {"resid": "#3b6ea8", "ffn": "#d08c2f"}
    for site, rows in layers.items():
        c = colors.get(site, "#555")
        _band(ax, rows, "accuracy", f"{site} probe", c)
        _band(ax, rows, "control", f"{site} control task", c, ":")
    ax.axhline(chance, color="#999", lw=0.8, ls="--", label="majority class")
    ax.set_xlabel("layer (resid: hidden_states index; ffn: block)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def truth_figure(layers: list[dict], model_pair: dict, path: Path, title: str) -> Path:
    """Pair accuracy on held-out relations by layer for each truth probe; the model's own judgement as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = {"logistic": "#3b6ea8", "mass_mean": "#d08c2f", "mass_mean_iid": "#8c6bb1", "ccs": "#6aa56a"}
    for method, c in colors.items():
        if method in layers[0]:
            _band(ax, [r[method] for r in layers], "pair", method, c)
    ax.axhline(model_pair["value"], color="#c33", lw=1, label="model's own judgement")
    ax.axhline(0.5, color="#999", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("pair accuracy, held-out relations")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def lying_figure(layers: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Truth-probe pair accuracy by layer in plain, truthful-context and lying-context prompts."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = {"plain": "#555", "truthful": "#3b6ea8", "lying": "#c33"}
    for cond, rows in layers.items():
        _band(ax, rows, "pair", cond, colors.get(cond, "#999"))
    ax.axhline(0.5, color="#999", lw=0.8, ls="--")
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("mass-mean probe pair accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def checkpoints_figure(runs: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Per run, against step: best-layer probe accuracy (relation, object), fact accuracy, suppressability and
    its fact-specific form."""
    plt = pyplot()
    keys = [
        ("probe.relation", "relation probe (best layer)"),
        ("probe.object", "object probe (best layer)"),
        ("fact_accuracy", "fact accuracy"),
        ("suppressability", "suppressability"),
        ("specific_suppressability", "specific suppressability"),
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), sharex=True)
    for ax, (key, label) in zip(axes, keys, strict=True):
        for (name, rows), c in zip(runs.items(), ["#3b6ea8", "#c33", "#6aa56a", "#8c6bb1"], strict=False):
            steps = [r["step"] for r in rows]
            vals = [r.get(key, float("nan")) for r in rows]
            ax.plot(steps, vals, "o-", ms=3, color=c, label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
