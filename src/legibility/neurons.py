"""Knowledge neurons: coarse per prompt (score > t * max), refined across a fact's paraphrases.

Following Dai et al. (2022): a prompt's *coarse* neurons are those whose attribution exceeds ``t`` times
the largest attribution of that prompt (t = 0.2); a fact's *refined* knowledge neurons are the coarse
neurons shared by more than a fraction ``p`` of its prompts. With ``adaptive=True``, ``p`` moves in steps of
``p_step`` until the fact has between ``target[0]`` and ``target[1]`` neurons (when some p achieves it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from legibility.errors import LegibilityError

Neuron = tuple[int, int]  # (layer, index)


@dataclass(frozen=True)
class NeuronConfig:
    """How knowledge neurons are selected from attributions."""

    threshold: float = 0.2  # t: coarse neurons score above t * (max score of the prompt)
    share: float = 0.5  # p: refined neurons are shared by more than p of the fact's prompts
    min_prompts: int = 2  # facts with fewer usable prompts get no refined neurons (refining needs several)
    adaptive: bool = False  # adjust p per fact so that it keeps target[0]..target[1] neurons
    target: tuple[int, int] = (2, 5)
    p_step: float = 0.05


@dataclass
class KnowledgeNeurons:
    """The refined knowledge neurons of one fact, with the coarse sets they came from."""

    fact_id: str
    relation: str
    neurons: list[Neuron]
    coarse: list[list[Neuron]] = field(default_factory=list)
    share: float = 0.5  # the p actually used
    n_prompts: int = 0

    def by_layer(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, list[int]] = {}
        for layer, i in self.neurons:
            out.setdefault(layer, []).append(i)
        return {k: tuple(v) for k, v in sorted(out.items())}


def coarse_neurons(scores: Tensor, threshold: float = 0.2) -> list[Neuron]:
    """Neurons of one prompt whose score exceeds ``threshold`` * max score; scores is [layers, neurons]."""
    if scores.dim() != 2:
        raise LegibilityError(f"expected scores [layers, neurons], got shape {tuple(scores.shape)}")
    top = scores.max()
    if not bool(top > 0):
        return []
    idx = torch.nonzero(scores > threshold * top)
    return [(int(a), int(b)) for a, b in idx.tolist()]


def refine(coarse: Sequence[Sequence[Neuron]], share: float) -> list[Neuron]:
    """Neurons in more than ``share`` of the coarse sets (strictly more, as in the paper)."""
    counts = Counter(n for s in coarse for n in set(s))
    need = share * len(coarse)
    return sorted(n for n, c in counts.items() if c > need)


def knowledge_neurons(
    fact_id: str, relation: str, scores: Tensor, config: NeuronConfig | None = None
) -> KnowledgeNeurons:
    """Refined knowledge neurons of a fact from its per-prompt scores [prompts, layers, neurons]."""
    cfg = config or NeuronConfig()
    if not 0.0 <= cfg.share < 1.0:
        raise LegibilityError(f"share p must be in [0, 1), got {cfg.share}")
    coarse = [coarse_neurons(s, cfg.threshold) for s in scores]
    kn = KnowledgeNeurons(fact_id, relation, [], coarse, cfg.share, len(coarse))
    if len(coarse) < cfg.min_prompts:
        return kn
    p = cfg.share
    kn.neurons = refine(coarse, p)
    if cfg.adaptive:
        lo, hi = cfg.target
        # Too many: raise p; too few: lower it. Stop at the first p inside the target range, or at the edge.
        while len(kn.neurons) > hi and p + cfg.p_step < 1.0:
            p += cfg.p_step
            kn.neurons = refine(coarse, p)
        while len(kn.neurons) < lo and p - cfg.p_step >= 0.0:
            candidate = refine(coarse, p - cfg.p_step)
            if len(candidate) > hi:
                break
            p -= cfg.p_step
            kn.neurons = candidate
        kn.share = round(p, 6)
    return kn
