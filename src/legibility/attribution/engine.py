"""Run path points through only the transformer blocks they can change.

Replacing the FFN activation of layer ``l`` at the answer position changes nothing below block ``l``. So
one clean forward records, for every block, the hidden state entering it and the arguments the HF model
passed to it (attention mask, rotary embeddings, cache, ...). A chunk of path points, sorted by layer, then
runs block by block: at block ``i`` the rows of layer ``i`` join the batch as copies of the recorded input
of block ``i`` (their activation at the site is replaced by the path point), and every row already in the
batch goes on. Each row thus runs blocks ``l..L-1`` only; one backward gives the gradients of every row.

* Causal LMs with the answer at the last token: the rows are that single token, attending to the cached
  keys/values of the prefix (computed once per query).
* Masked LMs (and one-token causal prompts): the rows are the whole sequence, from block ``l`` up.

We never re-implement a block: they are the HF modules, called with the arguments the model itself passed.
What runs after the last block (final norm, head, logit soft-capping) is in :data:`TAILS`, one small row
per family; a parity test pins it against the plain HF forward for every family.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from legibility.facts.types import Query
from legibility.forward import head_at, make_batch
from legibility.models.loading import LoadedModel
from legibility.models.sites import FAMILIES, get_path


@dataclass(frozen=True)
class Tail:
    """What turns the output of the last block into logits, for one family."""

    norm: str | None = (
        None  # causal: path from the model to the final norm (the head is the output embeddings)
    )
    head: str | None = None  # masked: path to the head module applied to the last hidden state
    softcap: bool = False  # logits = c * tanh(logits / c), c = config.final_logit_softcapping (Gemma 2/3)


# One row per family, read from the architecture table (legibility.models.sites.FAMILIES).
TAILS: dict[str, Tail] = {
    k: Tail(norm=a.final_norm, head=a.head, softcap=a.softcap) for k, a in FAMILIES.items()
}


def tail_for(lm: LoadedModel) -> Tail | None:
    """The family's tail, or None when the family is unknown (callers then use the generic path)."""
    return TAILS.get(str(getattr(lm.model.config, "model_type", "")))


def logits_from_hidden(lm: LoadedModel, tail: Tail, hidden: Tensor) -> Tensor:
    """Logits [rows, vocab] from the last block's output at the answer position [rows, d_model]."""
    model = lm.model
    x = hidden[:, None]  # [rows, 1, d_model]
    if tail.head is not None:
        logits = get_path(model, tail.head)(x)  # type: ignore[operator]
    else:
        if tail.norm is not None:
            x = get_path(model, tail.norm)(x)  # type: ignore[operator]
        logits = model.get_output_embeddings()(x)  # type: ignore[operator]
    if tail.softcap:
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
    return logits[:, 0]


@dataclass
class CleanRun:
    """What one unmodified forward of a query leaves for the path points."""

    acts: Tensor  # [n_layers, n_neurons] FFN activations at the answer position (float32)
    inputs: list[Tensor]  # per block: hidden state entering it [1, t, d_model] (t = 1 if cached, else T)
    calls: list[tuple[tuple, dict]]  # per block: the (args, kwargs) the model called it with
    cache: object | None  # the cache object the blocks were called with (cached mode)
    prefix: list[dict] | None  # per layer: the state of the prefix-only cache layer (cached mode)
    pos: int  # answer position within a row's sequence


def _is_cache(x: object) -> bool:
    return hasattr(x, "layers") and hasattr(x, "update") and hasattr(x, "get_seq_length")


@contextmanager
def _capture_blocks(blocks: nn.ModuleList) -> Iterator[list[tuple[tuple, dict]]]:
    calls: list[tuple[tuple, dict]] = [((), {})] * len(blocks)

    def capture(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[i] = (args, dict(kwargs))

        return hook

    handles = [b.register_forward_pre_hook(capture(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        yield calls
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


@torch.no_grad()
def clean_run(lm: LoadedModel, query: Query) -> CleanRun:
    """Run the query once, unmodified, recording block inputs/arguments and the answer activations."""
    sites, blocks = lm.sites, blocks_of(lm)
    ids = torch.tensor([query.input_ids])
    cached = lm.kind == "causal" and query.answer_pos == len(query.input_ids) - 1 and len(query.input_ids) > 1
    if cached:
        out = lm.model(input_ids=ids[:, :-1], use_cache=True)
        prefix_cache = out.cache if hasattr(out, "cache") else out.past_key_values
        cache = copy.deepcopy(prefix_cache)
        prefix = [dict(vars(layer)) for layer in prefix_cache.layers]
        with (
            sites.record() as store,
            _capture_blocks(blocks) as calls,
            head_at(lm, torch.zeros(1, dtype=torch.long)),
        ):
            lm.model(input_ids=ids[:, -1:], use_cache=True, **cache_kwarg(lm, cache))
        pos = 0
    else:
        batch = make_batch(lm, [query])
        kwargs = {"use_cache": False} if lm.kind == "causal" else {}
        with sites.record() as store, _capture_blocks(blocks) as calls, head_at(lm, batch.positions):
            lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
        cache, prefix, pos = None, None, query.answer_pos
    acts = torch.stack([store[layer][0, pos] for layer in range(sites.n_layers)]).float()
    inputs = [args[0] if args else kw["hidden_states"] for args, kw in calls]
    return CleanRun(acts, inputs, calls, cache, prefix, pos)


def _call_block(block: nn.Module, call: tuple[tuple, dict], hidden: Tensor, cache: object | None) -> Tensor:
    args, kwargs = call
    if args:
        args = (hidden, *(cache if _is_cache(a) else a for a in args[1:]))
    else:
        kwargs = {**kwargs, "hidden_states": hidden}
    kwargs = {k: (cache if _is_cache(v) else v) for k, v in kwargs.items()}
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _reset_cache_layer(run: CleanRun, layer: int, rows: int) -> None:
    """Make cache layer ``layer`` hold the prefix keys/values only, for ``rows`` rows (views, no copies)."""
    cache_layer = run.cache.layers[layer]  # type: ignore[union-attr, attr-defined]
    state = run.prefix[layer]  # type: ignore[index]
    vars(cache_layer).update(state)
    for name in ("keys", "values"):
        t = state.get(name)
        if isinstance(t, Tensor) and t.dim() == 4:
            setattr(cache_layer, name, t.expand(rows, -1, -1, -1))


def rows_logits(lm: LoadedModel, tail: Tail, run: CleanRun, layers: list[int], points: Tensor) -> Tensor:
    """Logits [rows, vocab] at the answer position when row r replaces the activation of ``layers[r]``
    (non-decreasing) at the answer position with ``points[r]`` [rows, n_neurons]; differentiable in points."""
    blocks = blocks_of(lm)
    counts = torch.bincount(torch.tensor(layers), minlength=lm.sites.n_layers).tolist()
    hidden: Tensor | None = None
    pos = run.pos
    for i in range(layers[0], len(blocks)):
        k = counts[i]
        start = 0 if hidden is None else hidden.shape[0]
        if k:
            new = run.inputs[i].expand(k, *run.inputs[i].shape[1:])
            hidden = new if hidden is None else torch.cat([hidden, new])
        assert hidden is not None
        if run.cache is not None:
            _reset_cache_layer(run, i, hidden.shape[0])
        fns = {}
        if k:

            def replace(acts: Tensor, start: int = start, k: int = k) -> Tensor:
                # acts [rows, t, n_neurons]; rows start..start+k begin at this layer
                acts = acts.clone()
                acts[start : start + k, pos] = points[start : start + k].to(acts.dtype)
                return acts

            fns[i] = replace
        with lm.sites.patch(fns):
            hidden = _call_block(blocks[i], run.calls[i], hidden, run.cache)
    assert hidden is not None
    return logits_from_hidden(lm, tail, hidden[:, pos])
