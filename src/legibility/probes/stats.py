"""Statistics of probe results, from scipy and statsmodels.

The unit of every interval is the fact (a PARAREL fact or a JSONL group): a fact's statements or prompts are
not independent, so per-fact means are resampled, never single examples.

* :func:`accuracy_estimate`: mean over facts of each fact's mean outcome, with a BCa bootstrap interval
  (``scipy.stats.bootstrap``). When every fact has the same mean the bootstrap has no spread; for a 0/1
  outcome the Clopper-Pearson interval over facts (statsmodels ``proportion_confint``) is given instead.
* :func:`paired_difference`: condition b minus condition a on the *same* facts (e.g. lying vs truthful
  few-shot context): the mean over facts of the per-fact difference with a BCa bootstrap over facts, so the
  two conditions are resampled together, plus McNemar's exact test (statsmodels) on the per-statement 0/1
  outcomes where they are binary.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from legibility.metrics.stats import Estimate

__all__ = ["accuracy_estimate", "group_means", "mean_ci", "mcnemar_exact", "paired_difference"]

N_RESAMPLES = 2000  # bootstrap resamples (BCa)
LEVEL = 0.95


def group_means(values: np.ndarray | Sequence[float], groups: Sequence[object]) -> np.ndarray:
    """Mean of ``values`` within each group, in order of the groups' first appearance."""
    keys = [str(g) for g in groups]
    order = {g: i for i, g in enumerate(dict.fromkeys(keys))}
    idx = np.array([order[k] for k in keys], dtype=int)
    v = np.asarray(values, dtype=float)
    if v.shape[0] != len(keys):
        raise ValueError(f"{v.shape[0]} values for {len(keys)} group labels")
    sums = np.bincount(idx, weights=v, minlength=len(order)) if len(keys) else np.zeros(0)
    counts = np.bincount(idx, minlength=len(order)) if len(keys) else np.zeros(0)
    return sums / np.maximum(counts, 1)


def mean_ci(units: np.ndarray, seed: int = 0, binary: bool = False) -> Estimate:
    """Mean of ``units`` (one value per fact) with a 95% BCa bootstrap interval over them.

    No spread (every unit equal): Clopper-Pearson over the units when ``binary`` and the value is 0 or 1,
    else the point itself. NaN for no units.
    """
    x = np.asarray(units, dtype=float)
    n = int(x.size)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float(x.mean())
    if np.all(x == x[0]):
        if binary and value in (0.0, 1.0):
            lo, hi = proportion_confint(int(round(value * n)), n, alpha=1 - LEVEL, method="beta")
            return Estimate(value, float(lo), float(hi), n)
        return Estimate(value, value, value, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on tiny samples warns and may return NaN: fall back below
        res = sps.bootstrap(
            (x,), np.mean, confidence_level=LEVEL, n_resamples=N_RESAMPLES, method="BCa", random_state=seed
        )
        lo, hi = res.confidence_interval
        if not (np.isfinite(lo) and np.isfinite(hi)):
            res = sps.bootstrap(
                (x,),
                np.mean,
                confidence_level=LEVEL,
                n_resamples=N_RESAMPLES,
                method="percentile",
                random_state=seed,
            )
            lo, hi = res.confidence_interval
    return Estimate(value, float(lo), float(hi), n)


def accuracy_estimate(
    correct: np.ndarray | Sequence[float], groups: Sequence[object], seed: int = 0
) -> Estimate:
    """Mean over groups of each group's mean ``correct`` (0/1, 0.5 for a tie, or any number), 95% BCa
    bootstrap interval over groups (Clopper-Pearson when every group is all right or all wrong)."""
    c = np.asarray(correct, dtype=float)
    binary = bool(np.isin(c, (0.0, 1.0)).all())
    return mean_ci(group_means(c, groups), seed, binary)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> dict[str, float | int]:
    """McNemar's exact test of paired 0/1 outcomes: ``a_only`` (right under a, wrong under b), ``b_only`` and
    the two-sided p-value (binomial on the discordant pairs)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    p = 1.0 if table[0][1] + table[1][0] == 0 else float(mcnemar(table, exact=True).pvalue)
    return {"a_only": table[0][1], "b_only": table[1][0], "pvalue": p}


def paired_difference(
    a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float], groups: Sequence[object], seed: int = 0
) -> dict[str, object]:
    """``b - a`` on the same statements: ``difference`` (mean over facts of the per-fact mean difference,
    BCa bootstrap over facts) and, when both outcomes are 0/1, McNemar's exact test on the statements
    (``mcnemar``; it treats statements as independent, the bootstrap over facts does not)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError("paired outcomes need the same shape")
    out: dict[str, object] = {"difference": mean_ci(group_means(y - x, groups), seed).to_dict()}
    binary = np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()
    out["mcnemar"] = mcnemar_exact(x == 1, y == 1) if binary else None
    return out
