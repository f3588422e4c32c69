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


def answer_path_attribution(
    lm: LoadedModel, query: Query, objective: Objective, config: AttributionConfig
) -> Tensor:
    """:func:`path_attribution` at the answer position, on the exact engine where the family has a tail.

    The engine (:mod:`legibility.attribution.engine`) runs each layer's path points through blocks >= l only
    (causal LMs: the answer token against the cached prefix) and returns differentiable logits, so any
    objective of them gets the speed of the default ``ig``. Families without a tail use the hooks.
    """
    from legibility.attribution import engine

    tail = engine.tail_for(lm)
    if tail is None:
        return path_attribution(lm, query, objective, query.answer_pos, config)
    alphas, weights = config.alphas(), config.weights()
    n_layers, steps = lm.sites.n_layers, alphas.shape[0]
    frozen = [p for p in lm.model.parameters() if p.requires_grad]
    for p in frozen:  # gradients w.r.t. activations only
        p.requires_grad_(False)
    try:
        pack = engine.clean_run(lm, query)  # a pack of this one query
        acts = pack.acts[0]  # [n_layers, n_neurons]
        row_layer = torch.arange(n_layers, device=acts.device).repeat_interleave(
            steps
        )  # row r = (layer r // steps, alpha r % steps)
        row_alpha = alphas.repeat(n_layers).to(acts.device)
        grads = torch.empty(row_layer.shape[0], lm.sites.n_neurons, device=acts.device)
        for start in range(0, row_layer.shape[0], config.batch_size):
            sl = slice(start, start + config.batch_size)
            points = (row_alpha[sl, None] * acts[row_layer[sl]]).requires_grad_(True)  # [rows, n_neurons]
            with torch.enable_grad():
                logits = engine.rows_logits(lm, tail, pack, row_layer[sl].tolist(), points)
                (grads[sl],) = torch.autograd.grad(objective(logits.float()).sum(), points)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    w = weights.to(grads.device)[None, :, None]
    return acts * (grads.view(n_layers, steps, -1) * w).sum(1)
