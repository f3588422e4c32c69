"""Linear probe math on feature matrices: logistic regression, mass-mean, CCS, splits and control tasks.

Everything here works on tensors ``x [n, d]`` with integer labels; no model is involved, so every function is
pinned by tests on synthetic data with a planted answer (tests/test_probes.py).

* logistic: multinomial logistic regression on standardized features, full-batch L-BFGS (deterministic),
  L2 penalty ``weight_decay * |W|^2 / 2`` on the weights (not the bias).
* mass-mean (Marks & Tegmark, 2023): direction = mean(true) - mean(false); the ``iid`` variant multiplies by
  the inverse (ridge-regularized) within-class covariance. Threshold: midpoint of the projected class means.
* CCS (Burns et al., 2022): on contrast pairs (x_a, x_b), each side normalized on its own, a probe
  p = sigmoid(w.x + b) minimizing mean (p_a - (1 - p_b))^2 + mean min(p_a, p_b)^2, best of several restarts.
  Its sign is arbitrary; it is fixed on the training labels only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from legibility.metrics.probes import fact_folds

__all__ = [
    "CCSProbe",
    "LinearProbe",
    "control_labels",
    "fact_folds",
    "fit_ccs",
    "fit_ccs_batched",
    "fit_logistic",
    "fit_logistic_batched",
    "fit_mass_mean",
    "group_split",
    "standardizer",
]


def standardizer(train: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation [d] of the training rows; a constant feature keeps scale 1."""
    mu, sd = train.mean(0), train.std(0, unbiased=False)
    return mu, torch.where(sd > 1e-6, sd, torch.ones_like(sd))


@dataclass
class LinearProbe:
    """scores = ((x - mu) / sd) @ weight + bias; ``weight`` [d, C] (C = 1: a binary probe, score > 0 = class 1)."""

    weight: Tensor  # [d, C]
    bias: Tensor  # [C]
    mu: Tensor  # [d]
    sd: Tensor  # [d]

    def scores(self, x: Tensor) -> Tensor:
        z = (x.to(self.mu) - self.mu) / self.sd
        return z @ self.weight + self.bias  # [n, C]

    def predict(self, x: Tensor) -> Tensor:
        s = self.scores(x)
        return (s[:, 0] > 0).long() if s.shape[1] == 1 else s.argmax(-1)

    def direction(self) -> Tensor:
        """Unit direction in the raw (unstandardized) feature space of a binary probe: weight / sd."""
        w = self.weight[:, 0] / self.sd
        return w / w.norm()


def fit_logistic(
    x: Tensor, y: Tensor, n_classes: int | None = None, weight_decay: float = 1e-2, max_iter: int = 200
) -> LinearProbe:
    """Multinomial logistic regression on standardized ``x`` [n, d], labels ``y`` [n] (full-batch L-BFGS)."""
    return fit_logistic_batched(x[None], y, n_classes, weight_decay, max_iter)[0]


def fit_logistic_batched(
    x: Tensor, y: Tensor, n_classes: int | None = None, weight_decay: float = 1e-2, max_iter: int = 200
) -> list[LinearProbe]:
    """Independent logistic probes for every slice ``x[k]`` [n, d] of ``x`` [k, n, d] (e.g. one per layer),
    fit jointly: the summed objective is separable, so each probe reaches its own optimum, and one L-BFGS
    run replaces k of them."""
    x = x.double()
    c = int(n_classes if n_classes is not None else int(y.max()) + 1)
    mu, sd = standardizer_batched(x)
    z = (x - mu[:, None]) / sd[:, None]  # [k, n, d]
    k, n, d = z.shape
    w = torch.zeros(k, d, c, dtype=z.dtype, device=z.device, requires_grad=True)
    b = torch.zeros(k, 1, c, dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )
    target = y.to(z.device).long().repeat(k)

    def closure() -> Tensor:
        opt.zero_grad()
        logits = (z @ w + b).reshape(k * n, c)
        ce = torch.nn.functional.cross_entropy(logits, target, reduction="sum") / n
        loss = ce + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight, bias = w.detach(), b.detach()[:, 0]
    if c == 2:  # one score column: logit(class 1) - logit(class 0)
        weight, bias = weight[..., 1:] - weight[..., :1], bias[:, 1:] - bias[:, :1]
    return [LinearProbe(weight[i], bias[i], mu[i], sd[i]) for i in range(k)]


def standardizer_batched(x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`standardizer` of every slice of ``x`` [k, n, d] -> mean, sd [k, d]."""
    mu, sd = x.mean(1), x.std(1, unbiased=False)
    return mu, torch.where(sd > 1e-6, sd, torch.ones_like(sd))


def fit_mass_mean(x: Tensor, y: Tensor, iid: bool = False, ridge: float = 1e-2) -> LinearProbe:
    """Mass-mean probe for binary ``y``: direction mean(x | y=1) - mean(x | y=0) in raw feature space.

    ``iid``: the direction is multiplied by the inverse within-class covariance (+ ``ridge`` times its mean
    eigenvalue on the diagonal). The bias puts the threshold at the midpoint of the two class means.
    """
    x = x.double()
    pos, neg = x[y == 1].mean(0), x[y == 0].mean(0)
    direction = pos - neg  # [d]
    if iid:
        resid = torch.cat([x[y == 1] - pos, x[y == 0] - neg])
        cov = resid.T @ resid / resid.shape[0]
        cov = cov + ridge * cov.diagonal().mean() * torch.eye(
            cov.shape[0], dtype=cov.dtype, device=cov.device
        )
        direction = torch.linalg.solve(cov, direction)
    mid = (pos + neg) / 2
    ones = torch.ones_like(direction)
    return LinearProbe(direction[:, None], -(mid @ direction)[None], torch.zeros_like(direction), ones)


@dataclass
class CCSProbe:
    """A CCS probe: p(x) = sigmoid(w . normalize(x) + b), each side of a pair normalized with its own stats."""

    weight: Tensor  # [d]
    bias: Tensor  # []
    stats: tuple[Tensor, Tensor, Tensor, Tensor]  # mean_a, sd_a, mean_b, sd_b of the training pairs
    loss: float  # final unsupervised loss of the chosen restart
    sign: float = 1.0  # +1 or -1, fixed on training labels

    def truth_score(self, xa: Tensor, xb: Tensor) -> Tensor:
        """[n] in [0, 1]: averaged belief that side a is the true one (0.5 (p_a + 1 - p_b)), sign applied."""
        ma, sa, mb, sb = self.stats
        pa = torch.sigmoid(((xa.double() - ma) / sa) @ self.weight + self.bias)
        pb = torch.sigmoid(((xb.double() - mb) / sb) @ self.weight + self.bias)
        s = 0.5 * (pa + 1 - pb)
        return s if self.sign > 0 else 1 - s

    def direction(self) -> Tensor:
        w = self.sign * self.weight
        return w / w.norm()


def fit_ccs(
    xa: Tensor,
    xb: Tensor,
    y_train: Tensor | None = None,
    restarts: int = 10,
    steps: int = 1000,
    lr: float = 1e-2,
    seed: int = 0,
) -> CCSProbe:
    """Unsupervised CCS on contrast pairs ``xa``, ``xb`` [n, d]; ``y_train`` [n] (1 = side a true), if given,
    only fixes the sign (training accuracy >= 0.5) and plays no part in the fit."""
    return fit_ccs_batched(xa[None], xb[None], y_train, restarts, steps, lr, seed)[0]


def fit_ccs_batched(
    xa: Tensor,
    xb: Tensor,
    y_train: Tensor | None = None,
    restarts: int = 10,
    steps: int = 1000,
    lr: float = 1e-2,
    seed: int = 0,
) -> list[CCSProbe]:
    """:func:`fit_ccs` for every slice of ``xa``, ``xb`` [k, n, d]; all restarts of all slices run as one
    Adam problem (Adam is coordinate-wise and the summed loss separable, so each is fit as if alone)."""
    xa, xb = xa.double(), xb.double()
    ma, sa = standardizer_batched(xa)
    mb, sb = standardizer_batched(xb)
    za, zb = (xa - ma[:, None]) / sa[:, None], (xb - mb[:, None]) / sb[:, None]  # [k, n, d]
    k, n, d = za.shape
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(restarts, k, d, 1, generator=gen, dtype=torch.float64) / d**0.5
    w = w0.to(za.device).requires_grad_(True)
    b = torch.zeros(restarts, k, 1, 1, dtype=za.dtype, device=za.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)

    def losses() -> Tensor:  # [restarts, k]
        pa, pb = torch.sigmoid(za @ w + b)[..., 0], torch.sigmoid(zb @ w + b)[..., 0]  # [R, k, n]
        return (pa - (1 - pb)).pow(2).mean(-1) + torch.minimum(pa, pb).pow(2).mean(-1)

    for _ in range(steps):
        opt.zero_grad()
        losses().sum().backward()
        opt.step()
    with torch.no_grad():
        final = losses()
    best = final.argmin(0)  # [k]
    out = []
    for i in range(k):
        r = int(best[i])
        probe = CCSProbe(
            w.detach()[r, i, :, 0], b.detach()[r, i, 0, 0], (ma[i], sa[i], mb[i], sb[i]), float(final[r, i])
        )
        if y_train is not None:
            acc = (
                ((probe.truth_score(xa[i], xb[i]) > 0.5).long().cpu() == y_train.cpu().long()).double().mean()
            )
            probe.sign = 1.0 if acc >= 0.5 else -1.0
        out.append(probe)
    return out


def ccs_loss(pa: Tensor, pb: Tensor) -> Tensor:
    """Consistency (p_a + p_b = 1) plus confidence (not both 0.5) of Burns et al."""
    return (pa - (1 - pb)).pow(2).mean() + torch.minimum(pa, pb).pow(2).mean()


def group_split(groups: Sequence[object], test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train/test masks [n] with whole groups on one side (a share ``test_share`` of the groups)."""
    ids = sorted({str(g) for g in groups})
    rng = np.random.default_rng(seed)
    n_test = max(1, round(test_share * len(ids))) if len(ids) > 1 else 0
    test_ids = set(rng.permutation(ids)[:n_test].tolist())
    test = np.array([str(g) in test_ids for g in groups])
    return ~test, test


def control_labels(types: Sequence[object], labels: Sequence[int], seed: int) -> list[int]:
    """Hewitt & Liang control task: every type (word type, subject or fact) gets one random label drawn from
    the empirical label distribution, shared by all its examples."""
    rng = np.random.default_rng(seed)
    pool = np.asarray(labels)
    assigned: dict[str, int] = {}
    for t in sorted({str(t) for t in types}):
        assigned[t] = int(rng.choice(pool))
    return [assigned[str(t)] for t in types]
