"""The regularizer interface, its registry, and the coefficient schedule every regularizer shares.

A regularizer may act at four points of a training step, each optional:

* ``forward(ctx)``: a context manager around the model's forward (e.g. dropout on FFN neurons);
* ``penalty(ctx)``: a scalar added to the loss as ``weight(step) * penalty`` (unweighted value returned);
* ``after_backward(ctx)``: edit gradients (e.g. gradient noise);
* ``after_step(ctx, optimizer)``: edit weights (e.g. magnitude masking, neuron swaps).

``weight(step) = coef * factor(step)`` where ``factor`` is 0 before ``start`` (a fraction of the run), then
rises linearly to 1 over ``ramp`` (a fraction of the run). Regularizers whose factor is 0 are skipped.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import Tensor, nn

from legibility.errors import LegibilityError
from legibility.models.sites import Sites
from legibility.registry import Registry
from legibility.training.config import from_dict


@dataclass(frozen=True)
class RegularizerConfig:
    """Fields shared by every regularizer's config."""

    coef: float = 1.0  # weight of the penalty at full strength
    start: float = 0.0  # fraction of training before which the regularizer is off
    ramp: float = 0.0  # fraction of training over which its strength rises linearly from 0 to 1

    def factor(self, step: int, total: int) -> float:
        """Strength in [0, 1] at ``step`` of ``total``."""
        t = step / max(total, 1)
        if t < self.start:
            return 0.0
        if self.ramp <= 0:
            return 1.0
        return min((t - self.start) / self.ramp, 1.0)


@dataclass
class Setup:
    """What a regularizer may need when it is built."""

    model: nn.Module
    sites: Sites
    tokenizer: Any = None
    corpus: Any = None  # a legibility.training.corpus.Corpus (facts for the suppressability objective)
    seed: int = 0
    total_steps: int = 1
    add_special_tokens: bool = False  # how the model's prompts are encoded (the fact objectives render facts)


@dataclass
class StepContext:
    """One training step as regularizers see it."""

    model: nn.Module
    sites: Sites
    step: int
    total_steps: int
    input_ids: Tensor  # [batch, pos]
    logits: Tensor | None = None  # [batch, pos, vocab], set after the forward
    # layer -> FFN activations [batch, pos, neurons] with their graph (recorded when a regularizer asks)
    activations: dict[int, Tensor] = field(default_factory=dict)


C = TypeVar("C", bound=RegularizerConfig)


class Regularizer(Generic[C]):
    """Base class: does nothing at every point; subclasses override what they need."""

    needs_activations = False  # ask the trainer to record FFN activations (with grad) into ctx
    name = ""  # set by @register

    def __init__(self, config: C, setup: Setup):
        self.config = config
        self.setup = setup

    def factor(self, step: int, total: int) -> float:
        return self.config.factor(step, total)

    def weight(self, step: int, total: int) -> float:
        return self.config.coef * self.factor(step, total)

    def forward(self, ctx: StepContext) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def penalty(self, ctx: StepContext) -> Tensor | None:
        return None

    def after_backward(self, ctx: StepContext) -> None:
        return None

    def after_step(self, ctx: StepContext, optimizer: Any) -> None:
        return None


@dataclass(frozen=True)
class RegularizerSpec:
    config: type  # its RegularizerConfig subclass
    build: Callable[[Any, Setup], Regularizer]
    description: str


REGULARIZERS: Registry[RegularizerSpec] = Registry("regularizer")
# old name -> new name; an old name still loads, with a FutureWarning
RENAMED = {"dropout": "ffn_dropout"}


def register(name: str, config: type, description: str) -> Callable[[type], type]:
    """Class decorator: register a Regularizer subclass under ``name`` with its config class."""

    def add(cls: type) -> type:
        REGULARIZERS.register(name)(RegularizerSpec(config, cls, description))
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return add


def parse_regularizers(entries: list[dict]) -> list[tuple[str, RegularizerConfig]]:
    """[{"name": ..., **fields}] -> [(name, config)], with errors naming the entry and the key."""
    out: list[tuple[str, RegularizerConfig]] = []
    for i, entry in enumerate(entries):
        where = f"regularizers[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise LegibilityError(
                f"{where}: expected a mapping with a 'name' (one of {', '.join(REGULARIZERS.names())})"
            )
        rest = dict(entry)
        name = rest.pop("name")
        if name in RENAMED:
            warnings.warn(
                f"{where}.name: {name!r} is deprecated, write {RENAMED[name]!r} (the same dropout on the FFN "
                "neurons)",
                FutureWarning,
                stacklevel=3,
            )
            name = RENAMED[name]
        if name not in REGULARIZERS:
            raise LegibilityError(
                f"{where}.name: unknown regularizer {name!r}; available: {', '.join(REGULARIZERS.names())}"
            )
        out.append((name, from_dict(REGULARIZERS[name].config, rest, f"{where} ({name})")))
    return out


def canonical_regularizers(entries: list[dict]) -> list[dict]:
    """The entries with old regularizer names replaced by their new ones (what a run's config records)."""
    return [
        {**e, "name": RENAMED[e["name"]]} if isinstance(e, dict) and e.get("name") in RENAMED else e
        for e in entries
    ]


def build_regularizers(entries: list[dict], setup: Setup) -> list[Regularizer[Any]]:
    return [REGULARIZERS[name].build(cfg, setup) for name, cfg in parse_regularizers(entries)]


@contextlib.contextmanager
def recording(sites: Sites, store: dict[int, Tensor]) -> Iterator[None]:
    """Record every layer's FFN activations into ``store`` *with* their graph (penalties need grads)."""

    def recorder(layer: int):
        def fn(acts: Tensor) -> Tensor:
            store[layer] = acts
            return acts

        return fn

    with sites.patch({layer: recorder(layer) for layer in range(sites.n_layers)}):
        yield
