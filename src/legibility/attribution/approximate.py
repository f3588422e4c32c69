"""Approximate attribution methods (registered with ``exact=False``): cheaper, scores close to IG.

* ``ig-gauss``: integrated gradients with ``config.nodes`` Gauss-Legendre nodes instead of the m-point
  left Riemann sum (a different quadrature of the same integral, so not the paper's numbers).
* ``grad-x-act``: activation x gradient at the unmodified activation, all layers from one forward and one
  backward of the prompt (IG with a single path point at alpha = 1).
* ``ig-tf32`` / ``ig-bf16``: the exact engine with TF32 matmuls / under bfloat16 autocast: faster on GPUs,
  scores only close to float32 (the benchmark reports Spearman and refined-set Jaccard against ``ig``).
* ``ig-prefilter``: a cheap first stage (``config.prefilter``, a registered method: ``grad-x-act``, ``relp``,
  ``atp-mean``, ...) picks the ``config.candidates`` top neurons; exact IG runs only for the layers that hold
  them. Those layers get their exact IG scores (every neuron of the layer: the path scales
  the whole layer, so they come for free); the other layers get 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from legibility.attribution.base import METHODS, AttributionConfig, MethodInfo
from legibility.attribution.fast import (
    integrated_gradients_fast,
    matmul_precision,
    path_gradients,
)
from legibility.attribution.patching import answer_gradients
from legibility.errors import LegibilityError
from legibility.facts.types import Query, RenderedFact
from legibility.models.loading import LoadedModel


def ig_gauss(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    gauss = dataclasses.replace(config, quadrature="gauss-legendre", steps=config.nodes)
    return integrated_gradients_fast(lm, queries, gauss)


def grad_x_act(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    """activation * d p(target) / d activation [n_queries, n_layers, n_neurons] at the clean activation."""
    acts, grads = answer_gradients(lm, queries, config.batch_size)
    return acts * grads


def ig_prefilter(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    first = METHODS[config.prefilter]
    if first.fn is ig_prefilter:
        raise LegibilityError(
            "ig-prefilter cannot be its own first stage; choose a cheap method as prefilter"
        )
    coarse = first.fn(lm, queries, config)  # [n_queries, n_layers, n_neurons]
    alphas, weights = config.alphas(lm.device), config.weights(lm.device)
    out = torch.zeros_like(coarse)
    k = min(config.candidates, coarse[0].numel())
    layers = [
        sorted(set((coarse[qi].flatten().topk(k).indices // lm.sites.n_neurons).tolist()))
        for qi in range(len(queries))
    ]
    results = path_gradients(lm, queries, layers, alphas, config)
    for qi, (acts, grads) in enumerate(results):
        out[qi, layers[qi]] = acts[layers[qi]] * (grads * weights[None, :, None]).sum(1)
    return out


def _reduced(precision: str):
    """Exact IG run in reduced precision: TF32 matmuls, or bfloat16 autocast (approximate scores)."""

    def method(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
        alphas, weights = config.alphas(lm.device), config.weights(lm.device)
        n_layers = lm.sites.n_layers
        out = torch.zeros(len(queries), n_layers, lm.sites.n_neurons, device=lm.device)
        if precision == "tf32":
            ctx = matmul_precision("high")
        else:
            ctx = torch.autocast(lm.device.type, dtype=torch.bfloat16)  # type: ignore[assignment]
        with ctx:
            results = path_gradients(lm, queries, [range(n_layers)] * len(queries), alphas, config)
        for qi, (acts, grads) in enumerate(results):
            out[qi] = acts * (grads.float() * weights[None, :, None]).sum(1)
        return out

    return method


METHODS.register("ig-gauss")(
    MethodInfo(
        ig_gauss, exact=False, description="integrated gradients, Gauss-Legendre with config.nodes nodes"
    )
)
METHODS.register("grad-x-act")(
    MethodInfo(grad_x_act, exact=False, description="activation x gradient at the clean activation")
)


def _prepare_prefilter(
    lm: LoadedModel, facts: Sequence[RenderedFact], config: AttributionConfig
) -> list[RenderedFact]:
    """What the first stage needs (e.g. atp-mean's baseline prompts)."""
    prepare = METHODS[config.prefilter].prepare
    return list(facts) if prepare is None else prepare(lm, facts, config)


METHODS.register("ig-prefilter")(
    MethodInfo(
        ig_prefilter,
        exact=False,
        description="a cheap method (config.prefilter) picks config.candidates neurons; exact IG on the "
        "layers holding them, 0 elsewhere",
        prepare=_prepare_prefilter,
    )
)
METHODS.register("ig-tf32")(
    MethodInfo(
        _reduced("tf32"),
        exact=False,
        description="the ig engine with TF32 matmuls (CUDA Ampere+; float32 elsewhere, where it equals ig)",
    )
)
METHODS.register("ig-bf16")(
    MethodInfo(_reduced("bf16"), exact=False, description="the ig engine under bfloat16 autocast")
)
