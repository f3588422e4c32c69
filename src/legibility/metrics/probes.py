"""Probe selectivity: does one neuron decode a concept as well as the whole layer does?

Both probes are closed form (no scikit-learn, no optimizer to tune):

* full-layer probe: a ridge classifier -- ridge regression of one-hot labels on the layer's standardized
  activations (dual form, since prompts < neurons), predicting the arg-max;
* single-neuron probe: for every neuron, a 1-D linear discriminant (Gaussian classes with a shared
  variance, class priors from the training set), i.e. a per-neuron threshold rule generalized to several
  classes; the neuron with the best *training* accuracy is the layer's single-neuron probe.

Train/test splits are by fact (all prompts of a fact on the same side), k-fold, stratified by label, so
every prompt gets a held-out prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from legibility.metrics.spec import MetricContext, register
from legibility.metrics.stats import Estimate, bootstrap


@dataclass(frozen=True)
class ProbeConfig:
    """Probe selectivity settings."""

    folds: int = 3  # k of the k-fold split by fact
    ridge: float = 10.0  # lambda of the full-layer ridge classifier (standardized activations)
    min_facts_per_class: int = 2  # object classes need this many facts (one to train on, one to test)
    layers: tuple[int, ...] | None = None  # layers probed (None: all)


@dataclass
class ProbeResult:
    """Held-out correctness of both probes at every probed layer."""

    full: Tensor  # [layers, n] bool, full-layer probe correct on example i (held out)
    single: Tensor  # [layers, n] bool, best-training-accuracy single neuron correct on example i
    chance: float  # share of the most frequent label
    layers: list[int]  # the layer index of each row

    @property
    def best(self) -> int:
        """Row of the layer where the full-layer probe is most accurate (first on ties)."""
        return int(torch.argmax(self.full.float().mean(1)))


def fact_folds(groups: Sequence[int], labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Fold [n] of every example: facts (groups) of each label dealt round-robin, so each label spreads
    over folds and a fact never straddles two."""
    rng = np.random.default_rng(seed)
    label_of = {}
    for g, y in zip(groups, labels, strict=True):
        label_of[g] = y
    fold_of: dict[int, int] = {}
    turn = 0
    for y in sorted(set(label_of.values())):
        facts = sorted(g for g, lab in label_of.items() if lab == y)
        for g in rng.permutation(facts):
            fold_of[int(g)] = turn % k
            turn += 1
    return np.array([fold_of[g] for g in groups])


def _standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mu, sd = train.mean(0), train.std(0, unbiased=False)
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))  # a neuron constant in training stays unscaled
    return (train - mu) / sd, (test - mu) / sd


def ridge_predict(x_train: Tensor, y_train: Tensor, x_test: Tensor, n_classes: int, ridge: float) -> Tensor:
    """Ridge classifier: x [n, d] standardized, y [n] -> predicted labels [n_test]; dual closed form."""
    onehot = torch.nn.functional.one_hot(y_train, n_classes).double()  # [n, C]
    target = onehot - onehot.mean(0)  # centred: the intercept is the mean
    xt, xs = x_train.double(), x_test.double()
    gram = xt @ xt.T + ridge * torch.eye(xt.shape[0], dtype=torch.float64, device=xt.device)  # [n, n]
    alpha = torch.linalg.solve(gram, target)  # [n, C]
    scores = xs @ (xt.T @ alpha) + onehot.mean(0)  # [n_test, C]
    return scores.argmax(-1)


def single_neuron_lda(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, n_classes: int
) -> tuple[Tensor, Tensor]:
    """1-D LDA on every neuron: (training accuracy [d], test predictions [d, n_test]).

    Class c scores x * mu_c / var - mu_c^2 / (2 var) + log prior_c (shared within-class variance).
    """
    onehot = torch.nn.functional.one_hot(y_train, n_classes).double()  # [n, C]
    count = onehot.sum(0)  # [C]
    xt, xs = x_train.double(), x_test.double()
    mu = (onehot.T @ xt) / count.clamp_min(1)[:, None]  # [C, d]
    resid = xt - mu[y_train]  # [n, d]
    var = resid.pow(2).mean(0).clamp_min(1e-12)  # [d]
    prior = torch.log(count / count.sum()).where(
        count > 0, torch.tensor(-torch.inf, dtype=torch.float64, device=xt.device)
    )

    def predict(x: Tensor) -> Tensor:  # x [m, d] -> [d, m]
        s = x[:, :, None] * (mu.T / var[:, None])[None] - (mu.T.pow(2) / (2 * var[:, None]))[None] + prior
        return s.argmax(-1).T  # [m, d, C] -> [d, m]

    train_acc = (predict(xt) == y_train[None]).double().mean(1)  # [d]
    return train_acc, predict(xs)


def probe_accuracies(
    acts: Tensor,
    labels: Sequence[int],
    groups: Sequence[int],
    config: ProbeConfig | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Held-out correctness of the full-layer and single-neuron probes for ``acts`` [n, layers, neurons],
    integer ``labels`` [n] and fact ids ``groups`` [n] (the split unit)."""
    cfg = config or ProbeConfig()
    y = torch.tensor(list(labels), dtype=torch.long, device=acts.device)
    n_classes = int(y.max()) + 1
    folds = fact_folds(list(groups), list(labels), cfg.folds, seed)
    layers = list(cfg.layers) if cfg.layers is not None else list(range(acts.shape[1]))
    full = torch.zeros(len(layers), len(y), dtype=torch.bool, device=acts.device)
    single = torch.zeros_like(full)
    for f in sorted(set(folds.tolist())):
        test = torch.from_numpy(folds == f).to(acts.device)
        train = ~test
        for row, layer in enumerate(layers):
            x_tr, x_te = _standardize(acts[train, layer].double(), acts[test, layer].double())
            full[row, test] = ridge_predict(x_tr, y[train], x_te, n_classes, cfg.ridge) == y[test]
            train_acc, preds = single_neuron_lda(x_tr, y[train], x_te, n_classes)
            single[row, test] = preds[int(torch.argmax(train_acc))] == y[test]
    chance = float(torch.bincount(y).max()) / len(y)
    return ProbeResult(full, single, chance, layers)


def selectivity_estimates(result: ProbeResult, groups: Sequence[int], seed: int = 0) -> dict[str, Estimate]:
    """Estimates at the best layer, bootstrapped over facts (per fact: mean correctness of its prompts)."""
    row = result.best
    ids = sorted(set(groups))
    pos = {g: i for i, g in enumerate(ids)}
    per_fact = np.zeros((len(ids), 2))
    count = np.zeros(len(ids))
    for i, g in enumerate(groups):
        per_fact[pos[g]] += [float(result.single[row, i]), float(result.full[row, i])]
        count[pos[g]] += 1
    per_fact /= count[:, None]
    c = result.chance

    def ratio(x: np.ndarray) -> float:
        full = x[:, 1].mean()
        return float(x[:, 0].mean() / full) if full > 0 else float("nan")

    def above_chance(x: np.ndarray) -> float:
        full = x[:, 1].mean()
        return float((x[:, 0].mean() - c) / (full - c)) if full > c else float("nan")

    kw = {"seed": seed}
    return {
        "selectivity": bootstrap(ratio, per_fact, **kw),
        "selectivity_above_chance": bootstrap(above_chance, per_fact, **kw),
        "single_accuracy": bootstrap(lambda x: float(x[:, 0].mean()), per_fact, **kw),
        "full_accuracy": bootstrap(lambda x: float(x[:, 1].mean()), per_fact, **kw),
        "chance": Estimate(c, c, c, len(ids)),
        "best_layer": Estimate(float(result.layers[row]), float("nan"), float("nan"), len(ids)),
    }


def _tasks(ctx: MetricContext, min_facts: int) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """Task -> (activation rows, label per row, fact index per row) for relation and object labels."""
    facts = ctx.usable_facts()
    _, owner = ctx.answer_activations()
    out: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for task in ("relation", "object"):
        values = [getattr(r.fact, task) for r in facts]
        keep = sorted(v for v in set(values) if values.count(v) >= min_facts)
        if len(keep) < 2:
            continue  # fewer than two classes with enough facts: nothing to decode
        code = {v: i for i, v in enumerate(keep)}
        rows = [i for i, f in enumerate(owner) if values[f] in code]
        out[task] = (rows, [code[values[owner[i]]] for i in rows], [owner[i] for i in rows])
    return out


@register(
    "probe",
    definition="""Labels: each prompt's relation, and its object where an object occurs in at least 2 facts
    (classes with fewer are dropped). k-fold (k = 3) split by fact, stratified by label. At every layer, a
    full-layer ridge classifier on the standardized answer-position activations and, as single-neuron probe,
    the neuron whose 1-D linear discriminant has the best training accuracy. Best layer l* = the layer of
    highest held-out full-layer accuracy. selectivity = held-out single-neuron accuracy at l* / held-out
    full-layer accuracy at l* (1 = one neuron decodes the concept as well as the layer);
    selectivity_above_chance = (single - chance) / (full - chance), chance = share of the most frequent label.
    Higher = concepts readable from individual neurons. Bootstrap over facts (layer l* held fixed).""",
    keys={
        "relation.selectivity": "higher",
        "relation.selectivity_above_chance": "higher",
        "object.selectivity": "higher",
        "object.selectivity_above_chance": "higher",
    },
    needs=["model"],
)
def probe(ctx: MetricContext) -> dict[str, Estimate]:
    cfg = ctx.config("probe", ProbeConfig())
    acts, _ = ctx.answer_activations()  # [n_prompts, layers, neurons]
    tasks = _tasks(ctx, cfg.min_facts_per_class)
    out: dict[str, Estimate] = {}
    for task in ("relation", "object"):
        if task not in tasks:  # keep the key set stable: NaN with n = 0 says "could not be measured"
            out.update({f"{task}.{k}": _NAN for k in _KEYS})
            continue
        rows, labels, groups = tasks[task]
        result = probe_accuracies(acts[rows], labels, groups, cfg, ctx.seed)
        for key, est in selectivity_estimates(result, groups, ctx.seed).items():
            out[f"{task}.{key}"] = est
    return out


_NAN = Estimate(float("nan"), float("nan"), float("nan"), 0)
_KEYS = (
    "selectivity",
    "selectivity_above_chance",
    "single_accuracy",
    "full_accuracy",
    "chance",
    "best_layer",
)
