"""The suppressability objective: train so that suppressing the most-attributed neurons removes a fact.

For a batch of fact prompts (training templates of the objective facts: ``data.fact_split`` holds the
others out of every objective), at each prompt's answer position:

1. attributions S [batch, layers, neurons] of p(correct) to the FFN activations A, differentiable in the
   parameters (``create_graph=True``): ``gxa`` = A * dp/dA, or ``ig`` = A * mean_k dp/dA at alpha_k * A,
   alpha_k = k / steps (left Riemann sum, one layer scaled at a time as in Dai et al.);
2. a soft top-k mask M = sigmoid((S - tau) / (temperature * max|S|)) over all layers' neurons of a
   prompt, tau halfway between the k-th and (k+1)-th largest score;
3. p_sup = p(correct) with the activations multiplied by (1 - M) at the answer position.

loss = mean(p_sup / (p_sup + p)) + [control] mean(((p_rand - p) / (p_rand + p))^2), where p_rand uses the
same mask shuffled within each layer (the scorecard's random control keeps the per-layer count).

In terms of the scorecard's relative drops d = 1 - p_sup / p and r = 1 - p_rand / p the two terms are
(1 - d) / (2 - d), decreasing in d, and (r / (2 - r))^2, zero iff r = 0: the loss is minimal exactly when
suppressing the located neurons removes the fact (d = 1) and suppressing as many random ones changes
nothing (r = 0), i.e. when the scorecard's suppressability d - r is 1. Both terms are bounded, and their
gradients in log p are too. The plain ratio form mean(p_sup / p) - mean(p_rand / p) is not bounded below:
in our first experiment the model drove p toward 0 so that random suppression multiplied it, and the
loss diverged to about -1e13 within 350 steps of switching on (docs/training.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from legibility.errors import LegibilityError
from legibility.facts.render import render
from legibility.facts.types import Query
from legibility.forward import Batch, answer_logits, make_batch
from legibility.models.loading import LoadedModel
from legibility.training.regularizers.base import Regularizer, RegularizerConfig, Setup, StepContext, register


@dataclass(frozen=True)
class FactObjectiveConfig(RegularizerConfig):
    """The settings both differentiable fact objectives share."""

    method: Literal["gxa", "ig"] = "gxa"  # attribution: grad x activation, or few-step integrated gradients
    ig_steps: int = 3  # path points for method ig
    k: int = 4  # neurons suppressed per prompt (over all layers)
    temperature: float = 0.05  # soft top-k width, relative to the prompt's largest |score|
    facts_per_step: int = 16  # fact prompts (specific: own/same-relation prompt pairs) per training step
    every: int = 1  # apply every this many steps (its weight is multiplied by it to keep the average)


@dataclass(frozen=True)
class SuppressabilityConfig(FactObjectiveConfig):
    """The differentiable suppressability objective."""

    control: bool = True  # also penalize any effect of suppressing a shuffled (random) mask


F = TypeVar("F", bound=FactObjectiveConfig)


class FactObjective(Regularizer[F]):
    """A fact objective computed every ``config.every`` steps, its weight multiplied by as much."""

    def weight(self, step: int, total: int) -> float:
        return super().weight(step, total) * self.config.every

    def due(self, step: int) -> bool:
        return step % self.config.every == 0


def _row_index(batch: Batch) -> tuple[Tensor, Tensor]:
    return torch.arange(batch.input_ids.shape[0], device=batch.positions.device), batch.positions


def _answer_p(lm: LoadedModel, batch: Batch) -> Tensor:
    logits = answer_logits(lm, batch)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half -> float; double stays
    return logits.softmax(-1).gather(1, batch.targets[:, None])[:, 0]


def clean_pass(lm: LoadedModel, batch: Batch) -> tuple[Tensor, Tensor, list[Tensor]]:
    """(p [batch], A [batch, layers, neurons], full activations per layer) with their graphs."""
    store: dict[int, Tensor] = {}

    def rec(layer: int):
        def fn(acts: Tensor) -> Tensor:
            store[layer] = acts
            return acts

        return fn

    with lm.sites.patch({layer: rec(layer) for layer in range(lm.sites.n_layers)}):
        p = _answer_p(lm, batch)
    rows, pos = _row_index(batch)
    full = [store[layer] for layer in range(lm.sites.n_layers)]
    return p, torch.stack([a[rows, pos] for a in full], 1), full


def attributions(
    lm: LoadedModel, batch: Batch, method: str = "gxa", steps: int = 3
) -> tuple[Tensor, Tensor, Tensor]:
    """(p [batch], A [batch, layers, neurons], S [batch, layers, neurons]), S differentiable (create_graph)."""
    p, acts, full = clean_pass(lm, batch)
    if method == "gxa":
        grads = torch.autograd.grad(p.sum(), full, create_graph=True)
        rows, pos = _row_index(batch)
        g = torch.stack([gr[rows, pos] for gr in grads], 1)
        return p, acts, acts * g
    if method != "ig":
        raise LegibilityError(f"unknown attribution method {method!r} for the objective; use 'gxa' or 'ig'")
    n_layers, b = lm.sites.n_layers, acts.shape[0]
    alphas = torch.arange(steps, dtype=acts.dtype, device=acts.device) / steps
    # rows of the big batch: (layer l, alpha a, prompt i) -> row (l * steps + a) * b + i
    points = (alphas[None, :, None, None] * acts.transpose(0, 1)[:, None]).reshape(-1, acts.shape[-1])
    big = Batch(
        batch.input_ids.repeat(n_layers * steps, 1),
        batch.attention_mask.repeat(n_layers * steps, 1),
        batch.positions.repeat(n_layers * steps),
        batch.targets.repeat(n_layers * steps),
    )
    span = steps * b

    def replace(layer: int):
        def fn(a: Tensor) -> Tensor:
            rows = torch.arange(layer * span, (layer + 1) * span, device=a.device)
            a = a.clone()
            a[rows, big.positions[rows]] = points[rows].to(a.dtype)
            return a

        return fn

    with lm.sites.patch({layer: replace(layer) for layer in range(n_layers)}):
        probs = _answer_p(lm, big)
    (g,) = torch.autograd.grad(probs.sum(), points, create_graph=True)
    g = g.view(n_layers, steps, b, -1).mean(1).transpose(0, 1)  # [batch, layers, neurons]
    return p, acts, acts * g


def soft_topk_mask(scores: Tensor, k: int, temperature: float) -> Tensor:
    """scores [batch, layers, neurons] -> soft mask in (0, 1) of the same shape, ~1 on each row's top k."""
    flat = scores.flatten(1)  # [batch, layers * neurons]
    if not 1 <= k < flat.shape[1]:
        raise LegibilityError(f"suppressability.k must be in 1..{flat.shape[1] - 1}, got {k}")
    top = flat.topk(k + 1, dim=1).values
    tau = 0.5 * (top[:, k - 1] + top[:, k])
    width = temperature * flat.abs().amax(1) + 1e-12
    return torch.sigmoid((flat - tau[:, None]) / width[:, None]).view_as(scores)


def suppressed_p(lm: LoadedModel, batch: Batch, mask: Tensor) -> Tensor:
    """p(correct) [batch] with activations scaled by (1 - mask[:, layer]) at the answer position."""
    rows, pos = _row_index(batch)

    def scale(layer: int):
        def fn(a: Tensor) -> Tensor:
            a = a.clone()
            a[rows, pos] = a[rows, pos] * (1 - mask[:, layer]).to(a.dtype)
            return a

        return fn

    with lm.sites.patch({layer: scale(layer) for layer in range(lm.sites.n_layers)}):
        return _answer_p(lm, batch)


def shuffle_within_layers(mask: Tensor, generator: torch.Generator) -> Tensor:
    """The mask with its neurons permuted at random within each (prompt, layer) [batch, layers, neurons]."""
    perm = torch.rand(mask.shape, generator=generator, device=generator.device).argsort(-1).to(mask.device)
    return mask.gather(-1, perm)


def suppressability_loss(
    lm: LoadedModel, batch: Batch, cfg: SuppressabilityConfig, generator: torch.Generator | None = None
) -> Tensor:
    """mean(p_sup / (p_sup + p)) + [control] mean(((p_rand - p) / (p_rand + p))^2); minimize it.

    Runs attention with PyTorch's math SDPA kernel: the fused CPU kernel has no double backward.
    """
    with sdpa_kernel(SDPBackend.MATH):
        return _loss(lm, batch, cfg, generator)


def _loss(
    lm: LoadedModel, batch: Batch, cfg: SuppressabilityConfig, generator: torch.Generator | None
) -> Tensor:
    p, _, scores = attributions(lm, batch, cfg.method, cfg.ig_steps)
    mask = soft_topk_mask(scores, cfg.k, cfg.temperature)
    p_sup = suppressed_p(lm, batch, mask)
    loss = (p_sup / (p_sup + p)).mean()
    if cfg.control:
        p_rand = suppressed_p(
            lm, batch, shuffle_within_layers(mask, generator or torch.Generator().manual_seed(0))
        )
        loss = loss + ((p_rand - p) / (p_rand + p)).pow(2).mean()
    return loss


def fact_queries(setup: Setup, name: str) -> tuple[LoadedModel, list[tuple[str, str, Query]]]:
    """The model being trained, wrapped for the library, and (relation, fact id, first query) of every
    prompt of the corpus' *objective* facts whose target is a single token; the objectives sample these.

    Only objective facts (``corpus.objective_facts``) are rendered: a held-out fact (``data.fact_split``)
    never reaches an objective, so the scorecard on held-out facts measures what the objective generalizes."""
    if setup.corpus is None or not setup.corpus.train_facts:
        raise LegibilityError(
            f"the {name} regularizer needs facts in the corpus (data.world or data.pararel)"
        )
    facts = setup.corpus.objective_facts
    if not facts:
        raise LegibilityError(
            f"the {name} regularizer has no objective facts: data.fact_split holds out every fact; lower "
            "data.fact_split.held_out or give relations with two or more facts"
        )
    lm = LoadedModel(
        setup.model, setup.tokenizer, setup.sites, "training", add_special_tokens=setup.add_special_tokens
    )
    queries = [(f.relation, f.id, pq.queries[0]) for f in facts for pq in render(lm, f).prompts]
    if not queries:
        raise LegibilityError(
            "no fact prompt renders to a single-token target; the objective has nothing to use"
        )
    return lm, queries


@register("suppressability", SuppressabilityConfig, "differentiable suppressability (meta-gradients)")
class Suppressability(FactObjective[SuppressabilityConfig]):
    def __init__(self, config: SuppressabilityConfig, setup: Setup):
        super().__init__(config, setup)
        self.lm, facts = fact_queries(setup, "suppressability")
        self.queries = [q for _, _, q in facts]
        self.seed = setup.seed

    def penalty(self, ctx: StepContext) -> Tensor | None:
        if not self.due(ctx.step):
            return None
        rng = random.Random(f"{self.seed}|suppressability|{ctx.step}")
        chosen = rng.sample(self.queries, min(self.config.facts_per_step, len(self.queries)))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.step)
        return suppressability_loss(self.lm, make_batch(self.lm, chosen), self.config, gen)
