"""Locality cost (BIMT, Liu, Gan & Tegmark 2023): neurons placed in space, long connections cost more.

The FFN neurons of a layer and the residual dimensions are each placed evenly on the unit line (or, with
``layout="grid"``, on the unit square). An FFN weight between neuron i and residual dimension j costs
``|w_ij| * (distance(i, j) + gap)``; ``gap`` stands for the distance between the residual stream and the
FFN layer (BIMT's layer spacing) and makes the cost an L1 penalty plus a length term. The penalty is the
mean cost over all FFN weights. Optionally, every ``swap_every`` steps each layer's neurons are greedily
swapped when that lowers the cost: a swap permutes the neurons, which leaves the network's function
unchanged (the activation is applied per neuron, or symmetrically across them for SoLU) and moves the
optimizer state along with the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from legibility.training.model import ffn_weights, neuron_axes
from legibility.training.regularizers.base import Regularizer, RegularizerConfig, StepContext, register


def positions(n: int, layout: str, device: torch.device | str = "cpu") -> Tensor:
    """Coordinates [n, dims] of n points spread evenly over [0, 1] (line) or [0, 1]^2 (grid, row-major)."""
    if layout == "line":
        return (torch.arange(n, dtype=torch.float32, device=device) / max(n - 1, 1))[:, None]
    side = math.ceil(math.sqrt(n))
    idx = torch.arange(n, device=device)
    return torch.stack([idx // side, idx % side], 1).float() / max(side - 1, 1)


def distances(n_neurons: int, d_model: int, layout: str, device: torch.device | str = "cpu") -> Tensor:
    """Euclidean distance [n_neurons, d_model] between each neuron's and each residual dimension's place."""
    return torch.cdist(positions(n_neurons, layout, device), positions(d_model, layout, device))


def locality_cost(w_in: list[Tensor], w_out: Tensor, dist: Tensor, gap: float) -> Tensor:
    """Mean of |w| * (dist + gap) over input projections [neurons, d_model] and the output [d_model, neurons]."""
    weight = dist + gap
    total = sum((w.abs() * weight).sum() for w in w_in) + (w_out.abs() * weight.T).sum()
    return total / (dist.numel() * (len(w_in) + 1))  # type: ignore[return-value]


def neuron_costs(w_in: list[Tensor], w_out: Tensor, dist: Tensor) -> Tensor:
    """C [neurons, places]: cost of neuron i's weights if it sat at place p (the gap term is constant)."""
    mag = sum(w.abs() for w in w_in) + w_out.abs().T  # [neurons, d_model]
    return mag @ dist.T  # [neurons, places]


def greedy_swaps(cost: Tensor) -> Tensor:
    """A permutation perm (new place p holds old neuron perm[p]) from greedy improving pairwise swaps."""
    n = cost.shape[0]
    at = list(range(n))  # at[p] = neuron at place p
    places = torch.arange(n, device=cost.device)
    for p in range(n):
        i = at[p]
        # gain of exchanging the neurons at places p and q
        held = torch.tensor(at, device=cost.device)
        here = cost[i, p] + cost[held, places]
        there = cost[i, places] + cost[held, p]
        gain = here - there
        q = int(gain.argmax())
        if gain[q] > 1e-12 and q != p:
            at[p], at[q] = at[q], at[p]
    return torch.tensor(at, device=cost.device)


@torch.no_grad()
def permute_neurons(model: nn.Module, layer: int, perm: Tensor, optimizer=None) -> None:
    """Reorder a layer's FFN neurons (new neuron p = old neuron perm[p]), with their optimizer state."""
    for param, axis in neuron_axes(model, layer):
        param.copy_(param.index_select(axis, perm))
        if optimizer is not None:
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.copy_(value.index_select(axis, perm))


@dataclass(frozen=True)
class LocalityConfig(RegularizerConfig):
    """BIMT-style locality cost on FFN weights."""

    layout: Literal["line", "grid"] = "line"  # where neurons and residual dimensions are placed
    gap: float = 1.0  # distance between residual stream and FFN layer (the pure-L1 part of the cost)
    swap_every: int = 0  # steps between greedy neuron swaps (0: never)


@register("locality", LocalityConfig, "BIMT locality cost on FFN weights, optional neuron swaps")
class Locality(Regularizer[LocalityConfig]):
    def _dist(self, model: nn.Module, layer: int) -> Tensor:
        w_in, _ = ffn_weights(model, layer)
        n, d = w_in[0].shape
        return distances(n, d, self.config.layout, w_in[0].device)

    def penalty(self, ctx: StepContext) -> Tensor:
        costs = []
        for layer in range(ctx.sites.n_layers):
            w_in, w_out = ffn_weights(ctx.model, layer)
            costs.append(locality_cost(w_in, w_out, self._dist(ctx.model, layer), self.config.gap))
        return torch.stack(costs).mean()

    def after_step(self, ctx: StepContext, optimizer) -> None:
        every = self.config.swap_every
        if every <= 0 or (ctx.step + 1) % every:
            return
        with torch.no_grad():
            for layer in range(ctx.sites.n_layers):
                w_in, w_out = ffn_weights(ctx.model, layer)
                perm = greedy_swaps(neuron_costs(w_in, w_out, self._dist(ctx.model, layer)))
                permute_neurons(ctx.model, layer, perm, optimizer)
