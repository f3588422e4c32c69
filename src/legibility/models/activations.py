"""Activations that transformers does not ship, registered by name so saved models that use them load.

SoLU (Elhage et al., 2022) is ``LayerNorm(x * softmax(x))`` over the FFN neurons, registered in transformers'
``ACT2FN`` as ``"solu"`` whenever a model is loaded (:func:`legibility.models.loading.load_model`), so a
trained SoLU model loads like any other. The LayerNorm has no affine parameters: its gain and bias would be
redundant with the output projection that follows (a gain folds into its weight, a bias into its bias), and
keeping the activation parameter-free keeps the checkpoint a standard HF one. The FFN neuron site (the input
of the output projection) therefore reads the post-LayerNorm value, as SoLU's interpretability claims require.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SOLU = "solu"


class SoLU(nn.Module):
    """x [..., neurons] -> LayerNorm(x * softmax(x, -1)) without affine parameters [..., neurons]."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = x * torch.softmax(x, dim=-1)
        return F.layer_norm(y, y.shape[-1:], eps=self.eps)


def register_activations() -> None:
    """Make ``hidden_act="solu"`` / ``activation_function="solu"`` resolvable by transformers (idempotent)."""
    from transformers import activations

    if SOLU not in activations.ACT2FN:
        activations.ACT2FN[SOLU] = SoLU
