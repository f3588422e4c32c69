"""Which facts count as known by a model: only those are attributed and scored."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownConfig:
    """Which facts count as known by the model (only those are attributed)."""

    top_k: int = 1  # the target must be within the model's top k predictions ...
    min_share: float = 0.5  # ... on at least this share of the fact's usable prompts
    limit: int | None = None  # keep at most this many known facts per relation (None: all)
    scan: int = 20  # with a limit, examine at most limit * scan candidate facts per relation
