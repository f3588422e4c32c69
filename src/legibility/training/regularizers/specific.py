"""The specific-suppressability objective: suppressing a fact's attributed neurons removes that fact and
leaves the other facts of its relation alone.

For a batch of fact prompts and, row by row, a *partner* prompt of another fact of the same relation, with
the machinery of :mod:`legibility.training.regularizers.suppressability` (attributions S differentiable in
the parameters, soft top-k mask M of each own prompt):

* p, p_sup: the own prompt's p(correct) without / with its activations scaled by (1 - M);
* q, q_sup: the partner's p(correct) without / with the *own* prompt's mask M applied at its answer position.

loss = mean(p_sup / (p_sup + p)) + collateral * mean(((q_sup - q) / (q_sup + q))^2)
       [+ the random-mask control term of the suppressability objective]

With the own drop d = 1 - p_sup / p and the same-relation drop c = 1 - q_sup / q the terms are (1 - d) / (2 - d)
and (c / (2 - c))^2: bounded, minimal exactly at d = 1 and c = 0, where the scorecard's per-fact
specific suppressability clip(d) * (1 - clip(c)) is 1. A relation-wide kill switch (d = c = 1) pays the full
collateral term (1 per row), which plain suppressability never charges.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from legibility.errors import LegibilityError
from legibility.facts.types import Query
from legibility.forward import Batch, make_batch
from legibility.models.loading import LoadedModel
from legibility.training.regularizers.base import Setup, StepContext, register
from legibility.training.regularizers.suppressability import (
    FactObjective,
    FactObjectiveConfig,
    attributions,
    fact_queries,
    shuffle_within_layers,
    soft_topk_mask,
    suppressed_p,
)


@dataclass(frozen=True)
class SpecificConfig(FactObjectiveConfig):
    """The differentiable specific-suppressability objective."""

    collateral: float = 1.0  # weight of the same-relation term against the own-fact term
    control: bool = False  # also penalize any effect of suppressing a shuffled (random) mask


def specific_loss(
    lm: LoadedModel,
    batch: Batch,
    partners: Batch,
    cfg: SpecificConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The objective for own prompts ``batch`` and their same-relation partners (row by row); minimize it.

    Runs attention with PyTorch's math SDPA kernel: the fused CPU kernel has no double backward.
    """
    if partners.input_ids.shape[0] != batch.input_ids.shape[0]:
        raise LegibilityError("specific_loss needs one partner prompt per own prompt")
    with sdpa_kernel(SDPBackend.MATH):
        p, _, scores = attributions(lm, batch, cfg.method, cfg.ig_steps)
        mask = soft_topk_mask(scores, cfg.k, cfg.temperature)  # [batch, layers, neurons]
        p_sup = suppressed_p(lm, batch, mask)
        q = suppressed_p(lm, partners, torch.zeros_like(mask))
        q_sup = suppressed_p(lm, partners, mask)
        loss = (p_sup / (p_sup + p)).mean() + cfg.collateral * ((q_sup - q) / (q_sup + q)).pow(2).mean()
        if cfg.control:
            shuffled = shuffle_within_layers(mask, generator or torch.Generator().manual_seed(0))
            p_rand = suppressed_p(lm, batch, shuffled)
            loss = loss + ((p_rand - p) / (p_rand + p)).pow(2).mean()
    return loss


def partner_pairs(
    queries: list[tuple[str, str, Query]], n: int, rng: random.Random
) -> list[tuple[Query, Query]]:
    """``n`` (own, partner) pairs: partner = a prompt of another fact of the own prompt's relation.
    ``queries`` holds (relation, fact id, query)."""
    by_rel: dict[str, list[tuple[str, Query]]] = defaultdict(list)
    for rel, fid, q in queries:
        by_rel[rel].append((fid, q))
    own = rng.sample(queries, min(n, len(queries)))
    pairs = []
    for rel, fid, q in own:
        others = [oq for ofid, oq in by_rel[rel] if ofid != fid]
        if others:
            pairs.append((q, rng.choice(others)))
    return pairs


@register("specific_suppressability", SpecificConfig, "own-fact drop rewarded, same-relation drop penalized")
class SpecificSuppressability(FactObjective[SpecificConfig]):
    def __init__(self, config: SpecificConfig, setup: Setup):
        super().__init__(config, setup)
        self.lm, self.queries = fact_queries(setup, "specific_suppressability")
        facts_by_rel: dict[str, set[str]] = defaultdict(set)
        for rel, fid, _ in self.queries:
            facts_by_rel[rel].add(fid)
        if not any(len(v) >= 2 for v in facts_by_rel.values()):
            raise LegibilityError(
                "specific_suppressability needs a relation with >= 2 facts whose prompts render to a "
                "single-token target (the same-relation partners)"
            )
        self.seed = setup.seed

    def penalty(self, ctx: StepContext) -> Tensor | None:
        if not self.due(ctx.step):
            return None
        rng = random.Random(f"{self.seed}|specific|{ctx.step}")
        pairs = partner_pairs(self.queries, self.config.facts_per_step, rng)
        if not pairs:
            return None
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.step)
        own = make_batch(self.lm, [a for a, _ in pairs])
        partners = make_batch(self.lm, [b for _, b in pairs])
        return specific_loss(self.lm, own, partners, self.config, gen)
