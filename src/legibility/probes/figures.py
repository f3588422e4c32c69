"""Figures of probe runs (written by the runs, embedded by legibility.report.probes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from legibility.report.plotting import pyplot


def _band(
    ax, rows: list[dict], key: str, label: str, color: str, style: str = "-", alpha: float = 0.2
) -> None:
    xs = np.arange(len(rows))
    v = np.array([r[key]["value"] for r in rows])
    lo = np.array([r[key]["ci_low"] for r in rows])
    hi = np.array([r[key]["ci_high"] for r in rows])
    ax.plot(xs, v, style, color=color, label=label)
    ax.fill_between(xs, lo, hi, color=color, alpha=alpha)


def accuracy_figure(
    layers: dict[str, list[dict]], headline: dict[str, dict], chance: float, path: Path, title: str
) -> Path:
    """Left: validation accuracy by layer (cross-validated on the development facts; the layer is chosen
    here). Right: test accuracy and control-task accuracy by layer, shown for reference; the marker is the
    test score at the layer chosen on validation, the dotted line the layer fixed in advance."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    colors = {"resid": "#3b6ea8", "ffn": "#d08c2f"}
    for site, rows in layers.items():
        c = colors.get(site, "#555")
        h = headline[site]
        _band(left, rows, "validation", f"{site} probe", c)
        left.plot([h["chosen_layer"]], [h["validation"]["value"]], "*", ms=11, color=c)
        _band(right, rows, "accuracy", f"{site} probe", c)
        _band(right, rows, "control", f"{site} control task", c, ":")
        right.plot(
            [h["chosen_layer"]], [h["accuracy"]["value"]], "*", ms=11, color=c, label=f"{site}: chosen layer"
        )
        right.axvline(h["fixed_layer"], color=c, lw=0.8, ls="-.")
    for ax in (left, right):
        ax.axhline(chance, color="#999", lw=0.8, ls="--", label="majority class")
        ax.set_xlabel("layer (resid: hidden_states index; ffn: block)")
        ax.set_ylim(0, 1.02)
    left.set_ylabel("accuracy")
    left.set_title("validation (development facts, CV): chooses the layer", fontsize=9)
    right.set_title("test facts (curve for reference only; * = chosen layer, -. = fixed layer)", fontsize=9)
    left.legend(fontsize=7)
    right.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


COLORS = {"logistic": "#3b6ea8", "mass_mean": "#d08c2f", "mass_mean_iid": "#8c6bb1", "ccs": "#6aa56a"}
SPLIT_TITLES = {
    "validation": "validation facts (choose the layer)",
    "held_out_facts": "test: held-out facts (reference curve)",
    "held_out_relations": "test: held-out relations (reference curve)",
}


def truth_figure(
    layers: dict[str, list[dict]],
    headline: dict[str, dict],
    model: dict[str, dict],
    controls: dict[str, dict],
    path: Path,
    title: str,
) -> Path:
    """Pair accuracy by layer of each truth probe on the validation split (where each probe's layer is
    chosen, star) and on the two test splits (the star is the headline: test score at the chosen layer);
    the model's own judgement, the object-identity controls and the fixed layer as lines."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 3.8), sharey=True)
    for ax, (split, rows) in zip(axes, layers.items(), strict=True):
        for method, c in COLORS.items():
            if method not in rows[0]:
                continue
            _band(ax, [r[method] for r in rows], "pair", method, c, alpha=0.1)
            at = headline[method]["chosen_layer"]
            ax.plot([at], [rows[at][method]["pair"]["value"]], "*", ms=11, color=c)
        ax.axhline(model[split]["value"], color="#c33", lw=1, label="model's own judgement")
        for (name, ctrl), ls in zip(controls.items(), (":", (0, (5, 2))), strict=False):
            ax.axhline(ctrl[split]["pair"]["value"], color="#333", lw=1, ls=ls, label=f"control: {name}")
        ax.axhline(0.5, color="#999", lw=0.8, ls="--")
        ax.axvline(headline[next(iter(headline))]["fixed_layer"], color="#999", lw=0.8, ls="-.")
        ax.set_xlabel("layer (hidden_states index)")
        ax.set_title(SPLIT_TITLES.get(split, split), fontsize=9)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("pair accuracy")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title + "  (* = layer chosen on validation; -. = fixed layer)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def lying_figure(layers: dict[str, list[dict]], chosen: int, path: Path, title: str) -> Path:
    """Truth-probe pair accuracy by layer in plain, truthful-context and lying-context prompts; the line marks
    the probe's layer chosen on validation (plain statements)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = {"plain": "#555", "truthful": "#3b6ea8", "lying": "#c33"}
    for cond, rows in layers.items():
        _band(ax, rows, "pair", cond, colors.get(cond, "#999"))
    ax.axhline(0.5, color="#999", lw=0.8, ls="--")
    ax.axvline(chosen, color="#333", lw=0.8, ls="-.", label=f"layer chosen on validation ({chosen})")
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
    """Per run, against step: probe accuracy on test facts at the layer chosen on validation (relation, object), fact accuracy, suppressability and
    its fact-specific form."""
    plt = pyplot()
    keys = [
        ("probe.relation", "relation probe (test, layer chosen on validation)"),
        ("probe.object", "object probe (test, layer chosen on validation)"),
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
