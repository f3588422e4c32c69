"""FFN value vectors (Geva et al.'s "values", Dai et al.'s "value slots") and reversible edits of them.

Neuron ``i`` of layer ``l`` adds ``activation_i * v_i`` to the residual stream, where ``v_i`` is column ``i``
of the output projection's weight for ``nn.Linear`` (weight ``[d_model, n_neurons]``: Llama/Gemma
``down_proj``, NeoX ``dense_4h_to_h``, BERT ``output.dense``) and row ``i`` for GPT-2's ``Conv1D`` (weight
``[n_neurons, d_model]``). A :class:`ValueEdit` says how some of those vectors change; it is applied either
as a context manager that restores the exact original values on exit, or to a deep copy of the model.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from legibility.errors import LegibilityError
from legibility.models.loading import LoadedModel

Neuron = tuple[int, int]  # (layer, index)
Embedding = Literal["input", "output"]
EditOp = Literal["add", "set"]


def _weight_and_axis(lm: LoadedModel, layer: int) -> tuple[Tensor, int]:
    """The output-projection weight of ``layer`` and the axis along which the neuron index runs."""
    if lm.sites.spec.io != "input":
        raise LegibilityError(
            "value vectors need sites on the input of the FFN output projection; load the model with "
            "site='ffn' (the default), not a pre-activation site such as 'eleuther'."
        )
    if not 0 <= layer < lm.sites.n_layers:
        raise LegibilityError(f"layer {layer} out of range: the model has {lm.sites.n_layers} layers")
    module = lm.sites.modules[layer]
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise LegibilityError(f"{type(module).__name__} at layer {layer} has no 2-d weight to edit")
    if isinstance(module, nn.Linear):
        return weight, 1  # [d_model, n_neurons]
    if type(module).__name__ == "Conv1D":
        return weight, 0  # [n_neurons, d_model] (GPT-2 stores x @ W)
    raise LegibilityError(
        f"don't know how {type(module).__name__} stores its weight; value vectors are supported for "
        "nn.Linear and transformers' Conv1D output projections."
    )


def value_matrix(lm: LoadedModel, layer: int) -> Tensor:
    """A view [n_neurons, d_model] of the value vectors of ``layer`` (writes go to the model)."""
    weight, axis = _weight_and_axis(lm, layer)
    return weight if axis == 0 else weight.t()


def value_vector(lm: LoadedModel, layer: int, index: int) -> Tensor:
    """A detached copy [d_model] of neuron ``index``'s value vector."""
    values = value_matrix(lm, layer)
    if not 0 <= index < values.shape[0]:
        raise LegibilityError(f"neuron {index} out of range 0..{values.shape[0] - 1} at layer {layer}")
    return values[index].detach().clone()


def embedding_matrix(lm: LoadedModel, which: Embedding = "input") -> Tensor:
    """The word embedding [vocab, d_model] (``"input"``, never position embeddings) or the unembedding
    (``"output"``, the LM head); in tied models they are the same tensor."""
    if which == "input":
        module = lm.model.get_input_embeddings()  # type: ignore[operator]
    elif which == "output":
        module = lm.model.get_output_embeddings()  # type: ignore[operator]
    else:
        raise LegibilityError(f"embedding must be 'input' or 'output', not {which!r}")
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        raise LegibilityError(f"the model's {which} embedding has no weight matrix")
    return weight


def token_embedding(lm: LoadedModel, token_id: int, which: Embedding = "input") -> Tensor:
    """A detached copy [d_model] of one token's row of the word embedding or unembedding."""
    weight = embedding_matrix(lm, which)
    if not 0 <= token_id < weight.shape[0]:
        raise LegibilityError(f"token id {token_id} out of range 0..{weight.shape[0] - 1}")
    d_model = value_matrix(lm, 0).shape[1]
    if weight.shape[1] != d_model:
        raise LegibilityError(
            f"the {which} embedding has width {weight.shape[1]} but value vectors have {d_model}; this "
            "model projects its embeddings, so an embedding cannot be written into a value vector."
        )
    return weight[token_id].detach().clone()


@dataclass(frozen=True, eq=False)
class ValueEdit:
    """New value vectors for some neurons: ``v <- v + vector`` (op ``"add"``) or ``v <- vector`` (``"set"``).

    Use ``with edit.applied(lm):`` for an in-place edit that undoes itself bit-exactly, or
    ``edit.copy(lm)`` for an edited deep copy that leaves ``lm`` untouched.
    """

    neurons: tuple[Neuron, ...]  # (layer, index), without duplicates
    vector: Tensor  # [d_model] added to or written into each listed value vector
    op: EditOp = "add"
    description: str = ""  # what the edit does, for logs and reports

    def __post_init__(self) -> None:
        if self.op not in ("add", "set"):
            raise LegibilityError(f"unknown value edit {self.op!r}; use 'add' or 'set'")
        if self.vector.dim() != 1:
            raise LegibilityError(f"edit vector must be [d_model], got shape {tuple(self.vector.shape)}")
        object.__setattr__(self, "neurons", tuple(dict.fromkeys((int(a), int(b)) for a, b in self.neurons)))

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for layer, index in self.neurons:
            out.setdefault(layer, []).append(index)
        return out

    def _write(self, lm: LoadedModel) -> dict[int, tuple[Tensor, Tensor]]:
        """Apply the edit in place; returns layer -> (indices, original rows) for undoing it. Everything is
        checked before anything is written, so a refused edit leaves the model as it was."""
        targets = []
        for layer, indices in self.by_layer().items():
            values = value_matrix(lm, layer)  # [n_neurons, d_model] view
            bad = [i for i in indices if not 0 <= i < values.shape[0]]
            if bad:
                raise LegibilityError(f"neurons {bad} out of range 0..{values.shape[0] - 1} at layer {layer}")
            if values.shape[1] != self.vector.shape[0]:
                raise LegibilityError(
                    f"edit vector has {self.vector.shape[0]} dims, value vectors have {values.shape[1]}"
                )
            targets.append((layer, values, torch.tensor(indices, dtype=torch.long, device=values.device)))
        saved: dict[int, tuple[Tensor, Tensor]] = {}
        with torch.no_grad():
            for layer, values, idx in targets:
                saved[layer] = (idx, values[idx].clone())
                vec = self.vector.to(values.device, values.dtype)
                values[idx] = values[idx] + vec if self.op == "add" else vec.expand(len(idx), -1)
        return saved

    @contextlib.contextmanager
    def applied(self, lm: LoadedModel) -> Iterator[LoadedModel]:
        """Edit ``lm`` in place for the block; the original value vectors are restored on exit."""
        saved: dict[int, tuple[Tensor, Tensor]] = {}
        try:
            saved = self._write(lm)
            yield lm
        finally:
            with torch.no_grad():
                for layer, (idx, rows) in saved.items():
                    value_matrix(lm, layer)[idx] = rows

    def copy(self, lm: LoadedModel) -> LoadedModel:
        """An edited deep copy of ``lm`` (twice the memory); ``lm`` itself is not changed."""
        from legibility.models.loading import load_model

        edited = load_model(copy.deepcopy(lm.model), lm.tokenizer, spec=lm.sites.spec)
        edited.name, edited.add_special_tokens = lm.name, lm.add_special_tokens
        self._write(edited)
        return edited


def random_like(
    neurons: Sequence[Neuron], n_neurons: int, generator: torch.Generator, avoid: Sequence[Neuron] = ()
) -> list[Neuron]:
    """As many random neurons as ``neurons``, in the same layers (the layer profile is kept), none of them in
    ``avoid`` or in ``neurons``; the control for any value edit."""
    taken = set(neurons) | set(avoid)
    out: list[Neuron] = []
    for layer, _ in neurons:
        while True:
            i = int(torch.randint(n_neurons, (1,), generator=generator))
            if (layer, i) not in taken:
                taken.add((layer, i))
                out.append((layer, i))
                break
    return out
