"""Erase a relation by overwriting the value vectors of its most shared knowledge neurons (Dai et al., 2022,
section 5.2): the ``top`` neurons that are knowledge neurons of the most facts of the relation get a zero
value vector (``mode="zero"``) or the word embedding of the unknown token (``mode="unk"``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from legibility.editing.values import Embedding, Neuron, ValueEdit, token_embedding, value_matrix
from legibility.errors import LegibilityError
from legibility.models.loading import LoadedModel

EraseMode = Literal["zero", "unk"]


@dataclass(frozen=True)
class EraseConfig:
    """Which neurons a relation erase overwrites, and with what."""

    top: int = 20  # N: erase the relation's N most shared knowledge neurons
    mode: EraseMode = "zero"  # "zero": value vector <- 0; "unk": value vector <- E[unknown token]
    embedding: Embedding = "input"  # where E[unk] comes from (mode "unk" only)


def top_shared(relation_neurons: Sequence[Sequence[Neuron]], top: int) -> list[tuple[Neuron, int]]:
    """The ``top`` neurons in the most facts' knowledge-neuron sets, with their fact counts (ties by index)."""
    counts = Counter(tuple(n) for s in relation_neurons for n in {tuple(m) for m in s})
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(n, c) for n, c in ranked[:top]]  # type: ignore[misc]


def erase_vector(lm: LoadedModel, mode: EraseMode, embedding: Embedding = "input") -> torch.Tensor:
    """The value vector [d_model] an erased neuron gets."""
    d_model = value_matrix(lm, 0).shape[1]
    if mode == "zero":
        return torch.zeros(d_model, device=lm.device)
    if mode == "unk":
        unk = getattr(lm.tokenizer, "unk_token_id", None)
        if unk is None:
            raise LegibilityError("the tokenizer has no unknown token; erase with mode='zero'")
        return token_embedding(lm, int(unk), embedding)
    raise LegibilityError(f"unknown erase mode {mode!r}; use 'zero' or 'unk'")


def relation_erase(
    lm: LoadedModel, relation_neurons: Sequence[Sequence[Neuron]], config: EraseConfig | None = None
) -> ValueEdit:
    """The edit that erases a relation, from the knowledge neurons of its facts (one set per fact)."""
    cfg = config or EraseConfig()
    shared = top_shared(relation_neurons, cfg.top)
    if not shared:
        raise LegibilityError("the relation's facts have no knowledge neurons, so there is nothing to erase")
    neurons = tuple(n for n, _ in shared)
    return ValueEdit(
        neurons,
        erase_vector(lm, cfg.mode, cfg.embedding),
        "set",
        f"erase {len(neurons)} neurons ({cfg.mode})",
    )
