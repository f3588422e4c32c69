"""Batched forward passes that read the target probability at each query's answer position."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from legibility.facts.types import Query
from legibility.models.loading import LoadedModel


@dataclass
class Batch:
    input_ids: Tensor  # [batch, pos], right-padded
    attention_mask: Tensor  # [batch, pos]
    positions: Tensor  # [batch] answer position of each row
    targets: Tensor  # [batch] target token id of each row


def make_batch(lm: LoadedModel, queries: Sequence[Query]) -> Batch:
    """Right-padded batch of the queries, on the model's device."""
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    width = max(len(q.input_ids) for q in queries)
    rows = [list(q.input_ids) + [pad] * (width - len(q.input_ids)) for q in queries]
    masks = [[1] * len(q.input_ids) + [0] * (width - len(q.input_ids)) for q in queries]
    device = lm.device
    return Batch(
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(masks, dtype=torch.long, device=device),
        torch.tensor([q.answer_pos for q in queries], dtype=torch.long, device=device),
        torch.tensor([q.target_id for q in queries], dtype=torch.long, device=device),
    )


def prompt_batch(lm: LoadedModel, texts: Sequence[str]) -> Batch:
    """Right-padded batch of plain texts, read at each text's last token (targets are not set: 0)."""
    queries = []
    for text in texts:
        ids = lm.encode(text)
        queries.append(Query(tuple(ids), len(ids) - 1, 0))
    return make_batch(lm, queries)


@contextlib.contextmanager
def head_at(lm: LoadedModel, positions: Tensor) -> Iterator[None]:
    """Make the LM head compute logits only at ``positions[b]`` of each row: logits come out [batch, 1, vocab].

    Saves the vocabulary projection at every other position (a large share of a small model's work).
    """
    head = lm.model.get_output_embeddings()  # type: ignore[operator]

    def hook(module, args):
        hidden = args[0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return (hidden[rows, positions.to(hidden.device)].unsqueeze(1), *args[1:])

    handle = head.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def answer_logits(lm: LoadedModel, batch: Batch) -> Tensor:
    """Logits [batch, vocab] at each row's answer position (runs the model once, grads as the caller sets)."""
    with head_at(lm, batch.positions):
        out = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits[:, 0]


@dataclass
class Prediction:
    prob: Tensor  # [n] p(target) at the answer position
    rank: Tensor  # [n] rank of the target (0 = argmax)
    top: Tensor  # [n] argmax token id


def length_batches(queries: Sequence[Query], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``queries`` in batches of similar length (shortest first), so little of a batch is padding.

    A right-padded row's answer does not depend on its neighbours' lengths (the causal mask hides the pads),
    so batching by length changes only float rounding; the known-fact scan over PARAREL's short, uneven
    prompts runs 1.3x faster for it on a CPU (``bench/known_scan.py``). Callers put each row's result back at
    its index.
    """
    order = sorted(range(len(queries)), key=lambda i: len(queries[i].input_ids))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def predict(lm: LoadedModel, queries: Sequence[Query], batch_size: int = 64) -> Prediction:
    """p(target), its rank and the argmax for every query, under whatever interventions are active."""
    n = len(queries)
    probs = torch.zeros(n, device=lm.device)
    ranks = torch.zeros(n, dtype=torch.long, device=lm.device)
    tops = torch.zeros(n, dtype=torch.long, device=lm.device)
    for idx in length_batches(queries, batch_size):
        batch = make_batch(lm, [queries[i] for i in idx])
        logits = answer_logits(lm, batch).float()
        p = logits.softmax(-1)
        target_p = p.gather(1, batch.targets[:, None])[:, 0]
        rows = torch.tensor(idx, dtype=torch.long, device=lm.device)
        probs[rows] = target_p
        ranks[rows] = (p > target_p[:, None]).sum(-1)
        tops[rows] = p.argmax(-1)
    return Prediction(probs, ranks, tops)


@torch.no_grad()
def answer_activations(lm: LoadedModel, queries: Sequence[Query], batch_size: int = 64) -> Tensor:
    """FFN activations [n_queries, n_layers, n_neurons] at each query's answer position."""
    out = torch.zeros(len(queries), lm.sites.n_layers, lm.sites.n_neurons, device=lm.device)
    for idx in length_batches(queries, batch_size):
        batch = make_batch(lm, [queries[i] for i in idx])
        with lm.sites.record() as store:
            answer_logits(lm, batch)
        rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
        acts = torch.stack([store[layer][rows, batch.positions] for layer in range(lm.sites.n_layers)], 1)
        out[torch.tensor(idx, dtype=torch.long, device=lm.device)] = acts.float()
    return out
