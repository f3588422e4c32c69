"""Which of a fact's prompts choose its knowledge neurons and which measure them.

A fact's usable prompts are split, by a seeded shuffle of their order that depends only on the fact's id,
into *selection* prompts (attributed; their coarse neurons are refined into the knowledge neurons) and
*held-out* prompts (where suppression is measured). Measuring on the prompts that chose the neurons
overstates how much the neurons hold the fact; the held-out prompts did not choose them.

``holdout`` is the share held out: ``max(1, floor(holdout * n))`` of n prompts, leaving at least one to
select with, so a fact needs two usable prompts. ``holdout = 0`` selects and measures on every prompt (the
paper's in-sample protocol).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from legibility.errors import LegibilityError
from legibility.facts.types import PromptQueries, RenderedFact

T = TypeVar("T")


@dataclass(frozen=True)
class PromptSplit:
    """How each fact's prompts are split into selection and held-out prompts."""

    holdout: float = 0.5  # share of a fact's usable prompts held out for measurement (0: none, in-sample)
    seed: int = 0  # of the per-fact shuffle

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout < 1.0:
            raise LegibilityError(f"holdout must be in [0, 1), got {self.holdout}")

    @property
    def min_prompts(self) -> int:
        """Usable prompts a fact needs for the split: one to select with and one to measure on."""
        return 2 if self.holdout > 0 else 1

    def indices(self, fact_id: str, n: int) -> tuple[list[int], list[int]]:
        """(selection, held-out) prompt indices of a fact with ``n`` usable prompts, each in prompt order."""
        if self.holdout == 0:
            return list(range(n)), list(range(n))
        if n < 2:
            raise LegibilityError(
                f"fact {fact_id!r} has {n} usable prompt(s); holding prompts out needs at least 2 "
                "(give more paraphrases, or --holdout 0 to measure on the selection prompts)"
            )
        order = list(range(n))
        random.Random(f"{self.seed}|{fact_id}").shuffle(order)
        k = max(1, math.floor(self.holdout * n))
        return sorted(order[k:]), sorted(order[:k])

    def split_items(self, fact_id: str, items: Sequence[T]) -> tuple[list[T], list[T]]:
        """(selection, held-out) of a fact's per-prompt ``items`` (texts, scores, ...)."""
        sel, held = self.indices(fact_id, len(items))
        return [items[i] for i in sel], [items[i] for i in held]

    def split(self, fact: RenderedFact) -> tuple[list[PromptQueries], list[PromptQueries]]:
        """(selection, held-out) prompts of a rendered fact."""
        return self.split_items(fact.fact.id, fact.prompts)

    def selection(self, fact: RenderedFact) -> RenderedFact:
        """The fact with only its selection prompts."""
        return RenderedFact(fact.fact, self.split(fact)[0], dict(fact.skipped))

    def heldout(self, fact: RenderedFact) -> RenderedFact:
        """The fact with only its held-out prompts."""
        return RenderedFact(fact.fact, self.split(fact)[1], dict(fact.skipped))
