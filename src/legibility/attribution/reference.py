"""Reference integrated gradients: one layer at a time, the whole prompt through the whole model.

Plain and slow on purpose: it is what the fast engine is tested against. For each layer l and query, the
activation a at the answer position is replaced by alpha * a for every alpha on the path, and

    attribution[l, i] = a_i * sum_k w_k * d p(target) / d a_i  evaluated at alpha_k * a

(left Riemann sum with w_k = 1/m by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from legibility.attribution.base import METHODS, AttributionConfig, MethodInfo
from legibility.facts.types import Query
from legibility.forward import answer_logits, make_batch
from legibility.models.loading import LoadedModel


def _activations(lm: LoadedModel, query: Query) -> Tensor:
    """Activations [n_layers, n_neurons] at the answer position of the unmodified model."""
    batch = make_batch(lm, [query])
    with torch.no_grad(), lm.sites.record() as store:
        answer_logits(lm, batch)
    return torch.stack([store[layer][0, query.answer_pos] for layer in range(lm.sites.n_layers)]).float()


def _layer_gradients(lm: LoadedModel, query: Query, layer: int, path: Tensor, chunk: int) -> Tensor:
    """d p(target) / d activation at every path point [steps, n_neurons] for one layer."""
    grads = []
    for start in range(0, path.shape[0], chunk):
        points = path[start : start + chunk].clone().requires_grad_(True)  # [k, n_neurons]
        batch = make_batch(lm, [query] * points.shape[0])

        def replace(acts: Tensor, points: Tensor = points) -> Tensor:
            acts = acts.clone()
            acts[:, query.answer_pos] = points.to(acts.dtype)
            return acts

        with torch.enable_grad(), lm.sites.patch({layer: replace}):
            probs = answer_logits(lm, batch).float().softmax(-1)[:, query.target_id]
            (g,) = torch.autograd.grad(probs.sum(), points)
        grads.append(g)
    return torch.cat(grads)


def integrated_gradients_reference(
    lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig
) -> Tensor:
    alphas, weights = config.alphas(lm.device), config.weights(lm.device)
    out = torch.zeros(len(queries), lm.sites.n_layers, lm.sites.n_neurons, device=lm.device)
    for qi, query in enumerate(queries):
        acts = _activations(lm, query)
        for layer in range(lm.sites.n_layers):
            path = alphas[:, None] * acts[layer][None, :]  # [steps, n_neurons]
            grads = _layer_gradients(lm, query, layer, path, config.batch_size)
            out[qi, layer] = acts[layer] * (weights[:, None] * grads).sum(0)
    return out


METHODS.register("ig-reference")(
    MethodInfo(
        integrated_gradients_reference, exact=True, description="integrated gradients, one layer at a time"
    )
)
