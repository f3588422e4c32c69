"""Experiment helpers: facts with all templates, the per-variant summary."""

from __future__ import annotations

import statistics

import pytest
from train_helpers import tiny_cfg

from legibility.facts.synthetic import TEMPLATES
from legibility.training.experiment import all_template_facts, summarize


def test_all_template_facts_joins_training_and_held_out_templates():
    facts = all_template_facts(tiny_cfg())
    assert len(facts) == 30 * 2
    for f in facts:
        assert len(f.prompts) == len(TEMPLATES[f.relation])
        assert [p.replace(f.subject, "[X]") for p in f.prompts] == list(TEMPLATES[f.relation])


def test_summarize_means_and_deviations_per_variant():
    records = [
        {"variant": "a", "seed": 0, "suppressability": 0.5, "val_loss": 1.0},
        {"variant": "a", "seed": 1, "suppressability": 0.7, "val_loss": 3.0},
        {"variant": "b", "seed": 0, "suppressability": 0.1, "val_loss": None},
    ]
    out = summarize(records)
    mean, sd, n = out["a"]["suppressability"]
    assert (mean, n) == (pytest.approx(0.6), 2)
    assert sd == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert out["b"]["suppressability"] == (pytest.approx(0.1), 0.0, 1)
    assert "val_loss" not in out["b"]
