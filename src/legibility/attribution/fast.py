"""Exact fast integrated gradients: the same scores as the reference with far less arithmetic.

Savings, all exact (see :mod:`legibility.attribution.engine` for the block-level mechanics):

* Causal LMs: changing the activation at the answer position (the last token) changes nothing at earlier
  positions, so the prompt prefix is run once and cached; every path point runs only the answer token
  against the cached keys/values.
* Layer ``l``'s path points change nothing below block ``l``: they run blocks ``l..L-1`` only, starting from
  the recorded clean input of block ``l`` (masked LMs: the whole sequence from block ``l`` up).
* The (layer, alpha) path points of all layers go through together as the rows of a batch, so one backward
  pass yields the gradients of every layer; logits only at the answer position; no parameter gradients.

Rows are processed in chunks of ``config.batch_size`` to bound memory. For a family missing from
:data:`legibility.attribution.engine.TAILS` a generic path runs every row through the whole model (still
exact, prefix cached, but without the "blocks >= l" saving).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from legibility.attribution import engine
from legibility.attribution.base import METHODS, AttributionConfig, MethodInfo
from legibility.facts.types import Query
from legibility.forward import answer_logits, head_at, make_batch
from legibility.models.loading import LoadedModel


def layer_path_gradients(
    lm: LoadedModel,
    query: Query,
    layers: Sequence[int],
    alphas: Tensor,
    batch_size: int,
    run: engine.CleanRun | None = None,
) -> tuple[Tensor, Tensor]:
    """(activations [n_layers, n_neurons], gradients [len(layers), steps, n_neurons]) of p(target) at
    alpha_k * activation of each listed layer (the layer's own activation replaced, others untouched)."""
    tail = engine.tail_for(lm)
    steps = alphas.shape[0]
    layers = sorted(layers)
    row_layer = torch.tensor(layers).repeat_interleave(
        steps
    )  # row r = (layers[r // steps], alphas[r % steps])
    row_alpha = alphas.repeat(len(layers))
    grads = torch.empty(row_layer.shape[0], lm.sites.n_neurons)
    with frozen_params(lm):
        if tail is None:
            acts, cache = _prefix(lm, query)
        else:
            run = run or engine.clean_run(lm, query)
            acts = run.acts
        for start in range(0, row_layer.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            points = (row_alpha[sl, None] * acts[row_layer[sl]]).requires_grad_(True)  # [rows, n_neurons]
            with torch.enable_grad():
                if tail is None:
                    logits = _generic_rows_logits(lm, query, cache, row_layer[sl], points)
                else:
                    logits = engine.rows_logits(lm, tail, run, row_layer[sl].tolist(), points)  # type: ignore[arg-type]
                probs = logits.float().softmax(-1)[:, query.target_id]
                (grads[sl],) = torch.autograd.grad(probs.sum(), points)
    return acts, grads.view(len(layers), steps, -1)


def integrated_gradients_fast(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    alphas, weights = config.alphas(), config.weights()
    n_layers = lm.sites.n_layers
    out = torch.zeros(len(queries), n_layers, lm.sites.n_neurons)
    for qi, query in enumerate(queries):
        acts, grads = layer_path_gradients(lm, query, range(n_layers), alphas, config.batch_size)
        out[qi] = acts * (grads * weights[None, :, None]).sum(1)
    return out


# --- generic path for families without an engine tail -------------------------------------------------


def _prefix(lm: LoadedModel, query: Query):
    """(activations [n_layers, n_neurons] at the answer position, cache of the prefix or None)."""
    sites = lm.sites
    ids = torch.tensor([query.input_ids])
    with torch.no_grad():
        if lm.kind == "causal" and query.answer_pos == len(query.input_ids) - 1 and len(query.input_ids) > 1:
            out = lm.model(input_ids=ids[:, :-1], use_cache=True)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            with sites.record() as store, head_at(lm, torch.zeros(1, dtype=torch.long)):
                lm.model(
                    input_ids=ids[:, -1:], use_cache=True, **engine.cache_kwarg(lm, copy.deepcopy(cache))
                )
            acts = torch.stack([store[layer][0, 0] for layer in range(sites.n_layers)])
            return acts.float(), cache
        batch = make_batch(lm, [query])
        with sites.record() as store:
            answer_logits(lm, batch)
        acts = torch.stack([store[layer][0, query.answer_pos] for layer in range(sites.n_layers)])
        return acts.float(), None


def _generic_rows_logits(lm: LoadedModel, query: Query, cache, layers: Tensor, points: Tensor) -> Tensor:
    """Logits [rows, vocab], every row through the whole model, row r patched at its own layer."""
    n = points.shape[0]
    pos = 0 if cache is not None else query.answer_pos
    fns = {}
    for layer in layers.unique().tolist():
        rows = (layers == layer).nonzero()[:, 0]

        def replace(acts: Tensor, rows: Tensor = rows) -> Tensor:
            acts = acts.clone()
            acts[rows, pos] = points[rows].to(acts.dtype)
            return acts

        fns[layer] = replace
    with lm.sites.patch(fns):
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(n)
            ids = torch.tensor([[query.input_ids[-1]]]).expand(n, 1)
            with head_at(lm, torch.zeros(n, dtype=torch.long)):
                return lm.model(input_ids=ids, use_cache=True, **engine.cache_kwarg(lm, past)).logits[:, 0]
        return answer_logits(lm, make_batch(lm, [query] * n))


class frozen_params:
    """Turn off parameter gradients for the duration (we only need gradients w.r.t. activations)."""

    def __init__(self, lm: LoadedModel):
        self.params = [p for p in lm.model.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p in self.params:
            p.requires_grad_(True)


METHODS.register("ig")(
    MethodInfo(
        integrated_gradients_fast,
        exact=True,
        description="integrated gradients; prefix cached, each layer's path points run blocks >= l only, "
        "all layers batched (exact; default)",
    )
)
