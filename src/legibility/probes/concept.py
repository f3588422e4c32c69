"""Concept probes: k-fold (by group) logistic probes at every layer and site, with Hewitt & Liang control
tasks and selectivity (accuracy - control accuracy), bootstrapped over groups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from legibility.metrics.stats import Estimate
from legibility.probes.linear import accuracy_estimate, control_labels, fact_folds, fit_logistic_batched


@dataclass(frozen=True)
class ProbeSettings:
    """How concept probes are trained and scored."""

    folds: int = 3  # k of the k-fold split by group
    weight_decay: float = 1e-2  # L2 on the standardized-feature weights
    max_iter: int = 200  # L-BFGS iterations (all layers are fit as one problem)
    seed: int = 0  # folds, control labels, bootstrap


def group_folds(groups: Sequence[str], labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Fold [n] of every example; all examples of a group share a fold (stratified by label)."""
    ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    return fact_folds([ids[g] for g in groups], list(labels), k, seed)


def cv_correct(x: Tensor, y: Tensor, folds: np.ndarray, n_classes: int, s: ProbeSettings) -> np.ndarray:
    """Held-out correctness [layers, n] of logistic probes on ``x`` [n, layers, d] under the given folds."""
    correct = np.zeros((x.shape[1], len(y)), dtype=bool)
    for f in sorted(set(folds.tolist())):
        test = torch.from_numpy(folds == f)
        probes = fit_logistic_batched(
            x[~test].transpose(0, 1), y[~test], n_classes, s.weight_decay, s.max_iter
        )
        for layer, probe in enumerate(probes):
            correct[layer, test.numpy()] = (probe.predict(x[test, layer]).cpu() == y[test]).numpy()
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
    real = cv_correct(feats, y, folds, n_classes, s)
    ctrl = cv_correct(feats, yc, folds, n_classes, s)
    return [
        {
            "accuracy": accuracy_estimate(real[layer], groups, s.seed),
            "control": accuracy_estimate(ctrl[layer], groups, s.seed),
            "selectivity": _diff_estimate(real[layer], ctrl[layer], groups, s.seed),
        }
        for layer in range(feats.shape[1])
    ]


def _diff_estimate(a: np.ndarray, b: np.ndarray, groups: Sequence[str], seed: int) -> Estimate:
    return accuracy_estimate(a.astype(float) - b.astype(float), groups, seed)


def majority_share(labels: Sequence[int]) -> float:
    counts = np.bincount(np.asarray(labels))
    return float(counts.max() / counts.sum())
