"""Run path points through only the transformer blocks they can change, many queries at once.

Replacing the FFN activation of layer ``l`` at the answer position changes nothing below block ``l``. So
one clean forward of a *pack* of queries (padded; HF builds the masks and positions) records, for every
block, the hidden state entering it, the arguments the HF model passed to it (attention mask, rotary
embeddings, cache, ...), and where the FFN output joins the residual stream. A chunk of path-point rows,
each a (query, layer, alpha) of any query of the pack, sorted by layer, then runs block by block: the
rows of layer ``i`` join the batch at block ``i`` and every row already in the batch goes on; each row
gets its own query's arguments (gathered along the batch dimension). One backward gives the gradients of
every row of the chunk.

* Causal LMs with the answer at the last token: the rows are that single token, attending to the cached
  keys/values of its own query's prefix (computed once per pack, left-padded, pad slots masked).
* Masked LMs (and one-token causal prompts): the rows are the whole (right-padded) sequence.
* Rows start at the site: for families whose FFN output is added to the residual stream (the table's
  ``Architecture.ffn_residual``), a row of layer ``l`` never runs the part of block ``l`` before the site (attention, norm,
  up-projection): its block-``l`` output is the recorded residual plus the output projection of its path
  point.

We never re-implement a block: they are the HF modules, called with the arguments the model itself passed.
What runs after the last block (final norm, head, logit soft-capping) and where rows start are read from
the family's row of the architecture table (:data:`legibility.models.sites.FAMILIES`), nothing re-declared
here; a parity test pins it against the plain HF forward for every family.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from legibility.devices import free_memory
from legibility.facts.types import Query
from legibility.forward import head_at, make_batch
from legibility.models.loading import LoadedModel
from legibility.models.sites import ARCHITECTURES, Architecture, architecture, get_path

Tail = Architecture  # what runs after the last block, and where rows start: the family's table row


def tail_for(lm: LoadedModel) -> Architecture | None:
    """The family's row of the architecture table, or None when the engine cannot run the family (not in
    the table, or its row says ``engine=False``): callers then take the generic path."""
    row = architecture(getattr(lm.model.config, "model_type", ""))
    return row if row is not None and row.engine else None


def logits_from_hidden(lm: LoadedModel, tail: Tail, hidden: Tensor) -> Tensor:
    """Logits [rows, vocab] from the last block's output at the answer position [rows, d_model]."""
    model = lm.model
    x = hidden[:, None]  # [rows, 1, d_model]
    if tail.head is not None:
        logits = get_path(model, tail.head)(x)  # type: ignore[operator]
    else:
        if tail.final_norm is not None:
            x = get_path(model, tail.final_norm)(x)  # type: ignore[operator]
        logits = model.get_output_embeddings()(x)  # type: ignore[operator]
    if tail.softcap:
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
    return logits[:, 0]


@dataclass
class Pack:
    """What one unmodified forward of a pack of ``Q`` queries leaves for their path points."""

    queries: list[Query]
    acts: Tensor  # [Q, n_layers, n_neurons] FFN activations at the answer positions (float32)
    inputs: list[Tensor]  # per block: hidden state entering it [Q, t, d_model] (t = 1 if cached, else T)
    calls: list[tuple[tuple, dict]]  # per block: the (args, kwargs) the model called it with (batch Q)
    residual: list[Tensor] | None  # per block: the residual stream the FFN output joins [Q, t, d_model]
    outputs: list[Tensor] | None  # per block: its clean output [Q, t, d_model] (with ``residual``)
    cache: object | None  # the cache object the blocks were called with (cached mode)
    prefix: list[dict] | None  # per layer: the state of the prefix-only cache layer (cached mode)
    pos: Tensor  # [Q] answer position within a row's sequence (0 in cached mode)

    @property
    def width(self) -> int:
        """Tokens a row attends to (cached: prefix + answer token; else the padded sequence)."""
        if self.cache is not None and self.prefix is not None:
            keys = self.prefix[0].get("keys")
            return (keys.shape[-2] if isinstance(keys, Tensor) else 0) + 1
        return self.inputs[0].shape[1]


def is_cached(lm: LoadedModel, query: Query) -> bool:
    """Causal LM, answer at the last token, a prefix to cache: the rows are that token alone."""
    return lm.kind == "causal" and query.answer_pos == len(query.input_ids) - 1 and len(query.input_ids) > 1


def _is_cache(x: object) -> bool:
    return hasattr(x, "layers") and hasattr(x, "update") and hasattr(x, "get_seq_length")


@contextmanager
def _capture_blocks(blocks: nn.ModuleList, tail: Tail | None) -> Iterator[dict[str, list]]:
    n = len(blocks)
    rec: dict[str, list] = {"calls": [((), {})] * n, "residual": [None] * n, "outputs": [None] * n}

    def capture(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            rec["calls"][i] = (args, dict(kwargs))

        return hook

    def output(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            rec["outputs"][i] = out[0] if isinstance(out, tuple) else out

        return hook

    def residual(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            rec["residual"][i] = args[0] if args else kwargs["hidden_states"]

        return hook

    handles = [b.register_forward_pre_hook(capture(i), with_kwargs=True) for i, b in enumerate(blocks)]
    if tail is not None and tail.ffn_residual is not None:
        handles += [b.register_forward_hook(output(i)) for i, b in enumerate(blocks)]
        handles += [
            get_path(b, tail.ffn_residual).register_forward_pre_hook(residual(i), with_kwargs=True)  # type: ignore[attr-defined]
            for i, b in enumerate(blocks)
        ]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def blocks_of(lm: LoadedModel) -> nn.ModuleList:
    return get_path(lm.model, lm.sites.spec.layers)  # type: ignore[return-value]


def cache_kwarg(lm: LoadedModel, cache: object) -> dict:
    # transformers renamed past_key_values to cache (5.x); accept both spellings.
    import inspect

    params = inspect.signature(lm.model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def skips_to_site(lm: LoadedModel, tail: Tail | None) -> bool:
    """Whether rows may start at the site: the family's FFN output joins the residual stream directly and
    the sites are the standard ones (input of the output projection)."""
    model_type = str(getattr(lm.model.config, "model_type", ""))
    return (
        tail is not None
        and tail.ffn_residual is not None
        and lm.sites.spec == ARCHITECTURES.get(model_type)
        and lm.sites.spec.io == "input"
    )


def _pad_id(lm: LoadedModel) -> int:
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    return 0 if pad is None else int(pad)


@torch.no_grad()
def clean_pack(lm: LoadedModel, queries: Sequence[Query], skip: bool | None = None) -> Pack:
    """Run the queries once, unmodified and together, recording what their path points need.

    All queries must be of one mode (:func:`is_cached` for all or for none); lengths may differ.
    """
    sites, blocks, device = lm.sites, blocks_of(lm), lm.device
    tail = tail_for(lm)
    skip = skips_to_site(lm, tail) if skip is None else skip
    queries = list(queries)
    cached = is_cached(lm, queries[0])
    if any(is_cached(lm, q) != cached for q in queries):
        raise ValueError("a pack holds only cached or only uncached queries")
    if cached:
        # Left-pad the prefixes: every answer token is then the next position, and HF builds the padding
        # masks itself; explicit position ids keep each query's own positions.
        width = max(len(q.input_ids) for q in queries) - 1
        pads = [width - (len(q.input_ids) - 1) for q in queries]
        ids = torch.tensor(
            [[_pad_id(lm)] * p + list(q.input_ids[:-1]) for p, q in zip(pads, queries, strict=True)],
            dtype=torch.long,
            device=device,
        )
        mask = torch.tensor(
            [[0] * p + [1] * (width - p) for p in pads], dtype=torch.long, device=device
        )  # [Q, P]
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        prefix_cache = out.cache if hasattr(out, "cache") else out.past_key_values
        if min(pads) < max(pads):
            _zero_pad_slots(prefix_cache, mask)
        cache = copy.deepcopy(prefix_cache)
        prefix = [dict(vars(layer)) for layer in prefix_cache.layers]
        last = torch.tensor([[q.input_ids[-1]] for q in queries], dtype=torch.long, device=device)
        full_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        last_pos = torch.tensor(
            [[len(q.input_ids) - 1] for q in queries], dtype=torch.long, device=device
        )  # [Q, 1]
        zeros = torch.zeros(len(queries), dtype=torch.long, device=device)
        with (
            sites.record() as store,
            _capture_blocks(blocks, tail if skip else None) as rec,
            head_at(lm, zeros),
        ):
            lm.model(
                input_ids=last,
                attention_mask=full_mask,
                position_ids=last_pos,
                use_cache=True,
                **cache_kwarg(lm, cache),
            )
        pos = zeros
    else:
        batch = make_batch(lm, queries)
        kwargs = {"use_cache": False} if lm.kind == "causal" else {}
        with (
            sites.record() as store,
            _capture_blocks(blocks, tail if skip else None) as rec,
            head_at(lm, batch.positions),
        ):
            lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
        cache, prefix, pos = None, None, batch.positions
    rows = torch.arange(len(queries), device=device)
    acts = torch.stack([store[layer][rows, pos] for layer in range(sites.n_layers)], 1).float()
    calls = rec["calls"]
    inputs = [args[0] if args else kw["hidden_states"] for args, kw in calls]
    residual = rec["residual"] if skip else None
    outputs = rec["outputs"] if skip else None
    return Pack(queries, acts, inputs, calls, residual, outputs, cache, prefix, pos)


def _zero_pad_slots(cache: object, mask: Tensor) -> None:
    """Zero the cached keys/values of padding positions: they are masked out, but a NaN there (a fully
    masked padding row) would still turn 0 * NaN into NaN in the attention output."""
    pad = (mask == 0)[:, None, :, None]  # [Q, 1, P, 1]
    for layer in cache.layers:  # type: ignore[attr-defined]
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, Tensor) and t.dim() == 4 and t.shape[-2] == pad.shape[2]:
                setattr(layer, name, t.masked_fill(pad, 0.0))


def clean_run(lm: LoadedModel, query: Query) -> Pack:
    """The pack of a single query."""
    return clean_pack(lm, [query])


def _take(x: object, rq: Tensor, n_queries: int) -> object:
    """Per-row copy of a recorded block argument: a tensor with the pack's batch dimension first (or 1)
    is gathered by each row's query; tuples/lists recurse; anything else passes through."""
    if isinstance(x, Tensor) and x.dim() >= 2:
        if x.shape[0] == 1:
            return x.expand(rq.shape[0], *x.shape[1:])
        if x.shape[0] == n_queries:
            return x.index_select(0, rq)
        return x
    if isinstance(x, tuple | list) and any(isinstance(v, Tensor) for v in x):
        return type(x)(_take(v, rq, n_queries) for v in x)
    return x


def _call_block(
    block: nn.Module, call: tuple[tuple, dict], hidden: Tensor, cache: object | None, rq: Tensor, n: int
) -> Tensor:
    args, kwargs = call
    if args:
        args = (hidden, *(cache if _is_cache(a) else _take(a, rq, n) for a in args[1:]))
    else:
        kwargs = {**kwargs, "hidden_states": hidden}
    kwargs = {
        k: (v if k == "hidden_states" else cache if _is_cache(v) else _take(v, rq, n))
        for k, v in kwargs.items()
    }
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _reset_cache_layer(pack: Pack, layer: int, rq: Tensor) -> None:
    """Make cache layer ``layer`` hold, for each row, its own query's prefix keys/values only."""
    cache_layer = pack.cache.layers[layer]  # type: ignore[union-attr, attr-defined]
    state = pack.prefix[layer]  # type: ignore[index]
    vars(cache_layer).update(state)
    n = len(pack.queries)
    for name in ("keys", "values"):
        t = state.get(name)
        if isinstance(t, Tensor) and t.dim() == 4:
            setattr(cache_layer, name, t.expand(rq.shape[0], -1, -1, -1) if n == 1 else t.index_select(0, rq))


def _start_at_site(lm: LoadedModel, tail: Tail, pack: Pack, layer: int, rq: Tensor, points: Tensor) -> Tensor:
    """Block ``layer``'s output [k, t, d_model] for rows whose site activation there is ``points`` [k, N]:
    the recorded residual plus the output projection of the point (the rest of the sequence is clean)."""
    block = blocks_of(lm)[layer]
    proj = lm.sites.modules[layer]
    y = proj(points.to(pack.inputs[layer].dtype)[:, None])  # [k, 1, d_model]
    if tail.ffn_post is not None:
        y = get_path(block, tail.ffn_post)(y)  # type: ignore[operator]
    pos = pack.pos[rq]
    rows = torch.arange(rq.shape[0], device=rq.device)
    residual = pack.residual[layer].index_select(0, rq)[rows, pos]  # type: ignore[index]
    out = pack.outputs[layer].index_select(0, rq).clone()  # type: ignore[index]
    out[rows, pos] = residual + y[:, 0]
    return out


def rows_logits(
    lm: LoadedModel,
    tail: Tail,
    pack: Pack,
    layers: list[int],
    points: Tensor,
    row_query: Tensor | None = None,
) -> Tensor:
    """Logits [rows, vocab] at the answer position when row r (of query ``row_query[r]``, default 0)
    replaces the activation of ``layers[r]`` (non-decreasing) at the answer position with ``points[r]``
    [rows, n_neurons]; differentiable in points."""
    blocks = blocks_of(lm)
    device = points.device
    n = len(pack.queries)
    rq_all = row_query if row_query is not None else torch.zeros(len(layers), dtype=torch.long, device=device)
    counts = [0] * lm.sites.n_layers
    for layer in layers:
        counts[layer] += 1
    skip = pack.residual is not None
    hidden: Tensor | None = None
    rq = rq_all[:0]
    offset = 0
    for i in range(layers[0], len(blocks)):
        k = counts[i]
        new_rq, new_points = rq_all[offset : offset + k], points[offset : offset + k]
        offset += k
        start = 0 if hidden is None else hidden.shape[0]
        if k and not skip:
            new = pack.inputs[i].index_select(0, new_rq) if n > 1 else pack.inputs[i].expand(k, -1, -1)
            hidden = new if hidden is None else torch.cat([hidden, new])
            rq = torch.cat([rq, new_rq])
        if hidden is not None:
            if pack.cache is not None:
                _reset_cache_layer(pack, i, rq)
            fns = {}
            if k and not skip:
                pos = pack.pos[new_rq]
                rows = torch.arange(start, start + k, device=device)

                def replace(
                    acts: Tensor, rows: Tensor = rows, pos: Tensor = pos, p: Tensor = new_points
                ) -> Tensor:
                    # acts [rows, t, n_neurons]; rows start..start+k begin at this layer
                    acts = acts.clone()
                    acts[rows, pos] = p.to(acts.dtype)
                    return acts

                fns[i] = replace
            with lm.sites.patch(fns):
                hidden = _call_block(blocks[i], pack.calls[i], hidden, pack.cache, rq, n)
        if k and skip:
            new = _start_at_site(lm, tail, pack, i, new_rq, new_points)
            hidden = new if hidden is None else torch.cat([hidden, new])
            rq = torch.cat([rq, new_rq])
    assert hidden is not None
    rows = torch.arange(hidden.shape[0], device=device)
    return logits_from_hidden(lm, tail, hidden[rows, pack.pos[rq]])


def row_bytes(lm: LoadedModel, width: int, cached: bool) -> int:
    """Rough bytes one (layer, alpha) row keeps for its backward, for a row that runs every block: what
    sizes a chunk from free memory (an over-estimate: most rows run fewer blocks)."""
    cfg = lm.model.config
    vocab, d = lm.model.get_output_embeddings().weight.shape  # type: ignore[operator]
    heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 1)
    t = 1 if cached else width
    elem = max(torch.finfo(lm.dtype).bits // 8, 2)
    # ~2x what a SmolLM2 chunk kept on the CPU (0.71 MB per row measured, rows averaging 15.5 of 30
    # blocks; the estimate assumes all 30): safe for the CUDA allocator, which is also caught on overflow
    per_block = t * (10 * d + 5 * lm.sites.n_neurons) + 2 * width * d + 3 * heads * t * width
    return elem * lm.sites.n_layers * per_block + 4 * 4 * vocab


def chunk_rows(lm: LoadedModel, pack: Pack, cap: int | None, budget_share: float = 0.5) -> int:
    """Rows per forward/backward chunk: as many as half the free device memory holds (a fixed 2 GiB on
    CPU), at most ``cap``."""
    per_row = row_bytes(lm, pack.width, pack.cache is not None)
    rows = max(1, int(budget_share * free_memory(lm.device)) // per_row)
    return min(rows, cap) if cap is not None else rows
