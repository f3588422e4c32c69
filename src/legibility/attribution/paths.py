"""Integrated gradients of any objective of the answer logits, at any token position (hooks, exact).

For a query, a layer l and a site position t (the answer position by default), the activation a of layer l
at position t is replaced by alpha_k * a on the path, and

    attribution[l, i] = a_i * sum_k w_k * d objective / d a_i   evaluated at alpha_k * a

with the configured quadrature (left Riemann sum, alpha_k = k / m, w_k = 1 / m by default). The whole
prompt runs through the whole model for every path point: plain and general, not fast. Methods built on it
(:mod:`legibility.attribution.contrastive`, :mod:`legibility.attribution.subject`) differ only in the
objective and the position.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from legibility.attribution.base import AttributionConfig
from legibility.facts.types import Query
from legibility.forward import answer_logits, make_batch
from legibility.models.loading import LoadedModel

# logits [rows, vocab] at the answer position (float32) -> objective [rows]
Objective = Callable[[Tensor], Tensor]


def target_prob(query: Query) -> Objective:
    """p(target): the objective of plain integrated gradients."""
    return lambda logits: logits.softmax(-1)[:, query.target_id]


def _device(lm: LoadedModel) -> torch.device:
    return next(lm.model.parameters()).device


@torch.no_grad()
def site_activations(lm: LoadedModel, query: Query, position: int) -> Tensor:
    """Activations [n_layers, n_neurons] at ``position`` of the unmodified model."""
    batch = make_batch(lm, [query])
    with lm.sites.record() as store:
        answer_logits(lm, batch)
    return torch.stack([store[layer][0, position] for layer in range(lm.sites.n_layers)]).float()


def path_attribution(
    lm: LoadedModel, query: Query, objective: Objective, position: int, config: AttributionConfig
) -> Tensor:
    """Integrated gradients [n_layers, n_neurons] of ``objective`` for the neurons at ``position``."""
    device = _device(lm)
    alphas, weights = config.alphas().to(device), config.weights().to(device)
    acts = site_activations(lm, query, position).to(device)
    out = torch.zeros(lm.sites.n_layers, lm.sites.n_neurons, device=device)
    for layer in range(lm.sites.n_layers):
        path = alphas[:, None] * acts[layer][None, :]  # [steps, n_neurons]
        total = torch.zeros(lm.sites.n_neurons, device=device)
        for start in range(0, path.shape[0], config.batch_size):
            points = path[start : start + config.batch_size].clone().requires_grad_(True)  # [k, n_neurons]
            batch = make_batch(lm, [query] * points.shape[0])

            def replace(a: Tensor, points: Tensor = points) -> Tensor:
                a = a.clone()
                a[:, position] = points.to(a.dtype)
                return a

            with torch.enable_grad(), lm.sites.patch({layer: replace}):
                values = objective(answer_logits(lm, batch).float())
                (g,) = torch.autograd.grad(values.sum(), points)
            total += (weights[start : start + points.shape[0], None] * g).sum(0)
        out[layer] = acts[layer] * total
    return out.cpu()
