"""Concept probes: logistic probes at every layer and site, with Hewitt & Liang control tasks and selectivity
(accuracy - control accuracy), bootstrapped over groups.

The groups (facts) are dealt into ``folds`` folds, stratified by label. Fold 0 holds the *test* facts; the
other folds are the *development* facts. A layer's *validation* accuracy is the (k-1)-fold cross-validated
accuracy within the development facts; its *test* accuracy comes from a probe fit on all development facts
and scored on the test facts. The layer reported is chosen on validation (:func:`choose`), never on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from legibility.errors import LegibilityError
from legibility.metrics.stats import Estimate
from legibility.probes.linear import control_labels, fact_folds, fit_logistic_batched
from legibility.probes.selection import FIXED_DEPTH, choose_layer, fixed_layer
from legibility.probes.stats import accuracy_estimate


@dataclass(frozen=True)
class ProbeSettings:
    """How concept probes are trained and scored."""

    folds: int = 3  # k folds by group: fold 0 = test facts, the other k-1 cross-validate on development facts
    weight_decay: float = 1e-2  # L2 on the standardized-feature weights
    max_iter: int = 200  # L-BFGS iterations (all layers are fit as one problem)
    seed: int = 0  # folds, control labels, bootstrap
    fixed_depth: float = FIXED_DEPTH  # the layer fixed in advance, as a share of the depth (2/3)


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


def fit_and_score(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, n_classes: int, s: ProbeSettings
) -> np.ndarray:
    """Correctness [layers, n_test] of logistic probes fit on ``x_train`` [n, layers, d] per layer."""
    probes = fit_logistic_batched(x_train.transpose(0, 1), y_train, n_classes, s.weight_decay, s.max_iter)
    return np.stack([(p.predict(x_test[:, i]).cpu() == y_test).numpy() for i, p in enumerate(probes)])


def probe_layers(
    feats: Tensor,
    labels: Sequence[int],
    groups: Sequence[str],
    types: Sequence[str],
    settings: ProbeSettings | None = None,
) -> list[dict[str, Estimate]]:
    """Per layer of ``feats`` [n, layers, d]: ``validation`` accuracy (cross-validated on the development
    facts), and on the test facts ``accuracy``, ``control`` accuracy (random label per type, same split) and
    ``selectivity`` = accuracy - control, each bootstrapped over groups."""
    s = settings or ProbeSettings()
    if s.folds < 3:
        raise LegibilityError(
            "probing needs --folds >= 3: one fold of test facts and >= 2 to choose the layer on"
        )
    y = torch.tensor(list(labels), dtype=torch.long)
    yc = torch.tensor(control_labels(types, labels, s.seed), dtype=torch.long)
    n_classes = int(y.max()) + 1
    folds = group_folds(list(groups), list(labels), s.folds, s.seed)
    test = folds == 0
    dev = ~test
    if not test.any() or len(set(folds[dev].tolist())) < 2:
        raise LegibilityError(f"too few facts for {s.folds} folds: need facts in every fold")
    t_idx, d_idx = torch.from_numpy(np.flatnonzero(test)), torch.from_numpy(np.flatnonzero(dev))
    g_test = [groups[i] for i in t_idx.tolist()]
    g_dev = [groups[i] for i in d_idx.tolist()]
    val = cv_correct(feats[d_idx], y[d_idx], folds[dev], n_classes, s)
    real = fit_and_score(feats[d_idx], y[d_idx], feats[t_idx], y[t_idx], n_classes, s)
    ctrl = fit_and_score(feats[d_idx], yc[d_idx], feats[t_idx], yc[t_idx], n_classes, s)
    return [
        {
            "validation": accuracy_estimate(val[layer], g_dev, s.seed),
            "accuracy": accuracy_estimate(real[layer], g_test, s.seed),
            "control": accuracy_estimate(ctrl[layer], g_test, s.seed),
            "selectivity": accuracy_estimate(real[layer].astype(float) - ctrl[layer], g_test, s.seed),
        }
        for layer in range(feats.shape[1])
    ]


def choose(rows: Sequence[dict], fixed_depth: float = FIXED_DEPTH) -> dict[str, int]:
    """``chosen``: the layer with the best validation accuracy; ``fixed``: the layer fixed in advance."""
    val = [
        r["validation"].value if isinstance(r["validation"], Estimate) else r["validation"]["value"]
        for r in rows
    ]
    return {"chosen": choose_layer(val), "fixed": fixed_layer(len(rows), fixed_depth)}


def majority_share(labels: Sequence[int]) -> float:
    counts = np.bincount(np.asarray(labels))
    return float(counts.max() / counts.sum())
