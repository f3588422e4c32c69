"""Scoped interventions on FFN neurons: suppress (x0), amplify (x2), scale, set.

An intervention acts only inside its ``with`` block; hooks are removed in ``finally``. By default it acts
at the answer position only (paper protocol): the last non-padding token for causal LMs, the mask token
for masked LMs, derived from each forward's inputs unless explicit ``positions`` are given.

>>> from legibility import load_model, suppress                          # doctest: +SKIP
>>> lm = load_model("smollm2-135m")                                      # doctest: +SKIP
>>> with suppress(lm, {12: [7, 301]}):                                   # doctest: +SKIP
...     out = lm.model(**lm.tokenizer("The capital of France is", return_tensors="pt"))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from legibility.errors import LegibilityError
from legibility.models.loading import LoadedModel

Op = Literal["suppress", "amplify", "scale", "set"]
Where = Literal["answer", "all"]
Neurons = Mapping[int, Sequence[int]]  # layer -> neuron indices


@dataclass(frozen=True)
class Intervention:
    """Change the activation of some neurons: ``suppress`` sets them to 0, ``amplify`` doubles them,
    ``scale`` multiplies by ``value``, ``set`` writes ``value``."""

    neurons: dict[int, tuple[int, ...]]
    op: Op = "suppress"
    value: float | None = None
    where: Where = "answer"

    def __post_init__(self) -> None:
        if self.op not in ("suppress", "amplify", "scale", "set"):
            raise LegibilityError(f"unknown intervention {self.op!r}; use suppress, amplify, scale or set")
        if self.op in ("scale", "set") and self.value is None:
            raise LegibilityError(f"intervention {self.op!r} needs a value")
        if self.where not in ("answer", "all"):
            raise LegibilityError(f"where must be 'answer' or 'all', not {self.where!r}")

    def _transform(self, x: Tensor) -> Tensor:
        if self.op == "suppress":
            return torch.zeros_like(x)
        if self.op == "amplify":
            return x * 2.0
        if self.op == "scale":
            return x * float(self.value)  # type: ignore[arg-type]
        return torch.full_like(x, float(self.value))  # type: ignore[arg-type]

    @contextlib.contextmanager
    def apply(self, lm: LoadedModel, positions: Tensor | None = None) -> Iterator[None]:
        """Active for the block. ``positions`` [batch] pins the answer positions; otherwise they are read
        from each forward's ``input_ids``/``attention_mask``."""
        for layer, idx in self.neurons.items():
            bad = [i for i in idx if not 0 <= i < lm.sites.n_neurons]
            if bad:
                raise LegibilityError(
                    f"neuron indices {bad} out of range 0..{lm.sites.n_neurons - 1} at layer {layer}"
                )
        state: dict[str, Tensor | None] = {"pos": positions}
        with contextlib.ExitStack() as stack:
            if self.where == "answer" and positions is None:
                stack.enter_context(_track_answer_positions(lm, state))
            fns = {
                layer: self._patch_fn(torch.tensor(idx, dtype=torch.long, device=lm.device), state)
                for layer, idx in self.neurons.items()
                if idx
            }
            stack.enter_context(lm.sites.patch(fns))
            yield

    def _patch_fn(self, idx: Tensor, state: dict[str, Tensor | None]):
        def fn(acts: Tensor) -> Tensor:
            acts = acts.clone()
            if self.where == "all":
                acts[..., idx] = self._transform(acts[..., idx])
                return acts
            pos = state["pos"]
            assert pos is not None
            rows = torch.arange(acts.shape[0], device=acts.device)
            sub = acts[rows, pos.to(acts.device)]  # [batch, neurons]
            sub[:, idx] = self._transform(sub[:, idx])
            acts[rows, pos.to(acts.device)] = sub
            return acts

        return fn


@contextlib.contextmanager
def _track_answer_positions(lm: LoadedModel, state: dict[str, Tensor | None]) -> Iterator[None]:
    mask_id = getattr(lm.tokenizer, "mask_token_id", None)

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise LegibilityError(
                "interventions at the answer position need input_ids; pass positions= otherwise"
            )
        if lm.kind == "masked":
            is_mask = ids == mask_id
            if not bool(is_mask.any(-1).all()):
                raise LegibilityError("every input needs a mask token for an answer-position intervention")
            state["pos"] = is_mask.int().argmax(-1)
        else:
            am = kwargs.get("attention_mask")
            state["pos"] = (
                (am.sum(-1) - 1)
                if am is not None
                else torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
            )
        return

    handle = lm.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _neurons(neurons: Neurons) -> dict[int, tuple[int, ...]]:
    return {int(k): tuple(int(i) for i in v) for k, v in neurons.items()}


def suppress(lm: LoadedModel, neurons: Neurons, where: Where = "answer", positions: Tensor | None = None):
    """Context manager: activations of ``neurons`` set to 0."""
    return Intervention(_neurons(neurons), "suppress", where=where).apply(lm, positions)


def amplify(lm: LoadedModel, neurons: Neurons, where: Where = "answer", positions: Tensor | None = None):
    """Context manager: activations of ``neurons`` doubled."""
    return Intervention(_neurons(neurons), "amplify", where=where).apply(lm, positions)


def scale(
    lm: LoadedModel, neurons: Neurons, factor: float, where: Where = "answer", positions: Tensor | None = None
):
    """Context manager: activations of ``neurons`` multiplied by ``factor``."""
    return Intervention(_neurons(neurons), "scale", factor, where).apply(lm, positions)


def set_to(
    lm: LoadedModel, neurons: Neurons, value: float, where: Where = "answer", positions: Tensor | None = None
):
    """Context manager: activations of ``neurons`` set to ``value``."""
    return Intervention(_neurons(neurons), "set", value, where).apply(lm, positions)


def group_by_layer(pairs: Sequence[tuple[int, int]]) -> dict[int, tuple[int, ...]]:
    """[(layer, neuron), ...] -> {layer: (neuron, ...)}."""
    out: dict[int, list[int]] = {}
    for layer, neuron in pairs:
        out.setdefault(int(layer), []).append(int(neuron))
    return {k: tuple(sorted(set(v))) for k, v in sorted(out.items())}
