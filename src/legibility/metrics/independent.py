"""Independent interpretability metrics, computed by name: a check on suppressability.

A model trained to raise suppressability can Goodhart it (e.g. by routing each fact through whatever the
attribution happens to rank first). These metrics measure legibility by other means -- how concentrated
and how relation-specific the knowledge neurons are, how sparse and heavy-tailed the FFN code is, whether
single neurons decode concepts as well as whole layers, how many neurons a fact really needs, and whether
ten coarse "electrodes" (essay.txt) can steer a fact -- so that gaming one shows up as a gap against the
others. Every metric returns :class:`~legibility.metrics.stats.Estimate` values with a 95% bootstrap
interval over its natural unit; definitions are in each metric's ``definition`` and in docs/metrics.md.

>>> ctx = MetricContext(lm=lm, facts=kept, neuron_records=records, seed=0)  # doctest: +SKIP
>>> compute_metrics(["sparsity", "polysemanticity"], ctx)                      # doctest: +SKIP
{'independent.sparsity.kurtosis': Estimate(...), ...}
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from legibility.errors import LegibilityError
from legibility.facts.render import render
from legibility.facts.types import Fact
from legibility.metrics.spec import INDEPENDENT, MetricContext, MetricSpec, register
from legibility.metrics.stats import Estimate, bootstrap, mean_estimate
from legibility.models.loading import LoadedModel

PREFIX = "independent"


def default_metrics() -> list[str]:
    """The independent metrics computed unless asked otherwise (their entries say ``default=True``)."""
    return [name for name, spec in INDEPENDENT.items() if spec.default]


def compute_metrics(names: Sequence[str], ctx: MetricContext) -> dict[str, Estimate]:
    """Run the named metrics (all when ``names`` is empty or ["all"]) -> {"independent.<name>.<key>": Estimate}.

    Unknown names and missing inputs are reported before anything runs.
    """
    chosen = INDEPENDENT.names() if not names or list(names) == ["all"] else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in INDEPENDENT]
    if unknown:
        raise LegibilityError(
            f"unknown independent metric(s) {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(INDEPENDENT.names())} (or 'all')"
        )
    for name in chosen:
        _check_needs(name, INDEPENDENT[name], ctx)
    out: dict[str, Estimate] = {}
    for name in chosen:
        for key, est in INDEPENDENT[name].fn(ctx).items():
            out[f"{PREFIX}.{name}.{key}"] = est
    return out


def available_metrics(ctx: MetricContext) -> list[str]:
    """Names of the metrics whose inputs ``ctx`` has (e.g. for ``--independent all`` without a model)."""
    out = []
    for name in INDEPENDENT:
        try:
            _check_needs(name, INDEPENDENT[name], ctx)
        except LegibilityError:
            continue
        out.append(name)
    return out


def metric_direction(key: str) -> str:
    """Direction ("higher", "lower" or "none") of a dotted key such as ``independent.sparsity.kurtosis``."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != PREFIX or parts[1] not in INDEPENDENT:
        raise LegibilityError(f"{key!r} is not an independent metric key (independent.<metric>.<key>)")
    spec = INDEPENDENT[parts[1]]
    return spec.keys.get(".".join(parts[2:]), "none")


def _check_needs(name: str, spec: MetricSpec, ctx: MetricContext) -> None:
    if "model" in spec.needs and (ctx.lm is None or not ctx.usable_facts()):
        raise LegibilityError(
            f"metric {name!r} runs the model on the facts: give MetricContext both lm= and facts= "
            "(rendered facts with usable prompts)"
        )
    if "neurons" in spec.needs and not ctx.neuron_records:
        raise LegibilityError(
            f"metric {name!r} reads knowledge neurons: pass neuron_records= (neurons.jsonl of a "
            "`legibility neurons`/`score` run)"
        )
    if "effects" in spec.needs and not ctx.effects:
        raise LegibilityError(f"metric {name!r} reads effects: pass effects= (effects.jsonl of a score run)")


def usable_records(records: Sequence[dict]) -> list[dict]:
    """Records of facts with enough prompts for refined neurons (as in the scorecard)."""
    return [r for r in records if r.get("n_prompts", 0) >= r.get("min_prompts", 0)]


# --------------------------------------------------------------------------- concentration


@register(
    "concentration",
    definition="""Over facts with enough prompts to refine neurons: neurons_per_fact_with_any = mean number
    of refined knowledge neurons of the facts that have any (lower = knowledge held by fewer neurons);
    facts_with_any = share of facts with at least one (higher = more facts localizable);
    neurons_per_fact = mean over all facts (descriptive). Bootstrap over facts.""",
    keys={"neurons_per_fact_with_any": "lower", "facts_with_any": "higher", "neurons_per_fact": "none"},
    needs=["neurons"],
    default=True,
)
def concentration(ctx: MetricContext) -> dict[str, Estimate]:
    counts = np.array([len(r["neurons"]) for r in usable_records(ctx.neuron_records)], dtype=float)
    kw = {"seed": ctx.seed}
    return {
        "neurons_per_fact_with_any": mean_estimate(counts[counts > 0], **kw),
        "facts_with_any": mean_estimate((counts > 0).astype(float), **kw),
        "neurons_per_fact": mean_estimate(counts, **kw),
    }


# --------------------------------------------------------------------------- overlap ratio


def overlap_matrices(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(shared neurons [facts, facts], same relation [facts, facts] as 0/1) over records with neurons."""
    sets = [{tuple(n) for n in r["neurons"]} for r in records]
    rel = [r["relation"] for r in records]
    n = len(sets)
    shared = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        shared[i, j] = shared[j, i] = len(sets[i] & sets[j])
    same = np.array([[a == b for b in rel] for a in rel], dtype=float)
    return shared, same


def _overlap_stats(shared: np.ndarray, same: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    """Mean shared neurons over same- and other-relation pairs of the (resampled) facts ``idx``."""
    sub_shared, sub_same = shared[np.ix_(idx, idx)], same[np.ix_(idx, idx)]
    pair = np.triu(idx[:, None] != idx[None, :], 1)  # distinct facts; a fact drawn twice is no pair
    s, o = pair & (sub_same > 0), pair & (sub_same == 0)
    mean_s = float(sub_shared[s].mean()) if s.any() else float("nan")
    mean_o = float(sub_shared[o].mean()) if o.any() else float("nan")
    return mean_s, mean_o


def _ratio(s: float, o: float) -> float:
    return s / o if o > 0 else float("nan")


def _contrast(s: float, o: float) -> float:
    return (s - o) / (s + o) if s + o > 0 else float("nan")


@register(
    "overlap",
    definition="""For every pair of distinct facts with knowledge neurons, the number of neurons they share.
    ratio = mean over same-relation pairs / mean over other-relation pairs (NaN when no other-relation pair
    shares a neuron); contrast = (same - other) / (same + other), in [-1, 1], defined whenever any pair shares
    a neuron. Higher = neurons organized by relation (the paper's finding), not shared indiscriminately.
    Bootstrap over facts (all pairs of the resampled facts).""",
    keys={"ratio": "higher", "contrast": "higher", "same_relation": "none", "other_relation": "none"},
    needs=["neurons"],
    default=True,
)
def overlap(ctx: MetricContext, max_facts: int = 400) -> dict[str, Estimate]:
    recs = [r for r in usable_records(ctx.neuron_records) if r["neurons"]]
    if len(recs) > max_facts:  # pairs grow quadratically; a seeded subsample keeps it cheap
        rng = np.random.default_rng(ctx.seed)
        recs = [recs[i] for i in sorted(rng.choice(len(recs), max_facts, replace=False))]
    shared, same = overlap_matrices(recs)
    units = np.arange(len(recs), dtype=float)[:, None]

    def stat(f):
        return lambda x: f(*_overlap_stats(shared, same, x[:, 0].astype(int)))

    kw = {"seed": ctx.seed, "n_boot": 300}
    return {
        "ratio": bootstrap(stat(_ratio), units, **kw),
        "contrast": bootstrap(stat(_contrast), units, **kw),
        "same_relation": bootstrap(stat(lambda s, o: s), units, **kw),
        "other_relation": bootstrap(stat(lambda s, o: o), units, **kw),
    }


# --------------------------------------------------------------------------- activation sparsity


@dataclass(frozen=True)
class SparsityConfig:
    """Activation sparsity settings."""

    eps: float = 0.01  # an activation counts as silent when |a| < eps * max |a| of its layer at that prompt


def sparsity_stats(acts: Tensor, eps: float = 0.01) -> tuple[Tensor, Tensor]:
    """Per row of ``acts`` [n, layers, neurons]: (silent fraction [n], excess kurtosis [n]), each the mean
    over layers of the statistic of that layer's activation vector (across its neurons)."""
    mag = acts.abs()
    silent = (mag < eps * mag.amax(-1, keepdim=True)).float().mean(-1)  # [n, layers]
    centered = acts - acts.mean(-1, keepdim=True)
    m2 = centered.pow(2).mean(-1)  # [n, layers]
    m4 = centered.pow(4).mean(-1)
    kurt = torch.where(m2 > 0, m4 / m2.clamp_min(1e-30).pow(2) - 3.0, torch.nan)
    return silent.mean(-1), kurt.nanmean(-1)


def _per_fact(values: Tensor, owner: Sequence[int]) -> np.ndarray:
    """Mean of per-prompt ``values`` [n_prompts] within each fact -> [n_facts]."""
    groups: dict[int, list[float]] = defaultdict(list)
    for v, f in zip(values.tolist(), owner, strict=True):
        groups[f].append(v)
    return np.array([float(np.nanmean(groups[f])) for f in sorted(groups)])


@register(
    "sparsity",
    definition="""FFN activations at the answer position of every prompt of the facts. For each prompt and
    layer: silent_fraction = share of the layer's neurons with |a| < eps * max |a| of that layer at that
    prompt (eps = 0.01); kurtosis = excess kurtosis of the layer's activations across its neurons
    (0 = Gaussian; large = a few neurons carry the signal). Each is averaged over layers, then over a fact's
    prompts. Higher = sparser code. Bootstrap over facts.""",
    keys={"kurtosis": "higher", "silent_fraction": "higher"},
    needs=["model"],
    default=True,
)
def sparsity(ctx: MetricContext) -> dict[str, Estimate]:
    cfg = ctx.config("sparsity", SparsityConfig())
    acts, owner = ctx.answer_activations()
    silent, kurt = sparsity_stats(acts, cfg.eps)
    return {
        "kurtosis": mean_estimate(_per_fact(kurt, owner), seed=ctx.seed),
        "silent_fraction": mean_estimate(_per_fact(silent, owner), seed=ctx.seed),
    }


# --------------------------------------------------------------------------- polysemanticity


def neuron_relation_counts(records: Sequence[dict]) -> dict[tuple[int, int], Counter[str]]:
    """Knowledge neuron -> number of facts of each relation whose refined set contains it."""
    served: dict[tuple[int, int], Counter[str]] = defaultdict(Counter)
    for r in records:
        for n in {tuple(n) for n in r["neurons"]}:
            served[(int(n[0]), int(n[1]))][r["relation"]] += 1
    return dict(served)


def entropy_bits(counts: Sequence[int]) -> float:
    total = sum(counts)
    return float(-sum(c / total * math.log2(c / total) for c in counts if c > 0)) + 0.0


@register(
    "polysemanticity",
    definition="""For each neuron in any fact's refined knowledge-neuron set: the entropy (bits) of the
    distribution over relations of the facts it serves (a neuron in 2 facts of P36 and 2 of P37 has 1 bit).
    entropy_bits = mean over neurons (lower = each neuron serves one kind of knowledge);
    monosemantic_share = share of neurons with entropy 0 (higher); entropy_bits_shared = mean over the neurons
    serving at least 2 facts (a neuron serving one fact is trivially monosemantic); facts_per_neuron = mean
    number of facts a knowledge neuron serves (descriptive). Bootstrap over neurons.""",
    keys={
        "entropy_bits": "lower",
        "monosemantic_share": "higher",
        "entropy_bits_shared": "lower",
        "facts_per_neuron": "none",
    },
    needs=["neurons"],
    unit="neurons",
    default=True,
)
def polysemanticity(ctx: MetricContext) -> dict[str, Estimate]:
    served = neuron_relation_counts(usable_records(ctx.neuron_records))
    ent = np.array([entropy_bits(list(c.values())) for c in served.values()])
    multi = np.array([sum(c.values()) >= 2 for c in served.values()], dtype=bool)
    kw = {"seed": ctx.seed}
    return {
        "entropy_bits": mean_estimate(ent, **kw),
        "monosemantic_share": mean_estimate((ent == 0).astype(float), **kw),
        "entropy_bits_shared": mean_estimate(ent[multi] if len(ent) else ent, **kw),
        "facts_per_neuron": mean_estimate(np.array([sum(c.values()) for c in served.values()], float), **kw),
    }


# --------------------------------------------------------------------------- from a finished run


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def context_from_run(
    run_dir: str | os.PathLike,
    lm: LoadedModel | None,
    facts: Sequence[Fact],
    multi_token: bool = False,
    **kw: Any,
) -> MetricContext:
    """A context for the facts kept by a finished ``legibility score``/``neurons`` run in ``run_dir``.

    ``facts`` are the run's candidate facts (e.g. ``load_pararel(relations=...)``); those listed in
    ``facts.json`` (else those with a record in ``neurons.jsonl``) are rendered for ``lm``, and ``neurons.jsonl`` / ``effects.jsonl`` are read when present.
    ``kw`` goes to :class:`MetricContext` (seed, configs, attribution_prompts, ...).
    """
    run = Path(run_dir)
    records = _read_jsonl(run / "neurons.jsonl")
    if (run / "facts.json").exists():
        kept = set(json.loads((run / "facts.json").read_text())["facts"])
    elif records:  # runs scored by the training experiments write no facts.json
        kept = {r["fact_id"] for r in records}
    else:
        raise LegibilityError(f"{run} has no facts.json or neurons.jsonl: run `legibility score --out {run}`")
    rendered = [render(lm, f, multi_token) for f in facts if f.id in kept] if lm is not None else []
    if lm is not None and len(rendered) != len(kept):
        raise LegibilityError(
            f"{len(kept) - len(rendered)} of the run's facts are not among the facts given; load the same "
            "facts as the run (same --relations / --facts)"
        )
    return MetricContext(
        lm=lm,
        facts=rendered,
        neuron_records=records,
        effects=_read_jsonl(run / "effects.jsonl"),
        **kw,
    )


# The model-running metrics live in their own modules; importing them registers them.
from legibility.metrics import circuit, electrode, probes  # noqa: E402, F401

__all__ = [
    "INDEPENDENT",
    "MetricContext",
    "available_metrics",
    "MetricSpec",
    "compute_metrics",
    "context_from_run",
    "metric_direction",
]
