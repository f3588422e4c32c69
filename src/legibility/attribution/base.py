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
    batch_size: int = 64  # rows per forward/backward pass (memory bound, not a numerical setting)
    nodes: int = 6  # Gauss-Legendre nodes of the approximate "ig-gauss" method (it ignores steps)
    candidates: int = 32  # neurons that grad x activation passes to exact IG in "ig-prefilter"

    def alphas(self) -> Tensor:
        if self.steps < 1:
            raise LegibilityError(f"steps must be >= 1, got {self.steps}")
        if self.quadrature == "left":
            return torch.arange(self.steps, dtype=torch.float32) / self.steps
        if self.quadrature == "endpoints":
            return torch.linspace(0.0, 1.0, self.steps)
        if self.quadrature == "gauss-legendre":
            return self._gauss()[0]
        raise LegibilityError(
            f"unknown quadrature {self.quadrature!r}; use 'left', 'endpoints' or 'gauss-legendre'"
        )

    def weights(self) -> Tensor:
        """Weight of each path point's gradient; attribution = activation * sum_i w_i grad_i."""
        if self.quadrature == "gauss-legendre":
            return self._gauss()[1]
        return torch.full((self.steps,), 1.0 / self.steps)

    def _gauss(self) -> tuple[Tensor, Tensor]:
        import numpy as np

        x, w = np.polynomial.legendre.leggauss(self.steps)  # on [-1, 1]
        return torch.tensor((x + 1) / 2, dtype=torch.float32), torch.tensor(w / 2, dtype=torch.float32)


# (lm, queries, config) -> scores [n_queries, n_layers, n_neurons]
Method = Callable[[LoadedModel, Sequence[Query], AttributionConfig], Tensor]


@dataclass(frozen=True)
class MethodInfo:
    fn: Method
    exact: bool  # True: gives the reference integrated-gradients scores (up to float error)
    description: str


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
