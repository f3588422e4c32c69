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
