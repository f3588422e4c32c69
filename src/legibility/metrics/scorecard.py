"""The scorecard (v2): metric name -> {value, ci_low, ci_high, n}, from a run's per-fact records.

Every fact that counts (known to the model, with enough usable prompts) is one unit. Its prompts were
split (:mod:`legibility.facts.split`) into *selection* prompts, which chose its knowledge neurons, and
*held-out* prompts, on which every effect below is measured; ``.in_sample`` entries measure the fact's own
drop on the selection prompts instead (biased upward: the prompts chose the neurons).

For a fact f with knowledge neurons K, p = mean p(correct) over a prompt set, and

    drop(p_before, p_after) = clip((p_before - p_after) / p_before, 0, 1)

* own excess   e_f = clip(drop(own, K) - drop(own, random), 0, 1), the random set having as many neurons
  per layer as K (suppressing K removes the fact beyond what removing as many random neurons does);
* collateral   c_f,t = mean over the control facts g of tier t of drop(g, K): each control's drop is
  clipped to [0, 1] *before* averaging, so a control whose p rises cannot hide one that is wiped out;
  tiers (disjoint): ``same_object`` (another fact with f's object: answer neurons), ``same_subject`` (f's
  subject, another object), ``same_relation`` (f's relation, another subject and object), and
  ``other_relation`` (another relation, subject and object);
* **specific_suppressability** s_f = e_f * prod over the tiers t that f has controls in of (1 - c_f,t),
  and s_f = 0 for a fact without knowledge neurons. The headline is the mean of s_f over every fact that
  counts: in [0, 1], 1 when suppressing a fact's neurons removes it and nothing else, about 0 for a kill
  switch at any scope (relation, answer, subject, model), for neurons that random neurons match, and for a
  model that localizes only some of its facts (the share that has neurons is ``neurons.facts_with_any``).
  A tier without controls (e.g. a relation with one known fact) contributes a factor 1; how many facts had
  each tier is ``collateral.<tier>``'s n.
* **suppressability** = mean of e_f over every fact that counts (0 without neurons): the essay's metric,
  how much suppressing the located neurons removes the fact beyond chance, with no charge for collateral.

Descriptive entries (relative change (p_after - p_before) / p_before, negative = p fell, on held-out
prompts): ``suppression.own`` / ``amplification.own`` (x0 / x2), ``.random``, ``.activation`` (the |K|
most active neurons), ``.<tier>`` (K's effect on that tier's controls), each a mean over facts with a
``.ratio_of_means`` variant (the official code's aggregate); ``specificity.<tier>`` = mean own drop / max(mean
tier drop, 0.001) (AMIG's SR); ``neurons.*`` statistics of the neuron sets. Per-relation entries are
suffixed ``@P36``. Intervals: 95% BCa bootstrap over facts (:func:`legibility.metrics.stats.bootstrap`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from legibility.metrics.stats import Estimate, mean_estimate, paired_estimate, ratio_of_means_estimate
from legibility.metrics.table import ScoreInputs, View, register_metric, scorecard_metrics

OPS = {"suppress": "suppression", "amplify": "amplification"}
# Control tiers of the effect records, in the order they are shown.
TIERS = ("same_relation", "same_object", "same_subject", "other_relation")
CONTROL_FLOOR = 1e-3  # smallest control drop a specificity ratio divides by
VERSION = 2  # of these definitions (part of every run key)


def rel_change(before: np.ndarray | float, after: np.ndarray | float) -> np.ndarray:
    return (np.asarray(after, float) - np.asarray(before, float)) / np.maximum(before, 1e-30)


def drop(before: float, after: float) -> float:
    """clip((before - after) / before, 0, 1): how much of p(correct) an intervention removed."""
    return float(np.clip(-rel_change(before, after), 0.0, 1.0))


@dataclass(frozen=True)
class FactScore:
    """One fact's terms of the specific-suppressability product."""

    own: float  # drop with the fact's own knowledge neurons suppressed
    random: float  # drop with as many random neurons suppressed
    collateral: dict[str, float]  # tier -> mean clipped drop of its controls (tiers with controls only)

    @property
    def own_excess(self) -> float:
        return float(np.clip(self.own - self.random, 0.0, 1.0))

    @property
    def specific(self) -> float:
        return self.own_excess * float(np.prod([1.0 - c for c in self.collateral.values()]))


def fact_score(effect: dict, in_sample: bool = False) -> FactScore:
    """The terms of s_f from one effect record (``in_sample``: own drops on the selection prompts)."""
    own = effect["in_sample"] if in_sample else {"before": effect["before"], **effect["own"]}
    sup = own["suppress"]
    collateral = {
        tier: float(np.mean([drop(c["before"], c["suppress"]) for c in controls]))
        for tier in TIERS
        if (controls := effect["controls"].get(tier))
    }
    return FactScore(drop(own["before"], sup["kn"]), drop(own["before"], sup["random"]), collateral)


def counted(records: Sequence[dict]) -> list[dict]:
    """Neuron records of the facts that count: those with enough usable prompts to refine neurons."""
    return [r for r in records if r.get("n_prompts", 0) >= r.get("min_prompts", 0)]


def per_fact(inp: ScoreInputs, term: str, in_sample: bool = False) -> np.ndarray | None:
    """``term`` ("specific" or "own_excess") of every fact that counts, 0 for a fact without neurons;
    None when the run measured no effects (neurons only)."""
    if not inp.measured or not counted(inp.records):
        return None
    by_id = {e["fact_id"]: e for e in inp.effects}
    values = []
    for r in counted(inp.records):
        e = by_id.get(r["fact_id"]) if r["neurons"] else None
        if r["neurons"] and e is None:
            continue  # a fact with neurons but no effect record yet: not a finished unit
        if e is not None and in_sample and "in_sample" not in e:
            return None  # the run had no held-out split: in-sample is the main measurement
        values.append(0.0 if e is None else getattr(fact_score(e, in_sample), term))
    return np.array(values, dtype=float)


def _controls(effects: Sequence[dict], tier: str) -> list[dict]:
    return [e for e in effects if e["controls"].get(tier)]


def _tier_change(e: dict, tier: str, op: str) -> float:
    cs = e["controls"][tier]
    return float(np.mean(rel_change(np.array([c["before"] for c in cs]), np.array([c[op] for c in cs]))))


def _own(e: dict, op: str, control: str) -> tuple[float, float]:
    return e["before"], e["own"][op][control]


def specificity_ratio(effects: Sequence[dict], tier: str, seed: int = 0) -> Estimate:
    """mean own drop / max(mean control drop, CONTROL_FLOOR) over facts with controls of ``tier``."""
    rows = [
        (float(-rel_change(*_own(e, "suppress", "kn"))), -_tier_change(e, tier, "suppress"))
        for e in _controls(effects, tier)
    ]
    data = np.array(rows, dtype=float).reshape(-1, 2)
    return paired_estimate(
        lambda own, ctl, axis=-1: own.mean(axis=axis) / np.maximum(ctl.mean(axis=axis), CONTROL_FLOOR),
        data[:, 0],
        data[:, 1],
        seed=seed,
    )


# ------------------------------------------------------------------------------------------ metric functions
# Each takes a run's (or one relation's) records and returns an estimate, or None where it does not apply.


def _headline(inp: ScoreInputs, *, term: str, in_sample: bool = False) -> Estimate | None:
    values = per_fact(inp, term, in_sample)
    return None if values is None else mean_estimate(values, seed=inp.seed)


def _collateral(inp: ScoreInputs, *, tier: str) -> Estimate | None:
    if not inp.effects:
        return None
    return mean_estimate(
        [fact_score(e).collateral[tier] for e in _controls(inp.effects, tier)], seed=inp.seed
    )


def _own_change(inp: ScoreInputs, *, op: str, control: str) -> Estimate | None:
    if not inp.effects:
        return None
    return mean_estimate([float(rel_change(*_own(e, op, control))) for e in inp.effects], seed=inp.seed)


def _own_ratio_of_means(inp: ScoreInputs, *, op: str, control: str) -> Estimate | None:
    if not inp.effects:
        return None
    before = np.array([e["before"] for e in inp.effects])
    after = np.array([e["own"][op][control] for e in inp.effects])
    return ratio_of_means_estimate(before, after, seed=inp.seed)


def _tier_mean_change(inp: ScoreInputs, *, op: str, tier: str) -> Estimate | None:
    if not inp.effects:
        return None
    return mean_estimate([_tier_change(e, tier, op) for e in _controls(inp.effects, tier)], seed=inp.seed)


def _specificity(inp: ScoreInputs, *, tier: str) -> Estimate | None:
    return specificity_ratio(inp.effects, tier, inp.seed) if inp.effects else None


def _counts(inp: ScoreInputs) -> np.ndarray:
    return np.array([len(r["neurons"]) for r in counted(inp.records)], dtype=float)


def _neuron_count(inp: ScoreInputs, *, which: str) -> Estimate | None:
    counts = _counts(inp)
    if not counts.size:
        return None
    if which == "with_any":
        return mean_estimate(counts[counts > 0], seed=inp.seed)
    if which == "share_with_any":
        return mean_estimate((counts > 0).astype(float), seed=inp.seed)
    return mean_estimate(counts, seed=inp.seed)


def neuron_overlaps(records: Sequence[dict], max_pairs: int = 20000, seed: int = 0) -> tuple[list, list]:
    """Numbers of knowledge neurons shared by pairs of facts of the same / of different relations."""
    sets = [(r["relation"], {tuple(n) for n in r["neurons"]}) for r in counted(records) if r["neurons"]]
    pairs = list(itertools.combinations(range(len(sets)), 2))
    if len(pairs) > max_pairs:
        pairs = random.Random(seed).sample(pairs, max_pairs)
    same = [len(sets[i][1] & sets[j][1]) for i, j in pairs if sets[i][0] == sets[j][0]]
    other = [len(sets[i][1] & sets[j][1]) for i, j in pairs if sets[i][0] != sets[j][0]]
    return same, other


def _overlap(inp: ScoreInputs, *, same: bool) -> Estimate | None:
    if not counted(inp.records):
        return None
    return mean_estimate(neuron_overlaps(inp.records)[0 if same else 1], seed=inp.seed)


# ------------------------------------------------------------------------------------------ registration

_SHOWN: tuple[View, ...] = ("card", "trial", "summary", "agreement", "column", "checkpoint", "frontier")
_WIDE = ("same_relation", "other_relation")  # the tiers every run has; shown widely and per relation

register_metric(
    "specific_suppressability",
    label="specific suppr.",
    direction="higher",
    definition="""Mean over every fact that counts of s_f = clip(own drop - random drop, 0, 1) x prod over
    control tiers (same relation, same object, same subject, other relation) of (1 - mean clipped drop of the
    tier's control facts), all on held-out prompts; s_f = 0 for a fact without knowledge neurons.""",
    views=_SHOWN,
    per_relation=True,
    compute=partial(_headline, term="specific"),
)
register_metric(
    "suppressability",
    label="suppressability",
    direction="higher",
    definition="""Mean over every fact that counts of clip(own drop - random drop, 0, 1) on held-out prompts
    (0 for a fact without knowledge neurons): how much suppressing a fact's neurons removes it beyond chance.""",
    views=_SHOWN,
    per_relation=True,
    compute=partial(_headline, term="own_excess"),
)
register_metric(
    "specific_suppressability.in_sample",
    label="specific suppr. (in-sample)",
    direction="none",
    definition="""specific_suppressability with the own drops measured on the selection prompts, the ones
    that chose the neurons (biased upward; shown to size the bias).""",
    views=("card", "trial"),
    compute=partial(_headline, term="specific", in_sample=True),
)
register_metric(
    "suppressability.in_sample",
    label="suppressability (in-sample)",
    direction="none",
    definition="suppressability with the own drops measured on the selection prompts.",
    views=("card", "trial"),
    compute=partial(_headline, term="own_excess", in_sample=True),
)
for _tier in TIERS:
    _words = _tier.replace("_", " ")
    register_metric(
        f"collateral.{_tier}",
        label=f"collateral {_words}",
        direction="lower",
        definition=f"""Mean over the facts with {_words} controls of the mean clipped drop of those controls
        when the fact's knowledge neurons are suppressed (held-out prompts); n counts the facts that had such
        controls.""",
        views=("card", "trial", "agreement", "column") if _tier in _WIDE else ("card", "trial"),
        per_relation=_tier in _WIDE,
        compute=partial(_collateral, tier=_tier),
    )
for _op, _name in OPS.items():
    _factor = "x0" if _op == "suppress" else "x2"
    for _control, _suffix in {"kn": "own", "random": "random", "activation": "activation"}.items():
        _views: tuple[View, ...] = ("card",)
        if _op == "suppress":
            _views = (
                ("card", "trial", "summary", "agreement", "column") if _control == "kn" else ("card", "trial")
            )
        elif _control == "kn":
            _views = ("card", "agreement")
        _whose = "the fact's own" if _control == "kn" else f"the {_suffix}"
        register_metric(
            f"{_name}.{_suffix}",
            label=f"{_op} {_suffix}",
            direction="none",
            definition=f"""Mean over facts with knowledge neurons of the relative change of p(correct) on held-out
            prompts when {_whose} neurons are {_op}ed ({_factor}).""",
            views=_views,
            compute=partial(_own_change, op=_op, control=_control),
        )
        register_metric(
            f"{_name}.{_suffix}.ratio_of_means",
            label=f"{_op} {_suffix} (ratio of means)",
            direction="none",
            definition=f"""(mean p after - mean p before) / mean p before over facts with knowledge neurons, when
            {_whose} neurons are {_op}ed ({_factor}); the official code's aggregate.""",
            per_relation=True,
            compute=partial(_own_ratio_of_means, op=_op, control=_control),
        )
    for _tier in TIERS:
        _words = _tier.replace("_", " ")
        register_metric(
            f"{_name}.{_tier}",
            label=f"{_op} on {_words}",
            direction="none",
            definition=f"""Mean over facts with {_words} controls of the mean relative change of those controls'
            p(correct) when the fact's knowledge neurons are {_op}ed ({_factor}).""",
            views=("card", "trial", "agreement") if _op == "suppress" and _tier in _WIDE else ("card",),
            per_relation=_tier in _WIDE,
            compute=partial(_tier_mean_change, op=_op, tier=_tier),
        )
for _tier in TIERS:
    register_metric(
        f"specificity.{_tier}",
        label=f"specificity ratio {_tier.replace('_', ' ')}",
        direction="higher",
        definition=f"""Mean own drop / max(mean {_tier.replace("_", " ")} control drop, 0.001) over facts with
        such controls (> 1: the neurons hurt their own fact more than the controls).""",
        views=("card",),
        compute=partial(_specificity, tier=_tier),
    )
register_metric(
    "neurons.per_fact",
    label="neurons per fact",
    direction="none",
    definition="Mean number of refined knowledge neurons over every fact that counts.",
    views=("card", "trial", "summary", "agreement", "column"),
    compute=partial(_neuron_count, which="all"),
)
register_metric(
    "neurons.facts_with_any",
    label="facts with neurons",
    direction="higher",
    definition="""Share of the facts that count with at least one knowledge neuron (the coverage shown beside
    the headline; the others score 0 in it).""",
    views=("card", "trial"),
    compute=partial(_neuron_count, which="share_with_any"),
)
register_metric(
    "neurons.per_fact_with_any",
    label="neurons per localized fact",
    direction="none",
    definition="Mean number of refined knowledge neurons over the facts that have any.",
    compute=partial(_neuron_count, which="with_any"),
)
for _scope in _WIDE:
    register_metric(
        f"neurons.overlap.{_scope}",
        label=f"shared neurons {_scope.replace('_', ' ')}",
        direction="none",
        definition=f"""Mean number of knowledge neurons shared by two facts of {
            "the same relation" if _scope == "same_relation" else "different relations"
        } (at most 20000 pairs, a seeded sample).""",
        views=("card",),
        compute=partial(_overlap, same=_scope == "same_relation"),
    )


# ------------------------------------------------------------------------------------------ the card


def layer_histogram(records: Sequence[dict], n_layers: int) -> np.ndarray:
    """Share of all knowledge neurons in each layer [n_layers]."""
    hist = np.zeros(n_layers)
    for r in records:
        for layer, _ in r["neurons"]:
            hist[layer] += 1
    total = hist.sum()
    return hist / total if total else hist


def score_metrics(
    neuron_records: Sequence[dict], effects: Sequence[dict] | None, seed: int = 0
) -> dict[str, Estimate]:
    """Every registered scorecard metric of a run's records (and per relation where the entry says so);
    ``effects`` None: the run measured none (a relation or run whose facts have no neurons has ``[]``)."""
    measured, effects = effects is not None, list(effects or [])
    whole = ScoreInputs(neuron_records, effects, seed, measured)
    relations = sorted({r["relation"] for r in neuron_records} | {e["relation"] for e in effects})
    subsets = {
        rel: ScoreInputs(
            [r for r in neuron_records if r["relation"] == rel],
            [e for e in effects if e["relation"] == rel],
            seed,
            measured,
        )
        for rel in relations
    }
    out: dict[str, Estimate] = {}
    for name, info in scorecard_metrics():
        assert info.compute is not None
        if (est := info.compute(whole)) is not None:
            out[name] = est
    for name, info in scorecard_metrics():
        if not info.per_relation:
            continue
        assert info.compute is not None
        for rel, inp in subsets.items():
            if (est := info.compute(inp)) is not None:
                out[f"{name}@{rel}"] = est
    return out


def scorecard(
    neuron_records: Sequence[dict], effects: Sequence[dict] | None, seed: int = 0
) -> dict[str, dict]:
    """metric name -> {value, ci_low, ci_high, n}."""
    return {k: v.to_dict() for k, v in score_metrics(neuron_records, effects, seed).items()}


def specific_scores_v1(effects: Sequence[dict]) -> np.ndarray:
    """The first definition (kept to show, in tests, how it could be gamed): over facts with same-relation
    controls only (of any object, as v1 sampled them), clip(own drop, 0, 1) x (1 - clip(mean same-relation
    relative drop, 0, 1)); no random baseline, no other tiers, averaging before clipping, facts without
    neurons left out, measured on whatever prompts the record holds."""
    out = []
    for e in effects:
        same = [
            c
            for tier in ("same_relation", "same_object")
            for c in e["controls"].get(tier, [])
            if c.get("relation", e["relation"]) == e["relation"]
        ]
        if not same:
            continue
        own = float(-rel_change(e["before"], e["own"]["suppress"]["kn"]))
        c = float(np.mean([-rel_change(x["before"], x["suppress"]) for x in same]))
        out.append(float(np.clip(own, 0, 1) * (1 - np.clip(c, 0, 1))))
    return np.array(out)
