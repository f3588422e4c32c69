"""Exact fast integrated gradients: the same scores as the reference with far less arithmetic.

Savings, all exact (see :mod:`legibility.attribution.engine` for the block-level mechanics):

* Causal LMs: changing the activation at the answer position (the last token) changes nothing at earlier
  positions, so the prompt prefix is run once and cached; every path point runs only the answer token
  against the cached keys/values.
* Layer ``l``'s path points change nothing below block ``l``: they run blocks ``l..L-1`` only, starting from
  the recorded clean input of block ``l`` (masked LMs: the whole sequence from block ``l`` up).
* The (layer, alpha) path points of all layers go through together as the rows of a batch, so one backward
  pass yields the gradients of every layer; logits only at the answer position; no parameter gradients.

* Many queries (paraphrases, facts; any lengths) are packed: one clean forward per pack, and chunks hold
  rows of every query of the pack. Chunk size comes from free device memory, capped by
  ``config.max_rows``. For a family missing from
the architecture table (or whose row says ``engine=False``) a generic path runs every row through the whole model (still
exact, prefix cached, but without the "blocks >= l" saving).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from legibility.attribution import engine
from legibility.attribution.base import METHODS, AttributionConfig, MethodInfo
from legibility.facts.types import Query
from legibility.forward import answer_logits, head_at, make_batch
from legibility.models.loading import LoadedModel


def matmul_precision(precision: str):
    """Context: float32 matmuls at ``precision`` ("highest": true float32, no TF32) for the duration."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        before = torch.get_float32_matmul_precision()
        cudnn = torch.backends.cudnn.allow_tf32
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = precision != "highest"
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
            torch.backends.cudnn.allow_tf32 = cudnn

    return ctx()


def path_gradients(
    lm: LoadedModel,
    queries: Sequence[Query],
    layers: Sequence[Sequence[int]],
    alphas: Tensor,
    config: AttributionConfig,
) -> list[tuple[Tensor, Tensor]]:
    """Per query q: (activations [n_layers, n_neurons], gradients [len(layers[q]), steps, n_neurons]) of
    p(target) at alpha_k * activation of each listed layer (that layer's own activation replaced).

    Queries are packed ``config.pack_queries`` at a time (one clean forward per pack); the (query, layer,
    alpha) rows of a pack go through in chunks sized from free device memory (at most ``config.max_rows``).
    """
    tail = engine.tail_for(lm)
    alphas = alphas.to(lm.device)
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(queries)
    with frozen_params(lm):
        if tail is None:  # generic fallback: one query at a time, every row through the whole model
            for qi, query in enumerate(queries):
                out[qi] = _generic_path_gradients(lm, query, sorted(layers[qi]), alphas, config.batch_size)
            return out  # type: ignore[return-value]
        # pack queries of the same mode, longest first (similar lengths share a pack: less padding)
        order = sorted(
            range(len(queries)), key=lambda i: (engine.is_cached(lm, queries[i]), -len(queries[i].input_ids))
        )
        groups: list[list[int]] = []
        for i in order:
            g = groups[-1] if groups else None
            same = g is not None and engine.is_cached(lm, queries[g[0]]) == engine.is_cached(lm, queries[i])
            if g is not None and same and len(g) < max(1, config.pack_queries):
                g.append(i)
            else:
                groups.append([i])
        for group in groups:
            for qi, result in zip(
                group,
                _pack_gradients(
                    lm, tail, [queries[i] for i in group], [sorted(layers[i]) for i in group], alphas, config
                ),
                strict=True,
            ):
                out[qi] = result
    return out  # type: ignore[return-value]


def _pack_gradients(
    lm: LoadedModel,
    tail: engine.Tail,
    queries: list[Query],
    layers: list[list[int]],
    alphas: Tensor,
    config: AttributionConfig,
) -> list[tuple[Tensor, Tensor]]:
    device, steps = lm.device, alphas.shape[0]
    pack = engine.clean_pack(lm, queries, skip=None if config.skip_to_site else False)
    # rows sorted by layer: (layer, query, alpha); row r of query q and layer l at alpha_k
    pairs = sorted((layer, q) for q in range(len(queries)) for layer in layers[q])
    row_layer = [layer for layer, _ in pairs for _ in range(steps)]
    row_query = torch.tensor([q for _, q in pairs], dtype=torch.long, device=device).repeat_interleave(steps)
    row_alpha = alphas.repeat(len(pairs))
    layer_t = torch.tensor(row_layer, dtype=torch.long, device=device)
    grads = torch.empty(len(row_layer), lm.sites.n_neurons, device=device)
    row_target = torch.tensor([q.target_id for q in queries], dtype=torch.long, device=device)[row_query]
    size = engine.chunk_rows(lm, pack, config.max_rows)
    start = 0
    while start < len(row_layer):
        sl = slice(start, start + size)
        try:
            points = row_alpha[sl, None] * pack.acts[row_query[sl], layer_t[sl]]  # [rows, n_neurons]
            points.requires_grad_(True)
            with torch.enable_grad():
                logits = engine.rows_logits(lm, tail, pack, row_layer[sl], points, row_query[sl])
                probs = logits.float().softmax(-1).gather(1, row_target[sl, None])[:, 0]
                (grads[sl],) = torch.autograd.grad(probs.sum(), points)
        except torch.cuda.OutOfMemoryError:
            # the memory estimate was too optimistic for this device: halve the chunk and go on
            if size == 1:
                raise
            size = max(1, size // 2)
            torch.cuda.empty_cache()
            continue
        start += size
    per_pair = grads.view(len(pairs), steps, -1)
    out = []
    for q in range(len(queries)):
        idx = [i for i, (_, pq) in enumerate(pairs) if pq == q]
        out.append((pack.acts[q], per_pair[idx]))
    return out


def layer_path_gradients(
    lm: LoadedModel, query: Query, layers: Sequence[int], alphas: Tensor, batch_size: int
) -> tuple[Tensor, Tensor]:
    """(activations [n_layers, n_neurons], gradients [len(layers), steps, n_neurons]) of one query, in
    chunks of ``batch_size`` rows."""
    cfg = AttributionConfig(steps=alphas.shape[0], batch_size=batch_size, max_rows=batch_size)
    return path_gradients(lm, [query], [list(layers)], alphas, cfg)[0]


def integrated_gradients_fast(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    """Exact integrated gradients of every query, packed across queries."""
    alphas, weights = config.alphas(lm.device), config.weights(lm.device)
    n_layers = lm.sites.n_layers
    out = torch.zeros(len(queries), n_layers, lm.sites.n_neurons, device=lm.device)
    with matmul_precision("highest"):
        results = path_gradients(lm, queries, [range(n_layers)] * len(queries), alphas, config)
    for qi, (acts, grads) in enumerate(results):
        out[qi] = acts * (grads * weights[None, :, None]).sum(1)
    return out


def integrated_gradients_per_query(
    lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig
) -> Tensor:
    """The engine as it was before packing (kept for side-by-side benchmarks): one query at a time,
    chunks of ``config.batch_size`` rows, every row running its whole block ``l``."""
    per_query = dataclasses.replace(config, pack_queries=1, max_rows=config.batch_size, skip_to_site=False)
    return integrated_gradients_fast(lm, queries, per_query)


# --- generic path for families without an engine tail -------------------------------------------------


def _generic_path_gradients(
    lm: LoadedModel, query: Query, layers: list[int], alphas: Tensor, batch_size: int
) -> tuple[Tensor, Tensor]:
    steps, device = alphas.shape[0], lm.device
    row_layer = torch.tensor(layers, device=device).repeat_interleave(steps)
    row_alpha = alphas.repeat(len(layers))
    grads = torch.empty(row_layer.shape[0], lm.sites.n_neurons, device=device)
    acts, cache = _prefix(lm, query)
    for start in range(0, row_layer.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        points = (row_alpha[sl, None] * acts[row_layer[sl]]).requires_grad_(True)  # [rows, n_neurons]
        with torch.enable_grad():
            logits = _generic_rows_logits(lm, query, cache, row_layer[sl], points)
            probs = logits.float().softmax(-1)[:, query.target_id]
            (grads[sl],) = torch.autograd.grad(probs.sum(), points)
    return acts, grads.view(len(layers), steps, -1)


def _prefix(lm: LoadedModel, query: Query):
    """(activations [n_layers, n_neurons] at the answer position, cache of the prefix or None)."""
    sites = lm.sites
    ids = torch.tensor([query.input_ids], device=lm.device)
    with torch.no_grad():
        if lm.kind == "causal" and query.answer_pos == len(query.input_ids) - 1 and len(query.input_ids) > 1:
            out = lm.model(input_ids=ids[:, :-1], use_cache=True)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            with sites.record() as store, head_at(lm, torch.zeros(1, dtype=torch.long, device=lm.device)):
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
            ids = torch.tensor([[query.input_ids[-1]]], device=lm.device).expand(n, 1)
            with head_at(lm, torch.zeros(n, dtype=torch.long, device=lm.device)):
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
        description="integrated gradients; queries packed, prefix cached, each layer's path points start at "
        "its site, all layers batched (exact; default)",
    )
)
METHODS.register("ig-per-query")(
    MethodInfo(
        integrated_gradients_per_query,
        exact=True,
        description="integrated gradients with the engine before packing: one query at a time, "
        "config.batch_size rows per chunk (exact; for benchmarks)",
    )
)
