"""Model builder: both families, every activation; SoLU values and site; plain transformers loads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import tiny_cfg
from transformers import AutoModelForCausalLM, AutoTokenizer

import legibility
from legibility.training import SoLU, build_model
from legibility.training.config import ModelConfig
from legibility.training.corpus import build_corpus


def test_solu_matches_a_numpy_reference():
    x = np.random.default_rng(0).normal(size=(3, 5))
    y = x * np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    expected = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)
    out = SoLU()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "solu"])
def test_saved_model_loads_in_plain_transformers_and_legibility(tmp_path, family, activation):
    cfg = tiny_cfg(**{"model.family": family, "model.activation": activation})
    corpus = build_corpus(cfg.data)
    tok = corpus.tokenizer
    model = build_model(cfg.model, corpus.vocab_size, tok.pad_token_id, tok.eos_token_id)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ids = torch.tensor([tok("the capital of", add_special_tokens=False)["input_ids"]])
    expected = model.eval()(input_ids=ids).logits
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-6)
    assert (
        AutoTokenizer.from_pretrained(tmp_path)("the capital of", add_special_tokens=False)["input_ids"]
        == ids[0].tolist()
    )
    lm = legibility.load_model(str(tmp_path))
    assert (lm.sites.n_layers, lm.sites.n_neurons) == (cfg.model.n_layers, cfg.model.d_ffn)
    assert torch.allclose(lm.model(input_ids=ids).logits, expected, atol=1e-6)


def test_solu_site_is_the_post_layernorm_value():
    model = build_model(
        ModelConfig(family="gpt2", activation="solu", d_model=32, d_ffn=48, n_heads=4), 50
    ).eval()
    lm = legibility.load_model(model, object())
    ids = torch.tensor([[1, 2, 3, 4]])
    pre = {}
    handle = model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, a, o: pre.setdefault("x", o))
    try:
        with lm.sites.record() as store:
            model(input_ids=ids)
    finally:
        handle.remove()
    site = store[0]  # [batch, pos, neurons]
    x = pre["x"]
    y = x * x.softmax(-1)
    assert torch.allclose(
        site,
        (y - y.mean(-1, keepdim=True)) / (y.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt(),
        atol=1e-5,
    )
    assert torch.allclose(site.mean(-1), torch.zeros(1, 4), atol=1e-5)


def test_model_shapes_follow_the_config():
    cfg = ModelConfig(family="llama", n_layers=3, d_model=48, d_ffn=80, n_heads=6, context=40)
    model = build_model(cfg, 77)
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 48
    assert model.model.layers[0].mlp.down_proj.weight.shape == (48, 80)
    assert model.get_input_embeddings().weight.shape == (77, 48)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
