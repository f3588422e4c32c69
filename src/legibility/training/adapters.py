"""Which parameters a finetune updates: all of them, the FFN weights only, or low-rank adapters on the FFN.

``full`` trains every parameter; ``ffn`` only the FFN matrices (and biases) of the chosen layers, where the
knowledge neurons live (GPT-2 ``c_fc``/``c_proj``, Llama ``gate_proj``/``up_proj``/``down_proj``); ``lora``
freezes everything and adds a low-rank term to those matrices, W + (alpha / rank) B A with B = 0 at the start
(Hu et al. 2021), as a ``torch.nn.utils.parametrize`` parametrization: the modules stay where they are, so the
neuron sites and their hooks are unchanged. :func:`merge_adapters` folds the adapters into the weights, after
which the model is a plain Hugging Face model again (what is saved).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from legibility.errors import LegibilityError
from legibility.models.sites import FAMILIES, get_path

Update = Literal["full", "ffn", "lora"]

# model_type -> names of the FFN matrices inside a block's MLP
_FFN = {"gpt2": ("c_fc", "c_proj")}
_GATED = ("gate_proj", "up_proj", "down_proj")


def ffn_modules(model: nn.Module, layers: list[int] | None = None) -> list[nn.Module]:
    """The FFN projection modules (input and output side) of the given layers (all when None)."""
    mt = str(model.config.model_type)  # type: ignore[union-attr]
    arch = FAMILIES.get(mt)
    if arch is None or arch.masked:
        raise LegibilityError(
            f"finetuning supports causal LMs of {sorted(k for k, a in FAMILIES.items() if not a.masked)}, not {mt!r}"
        )
    blocks = list(get_path(model, arch.site.layers))  # type: ignore[call-overload]
    chosen = range(len(blocks)) if layers is None else layers
    bad = [i for i in chosen if not 0 <= i < len(blocks)]
    if bad:
        raise LegibilityError(f"layers {bad} do not exist; the model has layers 0..{len(blocks) - 1}")
    names = _FFN.get(mt, _GATED)
    mlp_path = arch.site.module.rsplit(".", 1)[0]  # "mlp.c_proj" -> "mlp"
    return [getattr(get_path(blocks[i], mlp_path), n) for i in chosen for n in names]


class LowRank(nn.Module):
    """weight -> weight + (alpha / rank) B A: A [rank, cols] random, B [rows, rank] zero at the start."""

    def __init__(self, shape: torch.Size, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        rows, cols = shape
        self.A = nn.Parameter(torch.randn(rank, cols, generator=generator) / math.sqrt(cols))
        self.B = nn.Parameter(torch.zeros(rows, rank))
        self.scale = alpha / rank

    def forward(self, weight: Tensor) -> Tensor:
        return weight + (self.B @ self.A).to(weight.dtype) * self.scale


def configure_updates(
    model: nn.Module,
    update: Update,
    layers: list[int] | None = None,
    rank: int = 8,
    alpha: float = 16.0,
    seed: int = 0,
) -> int:
    """Set which parameters train (and add the adapters for ``lora``); returns the number that train."""
    if update not in ("full", "ffn", "lora"):
        raise LegibilityError(f"update must be one of full, ffn, lora; got {update!r}")
    modules = ffn_modules(model, layers)
    for p in model.parameters():
        p.requires_grad_(update == "full")
    if update == "ffn":
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(True)
    elif update == "lora":
        if rank < 1:
            raise LegibilityError(f"lora rank must be >= 1, got {rank}")
        gen = torch.Generator().manual_seed(seed)
        for m in modules:
            w: Tensor = m.weight  # type: ignore[assignment]
            adapter = LowRank(w.shape, rank, alpha, gen).to(w.device)
            parametrize.register_parametrization(m, "weight", adapter)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_adapters(model: nn.Module) -> None:
    """Fold every low-rank adapter into its weight (a no-op without adapters)."""
    for m in list(model.modules()):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
