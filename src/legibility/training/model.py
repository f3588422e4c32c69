"""Build small GPT-2 or Llama style causal LMs from one :class:`ModelConfig`, with SoLU available.

SoLU lives with the models (:mod:`legibility.models.activations`), registered with transformers here and
whenever a model is loaded, so a saved SoLU model loads with ``legibility.load_model`` (or, after
``register_activations()``, with plain ``AutoModelForCausalLM.from_pretrained``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from legibility.errors import LegibilityError
from legibility.models.activations import SOLU, SoLU, register_activations
from legibility.models.sites import architecture, get_path
from legibility.registry import Registry
from legibility.training.config import ModelConfig

__all__ = [
    "HF_ACTIVATIONS",
    "SOLU",
    "TRAINABLE",
    "SoLU",
    "build_model",
    "ffn_weights",
    "neuron_axes",
    "register_solu",
]

# Our activation names -> transformers' names (GELU: the exact erf form; GPT-2's default is the tanh one).
HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "solu": SOLU}
register_solu = register_activations  # the name this module has always had
register_activations()


# A trainable family: its Hugging Face config from our ModelConfig (its architecture must be a row of the
# architecture table, legibility.models.sites.FAMILIES, which says where its FFN neurons are).
ConfigBuilder = Callable[[ModelConfig, int, int, int], Any]  # (cfg, vocab_size, pad_id, eos_id) -> config
TRAINABLE: Registry[ConfigBuilder] = Registry("trainable model family")


@TRAINABLE.register("gpt2")
def _gpt2(cfg: ModelConfig, vocab_size: int, pad_id: int, eos_id: int) -> Any:
    """LayerNorm, a plain MLP, learned positions."""
    import transformers as tr

    return tr.GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.context,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ffn,
        activation_function=HF_ACTIVATIONS[cfg.activation],
        resid_pdrop=cfg.builtin_dropout,
        embd_pdrop=cfg.builtin_dropout,
        attn_pdrop=cfg.builtin_dropout,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )


@TRAINABLE.register("llama")
def _llama(cfg: ModelConfig, vocab_size: int, pad_id: int, eos_id: int) -> Any:
    """RMSNorm, a gated MLP (the activation applies to the gate), RoPE."""
    import transformers as tr

    return tr.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ffn,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.context,
        hidden_act=HF_ACTIVATIONS[cfg.activation],
        attention_dropout=cfg.builtin_dropout,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )


def build_model(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, eos_id: int = 0, seed: int = 0):
    """A freshly initialized ``*ForCausalLM`` of a trainable family (eval mode off: the trainer sets
    train/eval itself)."""
    import transformers as tr

    hf = TRAINABLE[cfg.family](cfg, vocab_size, pad_id, eos_id)
    torch.manual_seed(seed)
    return tr.AutoModelForCausalLM.from_config(hf, dtype=torch.float32)


def ffn_modules(model: nn.Module, layer: int) -> tuple[list[nn.Module], nn.Module]:
    """(input projections, output projection) of one layer's FFN, from the architecture table's row."""
    row = architecture(getattr(model.config, "model_type", ""))
    if row is None or not row.ffn_in:
        raise LegibilityError(
            f"model family {getattr(model.config, 'model_type', '?')!r} has no FFN input projections in the "
            "architecture table (legibility.models.sites.FAMILIES, field ffn_in)"
        )
    block = get_path(model, row.site.layers)[layer]  # type: ignore[index]
    ins: list[nn.Module] = [get_path(block, p) for p in row.ffn_in]  # type: ignore[misc]
    return ins, get_path(block, row.site.module)  # type: ignore[return-value]


def _linear(module: nn.Module) -> Tensor:
    """A projection's weight in nn.Linear orientation [out, in] (GPT-2's Conv1D stores [in, out])."""
    from transformers.pytorch_utils import Conv1D

    w = module.weight
    return w.T if isinstance(module, Conv1D) else w  # type: ignore[return-value]


def ffn_weights(model: nn.Module, layer: int) -> tuple[list[Tensor], Tensor]:
    """(input projections as [neurons, d_model], output projection as [d_model, neurons]) of one layer.

    Views of the parameters in the nn.Linear orientation, so that penalties and permutations read the same
    way for every family (GPT-2: ([c_fc.T], c_proj.T); Llama: ([gate, up], down)).
    """
    ins, out = ffn_modules(model, layer)
    return [_linear(m) for m in ins], _linear(out)


def ffn_biases(model: nn.Module, layer: int) -> list[Tensor]:
    """Biases indexed by neuron (GPT-2 c_fc.bias [neurons]; Llama has none)."""
    return [m.bias for m in ffn_modules(model, layer)[0] if getattr(m, "bias", None) is not None]  # type: ignore[misc]


def neuron_axes(model: nn.Module, layer: int) -> list[tuple[nn.Parameter, int]]:
    """(parameter, axis indexed by the layer's FFN neurons) for every parameter touching those neurons."""
    from transformers.pytorch_utils import Conv1D

    ins, out = ffn_modules(model, layer)
    axes = []
    for m in ins:
        axes.append((m.weight, 1 if isinstance(m, Conv1D) else 0))
        if getattr(m, "bias", None) is not None:
            axes.append((m.bias, 0))
    axes.append((out.weight, 0 if isinstance(out, Conv1D) else 1))
    return axes  # type: ignore[return-value]


def n_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)  # type: ignore[union-attr, arg-type]
