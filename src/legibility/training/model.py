"""Build small GPT-2 or Llama style causal LMs from one :class:`ModelConfig`, with SoLU available.

SoLU lives with the models (:mod:`legibility.models.activations`), registered with transformers here and
whenever a model is loaded, so a saved SoLU model loads with ``legibility.load_model`` (or, after
``register_activations()``, with plain ``AutoModelForCausalLM.from_pretrained``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from legibility.models.activations import SOLU, SoLU, register_activations
from legibility.training.config import ModelConfig

__all__ = ["HF_ACTIVATIONS", "SOLU", "SoLU", "build_model", "register_solu"]

# Our activation names -> transformers' names (GELU: the exact erf form; GPT-2's default is the tanh one).
HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "solu": SOLU}
register_solu = register_activations  # the name this module has always had
register_activations()


def build_model(cfg: ModelConfig, vocab_size: int, pad_id: int = 0, eos_id: int = 0, seed: int = 0):
    """A freshly initialized ``*ForCausalLM`` (eval mode off: the trainer sets train/eval itself)."""
    import transformers as tr

    act = HF_ACTIVATIONS[cfg.activation]
    hf: tr.PretrainedConfig
    if cfg.family == "gpt2":
        hf = tr.GPT2Config(
            vocab_size=vocab_size,
            n_positions=cfg.context,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.d_ffn,
            activation_function=act,
            resid_pdrop=cfg.builtin_dropout,
            embd_pdrop=cfg.builtin_dropout,
            attn_pdrop=cfg.builtin_dropout,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            tie_word_embeddings=cfg.tie_embeddings,
        )
    else:
        hf = tr.LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ffn,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_heads,
            max_position_embeddings=cfg.context,
            hidden_act=act,
            attention_dropout=cfg.builtin_dropout,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            tie_word_embeddings=cfg.tie_embeddings,
        )
    torch.manual_seed(seed)
    return tr.AutoModelForCausalLM.from_config(hf, dtype=torch.float32)


def ffn_weights(model: nn.Module, layer: int) -> tuple[list[Tensor], Tensor]:
    """(input projections as [neurons, d_model], output projection as [d_model, neurons]) of one layer.

    GPT-2's Conv1D stores weights transposed ([in, out]); the returned tensors are views of the
    parameters in the nn.Linear orientation so that penalties and permutations read the same way for both
    families (GPT-2: ([c_fc.T], c_proj.T); Llama: ([gate, up], down)).
    """
    mt = model.config.model_type  # type: ignore[union-attr]
    if mt == "gpt2":
        mlp = model.transformer.h[layer].mlp  # type: ignore[union-attr, index]
        return [mlp.c_fc.weight.T], mlp.c_proj.weight.T
    mlp = model.model.layers[layer].mlp  # type: ignore[union-attr, index]
    return [mlp.gate_proj.weight, mlp.up_proj.weight], mlp.down_proj.weight


def ffn_biases(model: nn.Module, layer: int) -> list[Tensor]:
    """Biases indexed by neuron (GPT-2 c_fc.bias [neurons]; Llama has none)."""
    if model.config.model_type == "gpt2":  # type: ignore[union-attr]
        return [model.transformer.h[layer].mlp.c_fc.bias]  # type: ignore[union-attr, index]
    return []


def n_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)  # type: ignore[union-attr, arg-type]
