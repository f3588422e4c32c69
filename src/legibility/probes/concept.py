"""Concept probes: k-fold (by group) logistic probes at every layer and site, with Hewitt & Liang control
tasks and selectivity (accuracy - control accuracy), bootstrapped over groups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from legibility.metrics.stats import Estimate
from legibility.probes.linear import accuracy_estimate, control_labels, fact_folds, fit_logistic


@dataclass(frozen=True)
class ProbeSettings:
    """How concept probes are trained and scored."""

    folds: int = 3  # k of the k-fold split by group
    weight_decay: float = 1e-2  # L2 on the standardized-feature weights
    max_iter: int = 100  # L-BFGS iterations
    seed: int = 0  # folds, control labels, bootstrap


def group_folds(groups: Sequence[str], labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Fold [n] of every example; all examples of a group share a fold (stratified by label)."""
    ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    return fact_folds([ids[g] for g in groups], list(labels), k, seed)


def cv_correct(x: Tensor, y: Tensor, folds: np.ndarray, n_classes: int, s: ProbeSettings) -> np.ndarray:
    """Held-out correctness [n] of a logistic probe under the given folds."""
    correct = np.zeros(len(y), dtype=bool)
    for f in sorted(set(folds.tolist())):
        test = torch.from_numpy(folds == f)
        probe = fit_logistic(x[~test], y[~test], n_classes, s.weight_decay, s.max_iter)
        correct[test.numpy()] = (probe.predict(x[test]).cpu() == y[test]).numpy()
    return correct


def probe_layers(
    feats: Tensor,
    labels: Sequence[int],
    groups: Sequence[str],
    types: Sequence[str],
    settings: ProbeSettings | None = None,
) -> list[dict[str, Estimate]]:
    """Per layer of ``feats`` [n, layers, d]: held-out ``accuracy``, ``control`` accuracy (random label per
    type, same folds) and ``selectivity`` = accuracy - control, each bootstrapped over groups."""
    s = settings or ProbeSettings()
    y = torch.tensor(list(labels), dtype=torch.long)
    yc = torch.tensor(control_labels(types, labels, s.seed), dtype=torch.long)
    n_classes = int(y.max()) + 1
    folds = group_folds(list(groups), list(labels), s.folds, s.seed)
    out = []
    for layer in range(feats.shape[1]):
        x = feats[:, layer]
        real = cv_correct(x, y, folds, n_classes, s)
        ctrl = cv_correct(x, yc, folds, n_classes, s)
        out.append(
            {
                "accuracy": accuracy_estimate(real, groups, s.seed),
                "control": accuracy_estimate(ctrl, groups, s.seed),
                "selectivity": _diff_estimate(real, ctrl, groups, s.seed),
            }
        )
    return out


def _diff_estimate(a: np.ndarray, b: np.ndarray, groups: Sequence[str], seed: int) -> Estimate:
    return accuracy_estimate(a.astype(float) - b.astype(float), groups, seed)


def majority_share(labels: Sequence[int]) -> float:
    counts = np.bincount(np.asarray(labels))
    return float(counts.max() / counts.sum())
