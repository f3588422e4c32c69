"""Approximate attribution methods (registered with ``exact=False``): cheaper, scores close to IG.

* ``ig-gauss``: integrated gradients with ``config.nodes`` Gauss-Legendre nodes instead of the m-point
  left Riemann sum (a different quadrature of the same integral, so not the paper's numbers).
* ``grad-x-act``: activation x gradient at the unmodified activation, all layers from one forward and one
  backward of the prompt (IG with a single path point at alpha = 1).
* ``ig-prefilter``: grad x activation picks the ``config.candidates`` top neurons; exact IG runs only for the
  layers that hold them. Those layers get their exact IG scores (every neuron of the layer: the path scales
  the whole layer, so they come for free); the other layers get 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from legibility.attribution import engine
from legibility.attribution.base import METHODS, AttributionConfig, MethodInfo
from legibility.attribution.fast import frozen_params, integrated_gradients_fast, layer_path_gradients
from legibility.facts.types import Query
from legibility.forward import answer_logits, make_batch
from legibility.models.loading import LoadedModel


def ig_gauss(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    gauss = dataclasses.replace(config, quadrature="gauss-legendre", steps=config.nodes)
    return integrated_gradients_fast(lm, queries, gauss)


def grad_x_act(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    """activation * d p(target) / d activation [n_queries, n_layers, n_neurons] at the clean activation."""
    with frozen_params(lm):
        return torch.cat(
            [
                _grad_x_act_batch(lm, queries[start : start + config.batch_size])
                for start in range(0, len(queries), config.batch_size)
            ]
        )


def _grad_x_act_batch(lm: LoadedModel, queries: Sequence[Query]) -> Tensor:
    n_layers = lm.sites.n_layers
    batch = make_batch(lm, queries)
    rows = torch.arange(batch.input_ids.shape[0])
    # A zero added at each layer's answer position: its gradient is the total derivative of p with respect
    # to that layer's activation (replacing the activation by a leaf would cut the paths through later
    # layers' answer-position activations).
    deltas = torch.zeros(len(rows), n_layers, lm.sites.n_neurons, requires_grad=True)
    acts: dict[int, Tensor] = {}

    def add(layer: int):
        def fn(a: Tensor) -> Tensor:  # a [batch, pos, n_neurons]
            acts[layer] = a[rows, batch.positions].detach().float()
            a = a.clone()
            a[rows, batch.positions] = a[rows, batch.positions] + deltas[:, layer].to(a.dtype)
            return a

        return fn

    with torch.enable_grad(), lm.sites.patch({layer: add(layer) for layer in range(n_layers)}):
        probs = answer_logits(lm, batch).float().softmax(-1)[rows, batch.targets]
        (g,) = torch.autograd.grad(probs.sum(), deltas)
    return torch.stack([acts[layer] for layer in range(n_layers)], 1) * g


def ig_prefilter(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    coarse = grad_x_act(lm, queries, config)  # [n_queries, n_layers, n_neurons]
    alphas, weights = config.alphas(), config.weights()
    out = torch.zeros_like(coarse)
    k = min(config.candidates, coarse[0].numel())
    for qi, query in enumerate(queries):
        top = coarse[qi].flatten().topk(k).indices
        layers = sorted(set((top // lm.sites.n_neurons).tolist()))
        run = engine.clean_run(lm, query) if engine.tail_for(lm) is not None else None
        acts, grads = layer_path_gradients(lm, query, layers, alphas, config.batch_size, run)
        out[qi, layers] = acts[layers] * (grads * weights[None, :, None]).sum(1)
    return out


METHODS.register("ig-gauss")(
    MethodInfo(
        ig_gauss, exact=False, description="integrated gradients, Gauss-Legendre with config.nodes nodes"
    )
)
METHODS.register("grad-x-act")(
    MethodInfo(grad_x_act, exact=False, description="activation x gradient at the clean activation")
)
METHODS.register("ig-prefilter")(
    MethodInfo(
        ig_prefilter,
        exact=False,
        description="grad x activation picks config.candidates neurons; exact IG on the layers holding them, "
        "0 elsewhere",
    )
)
