"""The "electrode" test (essay.txt): steer a fact with at most 10 coarse probes.

An electrode sits on a contiguous block of ``block`` neurons of one layer and only acts on their average:
at the answer position it sets every neuron of the block to ``gain`` x the block's mean activation
(``mode="set"``; gain 0 silences the block), or shifts them all by the same amount so that the block mean
becomes ``gain`` x its old value (``mode="shift"``, leaving the pattern inside the block as it was). Up to
``max_electrodes`` electrodes are chosen greedily to minimize p(correct) of a fact and are scored on other
prompts of the fact than those they were chosen on, against as many random electrodes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from legibility.errors import LegibilityError
from legibility.facts.types import PromptQueries, RenderedFact
from legibility.forward import answer_logits, make_batch
from legibility.metrics.circuit import sample_facts
from legibility.metrics.spec import MetricContext, register
from legibility.metrics.stats import Estimate, mean_estimate
from legibility.models.loading import LoadedModel

Electrode = tuple[int, int, float]  # (layer, block index, gain)


@dataclass(frozen=True)
class ElectrodeConfig:
    """Electrode test settings."""

    block: int = 64  # neurons per electrode (contiguous indices of one layer)
    max_electrodes: int = 10  # the essay's limit
    gains: tuple[float, ...] = (0.0, 2.0)  # gains an electrode may apply to its block's mean
    mode: Literal["set", "shift"] = "set"  # set the block to gain x mean, or shift it so its mean scales
    candidates: int = 8  # blocks considered by the greedy search: the top ones by |block-summed attribution|
    holdout: bool = True  # choose on even-numbered prompts, score on odd ones (facts with >= 2 prompts)
    choose_prompts: int | None = 4  # choose on at most this many prompts (the greedy search's cost)
    random_draws: int = 3  # random electrode sets averaged for the control
    max_facts: int | None = None  # measure at most this many facts (seeded sample; None: all)
    batch_size: int = 64


def _block_fn(layer_rows: list[list[tuple[int, float]]], positions: Tensor, block: int, mode: str):
    """Patch for one layer: row r of the batch gets the electrodes ``layer_rows[r]`` [(block, gain)]."""

    def fn(acts: Tensor) -> Tensor:  # [batch, pos, neurons]
        n, dev = acts.shape[-1], acts.device
        n_blocks = -(-n // block)
        mask = torch.zeros(acts.shape[0], n_blocks, dtype=torch.bool, device="cpu")  # filled on the host
        gain = torch.ones(acts.shape[0], n_blocks, dtype=acts.dtype, device="cpu")
        for r, electrodes in enumerate(layer_rows):
            for b, g in electrodes:
                mask[r, b], gain[r, b] = True, g
        if not bool(mask.any()):
            return acts
        rows, pos = torch.arange(acts.shape[0], device=dev), positions.to(dev)
        sub = acts[rows, pos]  # [batch, neurons]
        padded = torch.nn.functional.pad(sub, (0, n_blocks * block - n))
        counts = torch.full((n_blocks,), float(block), dtype=acts.dtype, device=dev)
        counts[-1] = n - (n_blocks - 1) * block  # a last, partial block averages only its own neurons
        means = padded.view(-1, n_blocks, block).sum(-1) / counts  # [batch, blocks]
        target = gain.to(dev) * means

        def per_neuron(t: Tensor) -> Tensor:  # [batch, blocks] -> [batch, neurons]
            return t.repeat_interleave(block, -1)[:, :n]

        new = per_neuron(target) if mode == "set" else sub + per_neuron(target - means)
        acts = acts.clone()
        acts[rows, pos] = torch.where(per_neuron(mask.to(dev)), new, sub)
        return acts

    return fn


@torch.no_grad()
def electrode_probs(
    lm: LoadedModel,
    prompts: Sequence[PromptQueries],
    electrode_sets: Sequence[Sequence[Electrode]],
    config: ElectrodeConfig | None = None,
) -> np.ndarray:
    """Mean p(correct) over ``prompts`` under each electrode set -> [n_sets]; all sets run as rows of the
    same batches (p of a prompt = product over its target tokens)."""
    cfg = config or ElectrodeConfig()
    queries = [(pi, q) for pi, p in enumerate(prompts) for q in p.queries]
    rows = [(s, pi, q) for s in range(len(electrode_sets)) for pi, q in queries]
    probs = torch.empty(len(rows), device="cpu")  # host-side: returned as numpy
    for start in range(0, len(rows), cfg.batch_size):
        chunk = rows[start : start + cfg.batch_size]
        batch = make_batch(lm, [q for _, _, q in chunk])
        layers = {layer for s, _, _ in chunk for layer, _, _ in electrode_sets[s]}
        fns = {
            layer: _block_fn(
                [[(b, g) for ll, b, g in electrode_sets[s] if ll == layer] for s, _, _ in chunk],
                batch.positions,
                cfg.block,
                cfg.mode,
            )
            for layer in layers
        }
        with lm.sites.patch(fns):
            p = answer_logits(lm, batch).float().softmax(-1)
        probs[start : start + len(chunk)] = p.gather(1, batch.targets[:, None])[:, 0]
    per_prompt = torch.ones(len(electrode_sets), len(prompts), device="cpu")
    for (s, pi, _), v in zip(rows, probs.tolist(), strict=True):
        per_prompt[s, pi] *= v
    return per_prompt.mean(1).numpy()


def block_scores(scores: Tensor, block: int) -> Tensor:
    """Attribution summed over each block [layers, n_blocks] from scores [layers, neurons]."""
    n = scores.shape[1]
    n_blocks = -(-n // block)
    return (
        torch.nn.functional.pad(scores, (0, n_blocks * block - n))
        .view(scores.shape[0], n_blocks, block)
        .sum(-1)
    )


@dataclass
class ElectrodeResult:
    """One fact's electrode test, measured on the evaluation prompts."""

    before: float  # p(correct) unmodified
    after: list[float]  # p(correct) with the first 1, 2, ... greedy electrodes
    random_after: float  # mean p(correct) with max_electrodes random electrodes
    electrodes: list[Electrode]  # the greedy choice, in order

    @property
    def drop(self) -> float:
        """Relative drop of p(correct) with all chosen electrodes (1 = the fact is gone)."""
        return (self.before - (self.after[-1] if self.after else self.before)) / self.before

    @property
    def random_drop(self) -> float:
        return (self.before - self.random_after) / self.before

    def to_half(self, cap: int) -> int:
        """Electrodes needed to halve p(correct); ``cap`` + 1 when the greedy set never does."""
        return next((i + 1 for i, p in enumerate(self.after) if p <= self.before / 2), cap + 1)


def electrode_test(
    lm: LoadedModel, fact: RenderedFact, scores: Tensor, config: ElectrodeConfig | None = None, seed: int = 0
) -> ElectrodeResult:
    """Greedy suppression of one fact by at most ``max_electrodes`` electrodes; ``scores`` [layers, neurons]
    (its attribution) ranks the candidate blocks."""
    cfg = config or ElectrodeConfig()
    if cfg.block < 1 or cfg.max_electrodes < 1:
        raise LegibilityError("electrode block and max_electrodes must be >= 1")
    prompts = fact.prompts
    if cfg.holdout and len(prompts) >= 2:
        choose, score_on = prompts[0::2], prompts[1::2]
    else:
        choose, score_on = prompts, prompts
    choose = choose[: cfg.choose_prompts]
    summed = block_scores(scores, cfg.block).abs()  # [layers, blocks]
    n_blocks = summed.shape[1]
    top = summed.flatten().argsort(descending=True)[: cfg.candidates]
    options = [(int(i) // n_blocks, int(i) % n_blocks, float(g)) for i in top for g in cfg.gains]
    chosen: list[Electrode] = []
    current = float(electrode_probs(lm, choose, [[]], cfg)[0])
    while len(chosen) < cfg.max_electrodes:
        free = [o for o in options if (o[0], o[1]) not in {(c[0], c[1]) for c in chosen}]
        if not free:
            break
        p = electrode_probs(lm, choose, [[*chosen, o] for o in free], cfg)
        best = int(np.argmin(p))
        if p[best] >= current:  # no electrode lowers p(correct) any further
            break
        chosen.append(free[best])
        current = float(p[best])
    sets = [chosen[: i + 1] for i in range(len(chosen))]
    rng = random.Random(f"{seed}|{fact.fact.id}")
    all_blocks = [(layer, b) for layer in range(scores.shape[0]) for b in range(n_blocks)]
    randoms = [
        [
            (layer, b, rng.choice(cfg.gains))
            for layer, b in rng.sample(all_blocks, min(cfg.max_electrodes, len(all_blocks)))
        ]
        for _ in range(cfg.random_draws)
    ]
    p = electrode_probs(lm, score_on, [[], *sets, *randoms], cfg)
    return ElectrodeResult(
        before=float(p[0]),
        after=[float(x) for x in p[1 : 1 + len(sets)]],
        random_after=float(np.mean(p[1 + len(sets) :])),
        electrodes=chosen,
    )


@register(
    "electrode",
    definition="""Each layer's neurons are cut into contiguous blocks of 64; an electrode sets a block, at the
    answer position, to gain x its mean activation, gain in {0, 2}. Per fact, up to 10 electrodes are chosen
    greedily (each step adds the one that lowers mean p(correct) most; candidates: the 8 blocks of largest
    |summed attribution|, x 2 gains) on the fact's even-numbered prompts and scored on its odd-numbered ones.
    drop = relative drop of p(correct) with the chosen electrodes; random_drop = the same for 10 random
    electrodes (mean of 3 draws); advantage = drop - random_drop; halved_share = share of facts halved by at
    most 10 electrodes; to_half = electrodes needed to halve (11 when never). Higher drop = knowledge
    steerable with coarse, few probes. Bootstrap over facts.""",
    keys={
        "drop": "higher",
        "advantage": "higher",
        "random_drop": "none",
        "halved_share": "higher",
        "to_half": "lower",
    },
    needs=["model"],
)
def electrode(ctx: MetricContext) -> dict[str, Estimate]:
    cfg = ctx.config("electrode", ElectrodeConfig())
    lm = ctx.model()
    results = [
        electrode_test(lm, f, ctx.fact_scores(f), cfg, ctx.seed)
        for f in sample_facts(ctx.usable_facts(), cfg.max_facts, ctx.seed)
    ]
    results = [r for r in results if r.before > 0]
    drop = np.array([r.drop for r in results])
    rnd = np.array([r.random_drop for r in results])
    to_half = np.array([r.to_half(cfg.max_electrodes) for r in results], dtype=float)
    kw = {"seed": ctx.seed}
    return {
        "drop": mean_estimate(drop, **kw),
        "advantage": mean_estimate(drop - rnd, **kw),
        "random_drop": mean_estimate(rnd, **kw),
        "halved_share": mean_estimate((to_half <= cfg.max_electrodes).astype(float), **kw),
        "to_half": mean_estimate(to_half, **kw),
    }
