"""The scorecard: metric name -> {value, ci_low, ci_high, n}, from per-fact records.

Definitions (relative change = (p_after - p_before) / p_before; negative = p(correct) fell):

* ``suppression.own`` / ``amplification.own``: mean over facts of the relative change of p(correct) when the
  fact's own knowledge neurons are suppressed (x0) / amplified (x2). ``.ratio_of_means`` is the official
  code's aggregate, (mean p_after - mean p_before) / mean p_before over facts.
* ``*.random``: the same with random neurons (same count per layer); ``*.activation``: with the
  activation-selected neurons (paper baseline).
* ``*.same_relation`` / ``*.same_subject`` / ``*.other_relation``: a fact's neurons intervened on, measured
  on the control tiers (should be near 0): other facts of the same relation (other subject); facts of the
  same subject in other relations (n = 0, value NaN, "not available", when no kept subject has facts in
  two relations); facts of other relations and other subjects.
* ``specificity.same_relation`` / ``.same_subject`` / ``.other_relation``: the specificity ratio (as AMIG's
  SR, QRNCA's PCR) mean own drop / mean control drop over the facts that have that tier, the control drop
  floored at 0.001 (so the ratio is at most 1000 times the own drop). > 1: the neurons hurt their own
  fact more than the controls.
* ``suppressability`` = mean over facts of (relative drop with own neurons - relative drop with random
  neurons), drop = -relative change. 0 means the located neurons are no better than chance; 1 means
  suppressing them removes the fact entirely while random neurons do nothing.
* ``specific_suppressability`` = mean over facts of s_f = clip(d_f, 0, 1) * (1 - clip(c_f, 0, 1)), d_f the
  fact's own relative drop, c_f the mean relative drop of its same-relation control facts under the same
  suppression; over facts with at least one same-relation control. In [0, 1]: 1 when suppression removes
  the fact and leaves the other facts of its relation intact, 0 when it removes nothing or removes the
  whole relation (a kill switch). A fact with own drop >= 0.9 and collateral <= 0.1 scores >= 0.81.
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

from legibility.metrics.stats import Estimate, bootstrap, mean_estimate, ratio_of_means_estimate

OPS = {"suppress": "suppression", "amplify": "amplification"}
# The scorecard entries shown first by the CLI and the reports.
HEADLINE = (
    "suppressability",
    "specific_suppressability",
    "suppression.own",
    "suppression.random",
    "suppression.activation",
    "suppression.same_relation",
    "suppression.same_subject",
    "suppression.other_relation",
    "specificity.same_relation",
    "specificity.same_subject",
    "specificity.other_relation",
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


# control tier in the effect records -> its name in the scorecard
TIERS = {"same": "same_relation", "same_subject": "same_subject", "other": "other_relation"}
CONTROL_FLOOR = 1e-3  # smallest control drop a specificity ratio divides by


def _fact_change(e: dict, group: str, op: str) -> float:
    cs = e.get(group) or []
    return float(np.mean(_rel(np.array([c["before"] for c in cs]), np.array([c[op] for c in cs]))))


def _group_changes(effects: Sequence[dict], group: str, op: str) -> np.ndarray:
    """Per fact that has controls of tier ``group``: mean relative change on them (records from before a
    tier existed simply lack it)."""
    return np.array([_fact_change(e, group, op) for e in effects if e.get(group)])


def specific_scores(effects: Sequence[dict]) -> np.ndarray:
    """s_f = clip(own drop, 0, 1) * (1 - clip(same-relation drop, 0, 1)) per fact with such controls."""
    out = []
    for e in effects:
        if not e.get("same"):
            continue
        own = -(e["own"]["suppress"]["kn"] - e["before"]) / max(e["before"], 1e-30)
        same = -_fact_change(e, "same", "suppress")
        out.append(float(np.clip(own, 0, 1) * (1 - np.clip(same, 0, 1))))
    return np.array(out)


def specificity_ratio(effects: Sequence[dict], group: str) -> Estimate:
    """mean own drop / max(mean control drop, CONTROL_FLOOR) over facts with controls of ``group``."""
    rows = [
        (
            -(e["own"]["suppress"]["kn"] - e["before"]) / max(e["before"], 1e-30),
            -_fact_change(e, group, "suppress"),
        )
        for e in effects
        if e.get(group)
    ]
    data = np.array(rows, dtype=float).reshape(-1, 2)
    return bootstrap(lambda x: float(x[:, 0].mean() / max(x[:, 1].mean(), CONTROL_FLOOR)), data)


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
        for group, tier in TIERS.items():
            out[f"{name}.{tier}"] = mean_estimate(_group_changes(effects, group, op))
    drop_own = -_rel(before, np.array([e["own"]["suppress"]["kn"] for e in effects]))
    drop_random = -_rel(before, np.array([e["own"]["suppress"]["random"] for e in effects]))
    out["suppressability"] = mean_estimate(drop_own - drop_random)
    out["specific_suppressability"] = mean_estimate(specific_scores(effects))
    for group, tier in TIERS.items():
        out[f"specificity.{tier}"] = specificity_ratio(effects, group)
    for rel in sorted({e["relation"] for e in effects}):
        sub = [e for e in effects if e["relation"] == rel]
        b = np.array([e["before"] for e in sub])
        for op, name in OPS.items():
            for control in ("kn", "random", "activation"):
                a = np.array([e["own"][op][control] for e in sub])
                key = f"{name}.own" if control == "kn" else f"{name}.{control}"
                out[f"{key}.ratio_of_means@{rel}"] = ratio_of_means_estimate(b, a)
            for group in ("same", "other"):
                out[f"{name}.{TIERS[group]}@{rel}"] = mean_estimate(_group_changes(sub, group, op))
        out[f"specific_suppressability@{rel}"] = mean_estimate(specific_scores(sub))
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
