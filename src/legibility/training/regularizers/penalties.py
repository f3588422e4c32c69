"""FFN-neuron dropout, explicit dropout, activation decorrelation, activation and weight sparsity.

Every penalty is a pure function of tensors (tested on hand-computed cases) wrapped by a registered
Regularizer that applies it to the FFN activations or weights of each layer and averages over layers.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from legibility.errors import LegibilityError
from legibility.training.model import ffn_weights
from legibility.training.regularizers.base import Regularizer, RegularizerConfig, StepContext, register

# ---------------------------------------------------------------- pure penalties


def correlation_l1(acts: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean |corr(i, j)| over ordered pairs i != j of neurons; acts [samples, neurons] -> scalar.

    Correlations use population (1/n) moments; a constant neuron has correlation 0 with every other.
    """
    n, d = acts.shape
    x = acts - acts.mean(0, keepdim=True)
    cov = x.T @ x / n  # [d, d]
    std = cov.diagonal().clamp_min(0).add(eps).sqrt()
    corr = cov / (std[:, None] * std[None, :])
    off = corr - torch.diag_embed(corr.diagonal())
    return off.abs().sum() / (d * (d - 1))


def decov(acts: Tensor) -> Tensor:
    """DeCov (Cogswell et al., 2016): 0.5 * (||C||_F^2 - ||diag C||^2), C the 1/n covariance [neurons^2]."""
    n = acts.shape[0]
    x = acts - acts.mean(0, keepdim=True)
    cov = x.T @ x / n
    return 0.5 * (cov.pow(2).sum() - cov.diagonal().pow(2).sum())


def activation_l1(acts: Tensor) -> Tensor:
    """Mean |a| over all entries."""
    return acts.abs().mean()


def activation_topk(acts: Tensor, k: int) -> Tensor:
    """Mass outside each row's top-k: mean over rows of (sum of |a| not among the k largest |a|) / neurons."""
    mag = acts.abs()
    kept = mag.topk(min(k, mag.shape[-1]), dim=-1).values.sum(-1)
    return ((mag.sum(-1) - kept) / mag.shape[-1]).mean()


def weight_l1(weights: list[Tensor]) -> Tensor:
    """Mean |w| over all entries of all matrices."""
    total = sum(w.abs().sum() for w in weights)
    return total / sum(w.numel() for w in weights)  # type: ignore[return-value]


def dropout_curvature(logits: Tensor, delta: Tensor) -> Tensor:
    """0.5 * delta^T H delta with H = diag(s) - s s^T, the Hessian of cross-entropy in the logits.

    logits, delta [..., vocab] -> mean over rows. This is the explicit regularizer of dropout
    (Wei, Kakade & Ma 2020) when ``delta`` is the logit change under dropout noise, to first order.
    """
    s = logits.softmax(-1)
    quad = (s * delta.pow(2)).sum(-1) - (s * delta).sum(-1).pow(2)
    return 0.5 * quad.mean()


def magnitude_mask(w: Tensor, density: float) -> Tensor:
    """Boolean mask keeping the round(density * numel) largest |w| (ties: lower flat index first)."""
    keep = max(round(density * w.numel()), 1)
    idx = w.abs().flatten().topk(keep, sorted=False).indices
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    mask[idx] = True
    return mask.view_as(w)


def _flat(acts: Tensor) -> Tensor:
    return acts.reshape(-1, acts.shape[-1]).float()  # [batch * pos, neurons]


def _layer_mean(ctx: StepContext, fn) -> Tensor:
    return torch.stack([fn(_flat(a)) for a in ctx.activations.values()]).mean()


# ---------------------------------------------------------------- regularizers


@dataclass(frozen=True)
class FfnDropoutConfig(RegularizerConfig):
    """Dropout on the FFN neurons; coef is unused, the schedule's factor scales p."""

    p: float = 0.1  # drop probability at full strength


@register(
    "ffn_dropout", FfnDropoutConfig, "dropout on the FFN neurons (the knowledge-neuron site), training only"
)
class FfnDropout(Regularizer[FfnDropoutConfig]):
    """Inverted dropout on the FFN neuron site (the activation the attribution reads: GPT-2's ``mlp.act``
    output, Llama's ``act(gate) * up``), at every position, in training mode only: the essay's dropout.
    ``model.builtin_dropout`` (Hugging Face's) never reaches these neurons."""

    def forward(self, ctx: StepContext):
        p = self.config.p * self.factor(ctx.step, ctx.total_steps)
        if p <= 0 or not ctx.model.training:
            return contextlib.nullcontext()
        return ctx.sites.patch(
            {layer: (lambda a: torch.nn.functional.dropout(a, p)) for layer in range(ctx.sites.n_layers)}
        )


@dataclass(frozen=True)
class ExplicitDropoutConfig(RegularizerConfig):
    """Dropout's explicit regularizer plus gradient noise instead of dropout (Wei, Kakade & Ma 2020)."""

    p: float = 0.1  # the dropout probability being imitated
    eps: float = 0.1  # finite-difference scale of the logit change (smaller: closer to the linearization)
    grad_noise: float = 0.0  # std of isotropic Gaussian noise added to every gradient (times the factor)


@register("explicit_dropout", ExplicitDropoutConfig, "dropout's explicit curvature penalty + gradient noise")
class ExplicitDropout(Regularizer[ExplicitDropoutConfig]):
    """Penalty = E_r[0.5 dz^T H dz], dz the logit change when FFN activations h get the dropout noise
    sqrt(p / (1 - p)) * h * r (r Rademacher, the same variance as dropout's), measured as a forward
    difference with step ``eps`` and divided by it. E over r of this quadratic form is Wei et al.'s
    explicit regularizer sum_j p/(1-p) h_j^2 J_j^T H J_j (Gauss-Newton form) summed over all layers.
    Their gradient noise has dropout's covariance; ours is isotropic (a documented simplification)."""

    needs_activations = True

    def penalty(self, ctx: StepContext) -> Tensor:
        assert ctx.logits is not None
        sigma = math.sqrt(self.config.p / (1.0 - self.config.p)) * self.config.eps
        noise = {
            layer: sigma * torch.randint(0, 2, a.shape, device=a.device).mul(2).sub(1).to(a.dtype)
            for layer, a in ctx.activations.items()
        }
        fns = {layer: (lambda a, r=r: a + a * r) for layer, r in noise.items()}
        with ctx.sites.patch(fns):
            noisy = ctx.model(input_ids=ctx.input_ids).logits
        delta = (noisy - ctx.logits) / self.config.eps
        return dropout_curvature(ctx.logits.float(), delta.float())

    def after_backward(self, ctx: StepContext) -> None:
        std = self.config.grad_noise * self.factor(ctx.step, ctx.total_steps)
        if std > 0:
            for p in ctx.model.parameters():
                if p.grad is not None:
                    p.grad.add_(torch.randn_like(p.grad) * std)


@dataclass(frozen=True)
class DecorrelationConfig(RegularizerConfig):
    """Penalize correlated FFN neurons (all positions of the batch are samples)."""

    form: Literal["l1", "decov"] = "l1"  # l1: mean |off-diagonal correlation|; decov: DeCov on covariances


@register("decorrelation", DecorrelationConfig, "sparse correlations between FFN neurons (L1 or DeCov)")
class Decorrelation(Regularizer[DecorrelationConfig]):
    needs_activations = True

    def penalty(self, ctx: StepContext) -> Tensor:
        return _layer_mean(ctx, correlation_l1 if self.config.form == "l1" else decov)


@dataclass(frozen=True)
class ActivationSparsityConfig(RegularizerConfig):
    """Sparse FFN activations: L1, or the mass outside each token's top-k neurons."""

    form: Literal["l1", "topk"] = "l1"  # which penalty
    k: int = 8  # neurons allowed per token (form topk)


@register("activation_sparsity", ActivationSparsityConfig, "L1 or top-k sparsity of FFN activations")
class ActivationSparsity(Regularizer[ActivationSparsityConfig]):
    needs_activations = True

    def penalty(self, ctx: StepContext) -> Tensor:
        if self.config.form == "l1":
            return _layer_mean(ctx, activation_l1)
        return _layer_mean(ctx, lambda a: activation_topk(a, self.config.k))


@dataclass(frozen=True)
class SparseConnectionsConfig(RegularizerConfig):
    """Sparse FFN weights: an L1 penalty and/or magnitude masking annealed to a final density."""

    l1: bool = True  # add coef * mean |w| of FFN weights to the loss
    density: float = 1.0  # fraction of FFN weights kept at full strength (1: no masking)


@register("sparse_connections", SparseConnectionsConfig, "L1 on FFN weights; top-k magnitude masking")
class SparseConnections(Regularizer[SparseConnectionsConfig]):
    def __init__(self, config: SparseConnectionsConfig, setup):
        if not 0.0 < config.density <= 1.0:
            raise LegibilityError(f"sparse_connections.density must be in (0, 1], got {config.density}")
        super().__init__(config, setup)

    def _matrices(self, ctx: StepContext) -> list[Tensor]:
        out = []
        for layer in range(ctx.sites.n_layers):
            ins, w_out = ffn_weights(ctx.model, layer)
            out += [*ins, w_out]
        return out

    def penalty(self, ctx: StepContext) -> Tensor | None:
        return weight_l1(self._matrices(ctx)) if self.config.l1 else None

    def after_step(self, ctx: StepContext, optimizer) -> None:
        density = 1.0 - (1.0 - self.config.density) * self.factor(ctx.step, ctx.total_steps)
        if density >= 1.0:
            return
        with torch.no_grad():
            for w in self._matrices(ctx):
                w.mul_(magnitude_mask(w, density))
