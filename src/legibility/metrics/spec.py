"""What an independent metric is: a function of a :class:`MetricContext`, registered by name.

Kept apart from :mod:`legibility.metrics.independent` so that each metric module can register itself
without importing the module that imports all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from legibility.attribution.base import AttributionConfig
from legibility.errors import LegibilityError
from legibility.facts.types import RenderedFact
from legibility.metrics.stats import Estimate
from legibility.models.loading import LoadedModel
from legibility.registry import Registry

Direction = Literal["higher", "lower", "none"]  # which way is more interpretable ("none": descriptive only)
Need = Literal["model", "neurons", "effects"]
C = TypeVar("C")


@dataclass
class MetricContext:
    """Everything a metric may read. Metrics take what their ``needs`` say and ignore the rest."""

    lm: LoadedModel | None = None  # the model (needed by metrics that run it)
    facts: Sequence[RenderedFact] = ()  # rendered facts (known facts of the run)
    neuron_records: Sequence[dict] = ()  # pipeline.find_neurons records (fact_id, relation, neurons, ...)
    effects: Sequence[dict] = ()  # pipeline.measure_effects records
    seed: int = 0  # bootstrap resampling, random controls, probe folds
    configs: Mapping[str, Any] = field(default_factory=dict)  # metric name -> its config dataclass
    # fact_id -> mean attribution [layers, neurons] over the fact's prompts; filled on demand (or given)
    scores: dict[str, Tensor] = field(default_factory=dict)
    attribution_method: str = "ig"  # method used when a fact's scores must be computed
    attribution: AttributionConfig | None = None  # its settings (None: the paper's defaults)
    attribution_prompts: int | None = None  # attribute on at most this many of a fact's prompts (None: all)
    _acts: tuple[Tensor, list[int]] | None = field(default=None, init=False, repr=False)

    def config(self, name: str, default: C) -> C:
        """The config given for metric ``name``, or ``default``."""
        got = self.configs.get(name, default)
        if not isinstance(got, type(default)):
            raise LegibilityError(
                f"config for metric {name!r} must be a {type(default).__name__}, got {type(got).__name__}"
            )
        return got

    def model(self) -> LoadedModel:
        if self.lm is None:
            raise LegibilityError("this metric runs the model: pass lm= to MetricContext")
        return self.lm

    def usable_facts(self) -> list[RenderedFact]:
        return [r for r in self.facts if r.prompts]

    def answer_activations(self) -> tuple[Tensor, list[int]]:
        """(activations [n_prompts, layers, neurons] at the answer position of every prompt of every
        usable fact (first target token of multi-token prompts), fact index of each row [n_prompts])."""
        if self._acts is None:
            from legibility.forward import answer_activations

            facts = self.usable_facts()
            queries = [p.queries[0] for r in facts for p in r.prompts]
            owner = [i for i, r in enumerate(facts) for _ in r.prompts]
            if not queries:
                raise LegibilityError("no rendered fact has a usable prompt; nothing to measure")
            self._acts = (answer_activations(self.model(), queries), owner)
        return self._acts

    def fact_scores(self, fact: RenderedFact) -> Tensor:
        """Mean attribution [layers, neurons] over the fact's prompts (computed once, then cached)."""
        key = fact.fact.id
        if key not in self.scores:
            from legibility.attribution import attribute_prompts

            with torch.enable_grad():
                prompts = fact.prompts[: self.attribution_prompts]
                self.scores[key] = attribute_prompts(
                    self.model(), prompts, self.attribution_method, self.attribution
                ).mean(0)
        return self.scores[key]


MetricFn = Callable[[MetricContext], dict[str, Estimate]]


@dataclass(frozen=True)
class MetricSpec:
    """One independent metric: its function and how to read its outputs."""

    fn: MetricFn  # ctx -> {dotted key: Estimate}
    direction: Direction  # which way the headline key (the first of ``keys``) is more interpretable
    definition: str  # one-paragraph exact definition (shown by the CLI and in docs/metrics.md)
    needs: frozenset[Need]  # inputs the metric reads from the context
    keys: Mapping[str, Direction]  # every output key -> its direction; the first is the headline
    unit: str = "facts"  # what the bootstrap resamples
    default: bool = False  # computed by default (`score --metrics`, sweeps): cheap, no extra attribution runs


INDEPENDENT: Registry[MetricSpec] = Registry("independent metric")


def register(
    name: str,
    *,
    definition: str,
    keys: Mapping[str, Direction],
    needs: Sequence[Need],
    unit: str = "facts",
    default: bool = False,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator: add ``fn`` to :data:`INDEPENDENT` under ``name``; keys are written without the
    ``independent.<name>.`` prefix, which :func:`legibility.metrics.independent.compute_metrics` adds."""

    def add(fn: MetricFn) -> MetricFn:
        first = next(iter(keys))
        INDEPENDENT.register(name)(
            MetricSpec(
                fn, keys[first], " ".join(definition.split()), frozenset(needs), dict(keys), unit, default
            )
        )
        return fn

    return add
