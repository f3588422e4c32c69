"""Aggregates with bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30; above that the normal 1.96 is within 2%.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_estimate(values: np.ndarray | Sequence[float]) -> Estimate:
    """Mean with a 95% Student-t interval: for a handful of units (seeds), where a bootstrap of 3 values
    says little. NaN where ``values`` is empty; a zero-width interval for one value."""
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    q = T975[n - 2] if n - 1 <= len(T975) else 1.96
    half = q * float(x.std(ddof=1)) / np.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)
