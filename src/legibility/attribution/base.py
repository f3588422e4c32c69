"""Attribution methods: scores[layer, neuron] of FFN neurons for p(target) at the answer position."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from legibility.errors import LegibilityError
from legibility.facts.types import PromptQueries, Query
from legibility.models.loading import LoadedModel
from legibility.registry import Registry

Quadrature = Literal["left", "endpoints", "gauss-legendre"]


@dataclass(frozen=True)
class AttributionConfig:
    """Integrated-gradients settings. Defaults follow Dai et al. (2022)."""

    steps: int = 20  # m, the number of points on the path from the zero baseline to the activation
    # "left": alpha_i = i/m, i = 0..m-1 (paper, official code); "endpoints": linspace(0, 1, m) (EleutherAI);
    # "gauss-legendre": the m Gauss-Legendre nodes and weights on [0, 1]
    quadrature: Quadrature = "left"
    batch_size: int = 64  # rows (queries for grad-x-act) per pass of ig-reference, ig-per-query, grad-x-act
    max_rows: int | None = None  # cap on rows per chunk of the packed engine (None: free memory decides)
    pack_queries: int = 64  # queries sharing one clean forward and its chunks in the packed engine
    skip_to_site: bool = True  # rows of layer l start at the site inside block l (where the family allows)
    nodes: int = 6  # Gauss-Legendre nodes of the approximate "ig-gauss" method (it ignores steps)
    candidates: int = 32  # neurons that grad x activation passes to exact IG in "ig-prefilter"

    def alphas(self, device: torch.device | str | None = None) -> Tensor:
        """Path points alpha_k [steps] (float32, on ``device``)."""
        return self._alphas().to(device or "cpu")

    def weights(self, device: torch.device | str | None = None) -> Tensor:
        """Weight of each path point's gradient; attribution = activation * sum_k w_k grad_k."""
        if self.quadrature == "gauss-legendre":
            return self._gauss()[1].to(device or "cpu")
        return torch.full((self.steps,), 1.0 / self.steps, device=device or "cpu")

    def _alphas(self) -> Tensor:
        if self.steps < 1:
            raise LegibilityError(f"steps must be >= 1, got {self.steps}")
        if self.quadrature == "left":
            return torch.arange(self.steps, dtype=torch.float32, device="cpu") / self.steps
        if self.quadrature == "endpoints":
            return torch.linspace(0.0, 1.0, self.steps, device="cpu")
        if self.quadrature == "gauss-legendre":
            return self._gauss()[0]
        raise LegibilityError(
            f"unknown quadrature {self.quadrature!r}; use 'left', 'endpoints' or 'gauss-legendre'"
        )

    def _gauss(self) -> tuple[Tensor, Tensor]:
        import numpy as np

        x, w = np.polynomial.legendre.leggauss(self.steps)  # on [-1, 1]
        return (
            torch.tensor((x + 1) / 2, dtype=torch.float32, device="cpu"),
            torch.tensor(w / 2, dtype=torch.float32, device="cpu"),
        )


# (lm, queries, config) -> scores [n_queries, n_layers, n_neurons]
Method = Callable[[LoadedModel, Sequence[Query], AttributionConfig], Tensor]


@dataclass(frozen=True)
class MethodInfo:
    """An attribution method and what its callers must know about it."""

    fn: Method
    exact: bool  # True: gives the reference integrated-gradients scores (up to float error)
    description: str
    # where the neurons it finds act, hence where suppression must act: "answer" (the answer position) or
    # "all" (every position, for neurons located elsewhere, e.g. at the last subject token)
    where: str = "answer"
    contrast: bool = False  # needs each query's contrast_ids (the relation's other objects)


METHODS: Registry[MethodInfo] = Registry("attribution method")


def attribute(
    lm: LoadedModel, queries: Sequence[Query], method: str = "ig", config: AttributionConfig | None = None
) -> Tensor:
    """Scores [n_queries, n_layers, n_neurons] for each query with the named method."""
    if not queries:
        raise LegibilityError("no queries to attribute")
    return METHODS[method].fn(lm, queries, config or AttributionConfig())


def attribute_prompts(
    lm: LoadedModel,
    prompts: Sequence[PromptQueries],
    method: str = "ig",
    config: AttributionConfig | None = None,
) -> Tensor:
    """Scores [n_prompts, n_layers, n_neurons]; a multi-token prompt gets the mean over its target tokens."""
    flat = [q for p in prompts for q in p.queries]
    scores = attribute(lm, flat, method, config)
    out, i = [], 0
    for p in prompts:
        k = len(p.queries)
        out.append(scores[i : i + k].mean(0))
        i += k
    return torch.stack(out)


def attribute_facts(
    lm: LoadedModel,
    facts: Sequence[Sequence[PromptQueries]],
    method: str = "ig",
    config: AttributionConfig | None = None,
) -> list[Tensor]:
    """Per fact, scores [n_prompts, n_layers, n_neurons] of its prompts, all facts in one call: the packed
    engine then fills its chunks with rows of many facts (what a GPU needs to be busy)."""
    flat = [p for prompts in facts for p in prompts]
    if not flat:
        raise LegibilityError("no prompts to attribute")
    scores = attribute_prompts(lm, flat, method, config)
    return list(scores.split([len(prompts) for prompts in facts]))
