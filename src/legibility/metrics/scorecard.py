"""The scorecard: metric name -> {value, ci_low, ci_high, n}, from per-fact records.

Definitions (relative change = (p_after - p_before) / p_before; negative = p(correct) fell):

* ``suppression.own`` / ``amplification.own``: mean over facts of the relative change of p(correct) when the
  fact's own knowledge neurons are suppressed (x0) / amplified (x2). ``.ratio_of_means`` is the official
  code's aggregate, (mean p_after - mean p_before) / mean p_before over facts.
* ``*.random``: the same with random neurons (same count per layer); ``*.activation``: with the
  activation-selected neurons (paper baseline).
* ``*.same_relation`` / ``*.other_relation``: a fact's neurons intervened on, measured on other facts of
  the same / of other relations (specificity: should be near 0).
* ``suppressability`` = mean over facts of (relative drop with own neurons - relative drop with random
  neurons), drop = -relative change. 0 means the located neurons are no better than chance; 1 means
  suppressing them removes the fact entirely while random neurons do nothing.
* ``neurons.per_fact``, ``neurons.facts_with_any``, ``neurons.overlap.same_relation`` /
  ``neurons.overlap.other_relation``: mean number of knowledge neurons shared by two facts of the same /
  of different relations.
Per-relation entries are suffixed ``@P36`` etc.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import numpy as np

from legibility.metrics.stats import Estimate, mean_estimate, ratio_of_means_estimate

OPS = {"suppress": "suppression", "amplify": "amplification"}
# The scorecard entries shown first by the CLI and the reports.
HEADLINE = (
    "suppressability",
    "suppression.own",
    "suppression.random",
    "suppression.activation",
    "suppression.same_relation",
    "suppression.other_relation",
    "amplification.own",
    "amplification.random",
    "amplification.other_relation",
    "neurons.per_fact",
    "neurons.facts_with_any",
    "neurons.overlap.same_relation",
    "neurons.overlap.other_relation",
)


def _rel(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (after - before) / np.maximum(before, 1e-30)


def _group_changes(effects: Sequence[dict], group: str, op: str) -> np.ndarray:
    """Per fact: mean relative change on its control facts of ``group`` ("same"/"other" relation)."""
    return np.array(
        [
            float(
                np.mean(_rel(np.array([c["before"] for c in e[group]]), np.array([c[op] for c in e[group]])))
            )
            for e in effects
            if e[group]
        ]
    )


def effect_metrics(effects: Sequence[dict]) -> dict[str, Estimate]:
    out: dict[str, Estimate] = {}
    if not effects:
        return out
    before = np.array([e["before"] for e in effects])
    for op, name in OPS.items():
        for control in ("kn", "random", "activation"):
            after = np.array([e["own"][op][control] for e in effects])
            key = f"{name}.own" if control == "kn" else f"{name}.{control}"
            out[key] = mean_estimate(_rel(before, after))
            out[f"{key}.ratio_of_means"] = ratio_of_means_estimate(before, after)
        for group in ("same", "other"):
            out[f"{name}.{group}_relation"] = mean_estimate(_group_changes(effects, group, op))
    drop_own = -_rel(before, np.array([e["own"]["suppress"]["kn"] for e in effects]))
    drop_random = -_rel(before, np.array([e["own"]["suppress"]["random"] for e in effects]))
    out["suppressability"] = mean_estimate(drop_own - drop_random)
    for rel in sorted({e["relation"] for e in effects}):
        sub = [e for e in effects if e["relation"] == rel]
        b = np.array([e["before"] for e in sub])
        for op, name in OPS.items():
            for control in ("kn", "random", "activation"):
                a = np.array([e["own"][op][control] for e in sub])
                key = f"{name}.own" if control == "kn" else f"{name}.{control}"
                out[f"{key}.ratio_of_means@{rel}"] = ratio_of_means_estimate(b, a)
            for group in ("same", "other"):
                out[f"{name}.{group}_relation@{rel}"] = mean_estimate(_group_changes(sub, group, op))
    return out


def neuron_metrics(records: Sequence[dict], max_pairs: int = 20000, seed: int = 0) -> dict[str, Estimate]:
    """Statistics of the refined neuron sets (records with 'relation' and 'neurons' [[layer, idx], ...])."""
    out: dict[str, Estimate] = {}
    usable = [r for r in records if r.get("n_prompts", 0) >= r.get("min_prompts", 0)]
    if not usable:
        return out
    counts = np.array([len(r["neurons"]) for r in usable], dtype=float)
    out["neurons.per_fact"] = mean_estimate(counts)
    out["neurons.facts_with_any"] = mean_estimate((counts > 0).astype(float))
    with_any = [r for r in usable if r["neurons"]]
    out["neurons.per_fact_with_any"] = mean_estimate(
        np.array([len(r["neurons"]) for r in with_any], dtype=float)
    )
    sets = [(r["relation"], {tuple(n) for n in r["neurons"]}) for r in with_any]
    pairs = list(itertools.combinations(range(len(sets)), 2))
    if len(pairs) > max_pairs:
        pairs = random.Random(seed).sample(pairs, max_pairs)
    same = [len(sets[i][1] & sets[j][1]) for i, j in pairs if sets[i][0] == sets[j][0]]
    other = [len(sets[i][1] & sets[j][1]) for i, j in pairs if sets[i][0] != sets[j][0]]
    out["neurons.overlap.same_relation"] = mean_estimate(np.array(same, dtype=float))
    out["neurons.overlap.other_relation"] = mean_estimate(np.array(other, dtype=float))
    return out


def layer_histogram(records: Sequence[dict], n_layers: int) -> np.ndarray:
    """Share of all knowledge neurons in each layer [n_layers]."""
    hist = np.zeros(n_layers)
    for r in records:
        for layer, _ in r["neurons"]:
            hist[layer] += 1
    total = hist.sum()
    return hist / total if total else hist


def scorecard(neuron_records: Sequence[dict], effects: Sequence[dict]) -> dict[str, dict]:
    """metric name -> {value, ci_low, ci_high, n}."""
    metrics = {**neuron_metrics(neuron_records), **effect_metrics(effects)}
    return {k: v.to_dict() for k, v in metrics.items()}
