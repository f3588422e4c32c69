"""Circuit size: the fewest top-attributed neurons whose suppression halves p(correct) of a fact."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from legibility.facts.types import RenderedFact
from legibility.interventions import Intervention, group_by_layer
from legibility.metrics.effects import prompt_probs
from legibility.metrics.spec import MetricContext, register
from legibility.metrics.stats import Estimate, bootstrap, mean_estimate
from legibility.models.loading import LoadedModel


@dataclass(frozen=True)
class CircuitConfig:
    """Circuit-size search settings."""

    cap: int = 256  # largest k tried; facts not halved by then count as cap (and as capped)
    fraction: float = 0.5  # target: p(correct) after ablation <= fraction * p(correct) before
    max_facts: int | None = None  # measure at most this many facts (seeded sample; None: all)
    batch_size: int = 64


def smallest_k(p_after: Callable[[int], float], target: float, cap: int) -> tuple[int, bool]:
    """Smallest k in 1..cap with p_after(k) <= target, found by doubling then bisection -> (k, capped).

    Ablation effects need not be monotone in k, so this is the first crossing the search meets: the
    doubling step bounds it, bisection pins it between the last k that failed and the first that passed.
    """
    lo, k = 0, 1
    while True:
        if p_after(k) <= target:
            break
        if k >= cap:
            return cap, True
        lo, k = k, min(2 * k, cap)
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if p_after(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi, False


def circuit_size(
    lm: LoadedModel, fact: RenderedFact, scores: Tensor, config: CircuitConfig | None = None
) -> tuple[int, bool, float]:
    """(k, capped, p before) for one fact; ``scores`` [layers, neurons] orders the neurons (highest first)."""
    cfg = config or CircuitConfig()
    order = scores.flatten().argsort(descending=True)
    n_neurons = scores.shape[1]
    before = float(prompt_probs(lm, fact.prompts, batch_size=cfg.batch_size).mean())

    def p_after(k: int) -> float:
        top = [(int(i) // n_neurons, int(i) % n_neurons) for i in order[:k]]
        iv = Intervention(group_by_layer(top), "suppress")
        return float(prompt_probs(lm, fact.prompts, iv, cfg.batch_size).mean())

    k, capped = smallest_k(p_after, cfg.fraction * before, min(cfg.cap, scores.numel()))
    return k, capped, before


def sample_facts(facts: Sequence[RenderedFact], limit: int | None, seed: int) -> list[RenderedFact]:
    """All facts, or a seeded sample of ``limit`` of them in their original order."""
    facts = list(facts)
    if limit is None or len(facts) <= limit:
        return facts
    idx = np.random.default_rng(seed).choice(len(facts), limit, replace=False)
    return [facts[i] for i in sorted(idx)]


@register(
    "circuit_size",
    definition="""Per fact: neurons ordered by the fact's mean integrated-gradients attribution over its
    prompts; k = the smallest number of top neurons whose suppression (x0 at the answer position) brings the
    fact's mean p(correct) to at most half its unmodified value, found by doubling k then bisecting (the first
    crossing met), capped at 256 (a capped fact counts as 256). median and mean over facts of k; capped_share =
    share of facts not halved by 256 neurons. Lower = the fact lives in a small circuit. Bootstrap over facts.""",
    keys={"median": "lower", "mean": "lower", "capped_share": "lower"},
    needs=["model"],
)
def circuit(ctx: MetricContext) -> dict[str, Estimate]:
    cfg = ctx.config("circuit_size", CircuitConfig())
    lm = ctx.model()
    ks, capped = [], []
    for fact in sample_facts(ctx.usable_facts(), cfg.max_facts, ctx.seed):
        k, cap, before = circuit_size(lm, fact, ctx.fact_scores(fact), cfg)
        if before > 0:
            ks.append(k)
            capped.append(cap)
    values = np.array(ks, dtype=float)
    return {
        "median": bootstrap(lambda x: float(np.median(x)), values, seed=ctx.seed),
        "mean": mean_estimate(values, seed=ctx.seed),
        "capped_share": mean_estimate(np.array(capped, dtype=float), seed=ctx.seed),
    }
