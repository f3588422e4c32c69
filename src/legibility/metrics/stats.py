"""Aggregates with bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A metric value with a 95% bootstrap interval over its n units (facts, pairs, ...)."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def bootstrap(
    stat: Callable[[np.ndarray], float],
    data: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """``stat`` of ``data`` (rows = units) with a percentile bootstrap interval; NaN where data is empty."""
    data = np.asarray(data, dtype=float)
    n = int(data.shape[0])
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float(stat(data))
    if n == 1:
        return Estimate(value, value, value, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = np.array([stat(data[i]) for i in idx])
    if np.isnan(stats).all():  # e.g. a ratio whose denominator is 0 in every resample
        return Estimate(value, float("nan"), float("nan"), n)
    lo, hi = np.nanpercentile(stats, [100 * (1 - level) / 2, 100 * (1 + level) / 2])

    return Estimate(value, float(lo), float(hi), n)


def mean_estimate(values: np.ndarray, **kw) -> Estimate:
    return bootstrap(lambda x: float(np.mean(x)), np.asarray(values, dtype=float), **kw)


def ratio_of_means_estimate(before: np.ndarray, after: np.ndarray, **kw) -> Estimate:
    """(mean(after) - mean(before)) / mean(before), bootstrapped over units (the official code's aggregate)."""
    pairs = (
        np.stack([np.asarray(before, float), np.asarray(after, float)], 1)
        if len(before)
        else np.zeros((0, 2))
    )
    return bootstrap(lambda x: float((x[:, 1].mean() - x[:, 0].mean()) / x[:, 0].mean()), pairs, **kw)
