"""Which layer a probe result is read at, chosen without looking at the facts it is reported on.

A per-layer curve invites reporting its maximum; over 31 layers and a few dozen facts that maximum is biased
upwards (the best of many noisy estimates). So every headline probe number is either

* the score on *test* facts at the layer with the best score on *validation* facts (disjoint from both the
  training and the test facts), or
* the score at a layer fixed in advance, by depth: :func:`fixed_layer` (2/3 of the way through by default).

The splits themselves are by fact, stratified by relation (:func:`split_by_relation`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np

from legibility.errors import LegibilityError

__all__ = ["FIXED_DEPTH", "choose_layer", "fixed_layer", "split_by_relation"]

FIXED_DEPTH = 2 / 3  # the pre-registered comparison layer: round(2/3 * (entries - 1))


def fixed_layer(n_layers: int, depth: float = FIXED_DEPTH) -> int:
    """Layer index at ``depth`` of a site with ``n_layers`` entries (residual: 31 entries for 30 blocks -> 20;
    FFN: 30 blocks -> 19, the block whose output is residual entry 20)."""
    if n_layers < 1 or not 0 <= depth <= 1:
        raise LegibilityError(f"fixed layer needs >= 1 layer and a depth in [0, 1] (got {n_layers}, {depth})")
    return int(round(depth * (n_layers - 1)))


def choose_layer(validation: Sequence[float]) -> int:
    """The layer with the highest validation score (the earliest on a tie; NaN never chosen)."""
    v = np.asarray(validation, dtype=float)
    if v.size == 0 or np.isnan(v).all():
        raise LegibilityError("no validation score to choose a layer from (empty validation split?)")
    return int(np.nanargmax(v))


def split_by_relation(
    facts_by_relation: Mapping[str, Sequence[str]], shares: Sequence[float], seed: int
) -> list[set[str]]:
    """Split fact ids into ``len(shares)`` disjoint sets, separately within every relation (so each relation
    has facts in every set when it has enough), sizes proportional to ``shares`` (rounded, the first set
    takes the remainder)."""
    if not shares or any(s < 0 for s in shares) or sum(shares) <= 0:
        raise LegibilityError(f"split shares must be non-negative and not all zero (got {list(shares)})")
    total = float(sum(shares))
    out: list[set[str]] = [set() for _ in shares]
    for rel in sorted(facts_by_relation):
        ids = sorted(set(facts_by_relation[rel]))
        random.Random(f"{seed}|split|{rel}").shuffle(ids)
        sizes = [int(round(len(ids) * s / total)) for s in shares[1:]]
        while sum(sizes) > len(ids):  # rounding up everywhere can overshoot a tiny relation
            sizes[int(np.argmax(sizes))] -= 1
        sizes = [len(ids) - sum(sizes), *sizes]
        start = 0
        for part, size in zip(out, sizes, strict=True):
            part.update(ids[start : start + size])
            start += size
    return out
