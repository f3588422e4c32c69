"""Aggregates with confidence intervals, from the reference implementations (scipy, statsmodels).

* :func:`bootstrap`: any statistic of units (facts, pairs, ...) with a BCa bootstrap interval
  (``scipy.stats.bootstrap``); where BCa is undefined (a statistic that is NaN in some resamples, a
  degenerate sample) the percentile interval of the same resamples.
* :func:`t_estimate`: a mean with a Student-t interval (``scipy.stats.t``), for a handful of units (seeds).
* :func:`paired_test` and :func:`holm`: a paired t-test of differences and Holm's step-down correction of
  a family of p-values (``statsmodels.stats.multitest.multipletests``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A metric value with a 95% interval over its n units (facts, pairs, seeds, ...)."""

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
    """``stat`` of ``data`` (rows = units) with a bootstrap interval over units; NaN where data is empty.

    Rows are resampled together (a row may hold several paired columns), by resampling their indices with
    ``scipy.stats.bootstrap`` (BCa); a BCa interval that comes out undefined falls back to the percentile
    interval of the same resamples. For a plain mean, :func:`mean_estimate` is the same, vectorized."""
    data = np.asarray(data, dtype=float)
    n = int(data.shape[0])
    if n < 2:
        return _degenerate(float(stat(data)) if n else float("nan"), n)

    def on_rows(idx: np.ndarray) -> float:
        return float(stat(data[idx.astype(int)]))

    return _scipy_bootstrap(
        (np.arange(n),), on_rows, float(stat(data)), n, n_boot, seed, level, vectorized=False
    )


def mean_estimate(
    values: np.ndarray | Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """The mean with a BCa bootstrap interval (as :func:`bootstrap` of ``np.mean``, vectorized)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return _degenerate(float(x.mean()) if x.size else float("nan"), int(x.size))
    return _scipy_bootstrap((x,), np.mean, float(x.mean()), int(x.size), n_boot, seed, level, vectorized=True)


def paired_estimate(
    stat: Callable[..., np.ndarray],
    *columns: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """``stat(*columns, axis=-1)`` of paired columns (one value per unit in each), with a BCa bootstrap
    interval that resamples units; ``stat`` must reduce along ``axis`` (it is evaluated vectorized)."""
    cols = tuple(np.asarray(c, dtype=float) for c in columns)
    n = int(cols[0].size)
    if n < 2:
        return _degenerate(float(stat(*cols, axis=-1)) if n else float("nan"), n)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(stat(*cols, axis=-1))
    return _scipy_bootstrap(cols, stat, value, n, n_boot, seed, level, vectorized=True, paired=True)


def _ratio_of_means(b: np.ndarray, a: np.ndarray, axis: int = -1) -> np.ndarray:
    mb = b.mean(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a.mean(axis=axis) - mb) / mb


def ratio_of_means_estimate(before: np.ndarray, after: np.ndarray, **kw) -> Estimate:
    """(mean(after) - mean(before)) / mean(before), bootstrapped over units (the official code's aggregate)."""
    return paired_estimate(_ratio_of_means, before, after, **kw)


def _degenerate(value: float, n: int) -> Estimate:
    """No interval from fewer than two units: NaN for none, a zero-width one for one."""
    return Estimate(value, value, value, n) if n else Estimate(float("nan"), float("nan"), float("nan"), 0)


def _scipy_bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Callable,
    value: float,
    n: int,
    n_boot: int,
    seed: int,
    level: float,
    *,
    vectorized: bool,
    paired: bool = False,
) -> Estimate:
    from scipy import stats

    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # degenerate samples warn, then give NaN: handled below
        res = stats.bootstrap(
            data,
            statistic,
            vectorized=vectorized,
            paired=paired,
            n_resamples=n_boot,
            confidence_level=level,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        dist = np.asarray(res.bootstrap_distribution, dtype=float)
        dist[~np.isfinite(dist)] = np.nan
        if np.isnan(dist).all():  # e.g. a ratio whose denominator is 0 in every resample
            return Estimate(value, float("nan"), float("nan"), n)
        if np.nanmax(dist) == np.nanmin(dist):  # every resample gives the same value
            return Estimate(value, float(np.nanmin(dist)), float(np.nanmax(dist)), n)
        lo, hi = (float(v) for v in np.nanpercentile(dist, [100 * (1 - level) / 2, 100 * (1 + level) / 2]))
    return Estimate(value, lo, hi, n)


def t_estimate(values: np.ndarray | Sequence[float], level: float = 0.95) -> Estimate:
    """Mean with a Student-t interval: for a handful of units (seeds), where a bootstrap of 3 values says
    little. NaN where ``values`` is empty; a zero-width interval for one value."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(x.std(ddof=1)) / np.sqrt(n)
    return Estimate(mean, float(mean - half), float(mean + half), n)


def paired_test(diffs: np.ndarray | Sequence[float]) -> float:
    """Two-sided p-value of a one-sample t-test that the mean of paired differences is 0 (NaN for fewer
    than two differences). Differences that do not vary (to rounding) give 0 when they are not 0, else 1."""
    from scipy import stats

    x = np.asarray(diffs, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan")
    scale = max(1.0, float(np.abs(x).max()))
    if float(x.std(ddof=1)) <= 1e-12 * scale:
        return 0.0 if abs(float(x.mean())) > 1e-12 * scale else 1.0
    return float(stats.ttest_1samp(x, 0.0).pvalue)


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction of a family of p-values: (reject at family-wise ``alpha``, adjusted p).
    NaN p-values (tests that could not be made) are left out of the family and never rejected."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    ok = np.isfinite(p)
    reject = np.zeros(p.size, dtype=bool)
    adjusted = np.full(p.size, np.nan)
    if ok.any():
        r, a, _, _ = multipletests(p[ok], alpha=alpha, method="holm")
        reject[ok], adjusted[ok] = r, a
    return [bool(v) for v in reject], [float(v) for v in adjusted]
