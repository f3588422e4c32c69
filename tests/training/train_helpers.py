"""One place that builds tiny training configs for the tests."""

from __future__ import annotations

import dataclasses

from legibility.facts.synthetic import WorldConfig
from legibility.training.config import DataConfig, ModelConfig, RunConfig, TokenizerConfig, TrainConfig


def tiny_cfg(**overrides) -> RunConfig:
    """A run that trains in about a second; overrides are 'section.field' or 'field' of TrainConfig,
    e.g. tiny_cfg(steps=40, **{"model.activation": "solu"}) or regularizers=[...]."""
    model = ModelConfig(n_layers=2, d_model=32, d_ffn=64, n_heads=4, context=32)
    world = WorldConfig(n_subjects=30, n_relations=2, n_objects=5)
    data = DataConfig(world=world, n_sentences=1500, tokenizer=TokenizerConfig(vocab_size=500))
    train = TrainConfig(
        steps=20,
        batch_size=8,
        seq_len=24,
        warmup=5,
        eval_every=10,
        checkpoint_every=10,
        log_every=5,
        eval_batches=2,
    )
    sections = {"model": model, "data": data, "train": train}
    regs = overrides.pop("regularizers", [])
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        section = section or "train"
        sections[section] = dataclasses.replace(sections[section], **{name: value})
    return RunConfig(sections["model"], sections["data"], sections["train"], regs)


def float64_lm(family: str, monkeypatch):
    """A tiny model in float64 for finite-difference checks. Llama's RMSNorm computes in float32 even in a
    float64 model, which would drown central differences in rounding noise; the same formula is patched in
    to run in the input's dtype."""
    import torch
    from transformers.models.llama import modeling_llama

    from helpers import tiny_lm

    def rms_norm_in_input_dtype(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm_in_input_dtype)
    lm = tiny_lm(family)
    lm.model.double()
    return lm


def assert_gradients_match_finite_differences(loss, lm, eps: float, rel: float, n_random: int) -> None:
    """Autograd gradients of ``loss()`` equal central differences on two MLP weight matrices and the input
    embeddings, at each one's 3 largest-gradient entries and ``n_random`` random ones; at least 3 of the
    checked differences must be clearly non-zero, so the check is not vacuous."""
    import pytest
    import torch

    params = [p for n, p in lm.model.named_parameters() if "mlp" in n and p.dim() == 2][:2]
    params.append(lm.model.get_input_embeddings().weight)
    grads = torch.autograd.grad(loss(), params)
    gen = torch.Generator().manual_seed(3)
    checked = 0
    for param, grad in zip(params, grads, strict=True):
        flat, gflat = param.data.view(-1), grad.view(-1)
        picks = (
            gflat.abs().topk(3).indices.tolist()
            + torch.randint(0, flat.numel(), (n_random,), generator=gen).tolist()
        )
        for i in picks:
            orig = flat[i].item()
            flat[i] = orig + eps
            up = loss().item()
            flat[i] = orig - eps
            down = loss().item()
            flat[i] = orig
            fd = (up - down) / (2 * eps)
            assert gflat[i].item() == pytest.approx(fd, rel=rel, abs=1e-7), (param.shape, i)
            checked += abs(fd) > 1e-6
    assert checked >= 3
