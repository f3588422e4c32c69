"""The specific-suppressability objective: its gradient against finite differences (float64), and its value
on hand-built models with relation-wide and with fact-specific neurons."""

from __future__ import annotations

import random

import pytest
import torch
from train_helpers import assert_gradients_match_finite_differences, float64_lm

from helpers import tiny_facts, tiny_lm
from legibility import render
from legibility.forward import make_batch
from legibility.training.regularizers import REGULARIZERS
from legibility.training.regularizers.specific import SpecificConfig, partner_pairs, specific_loss
from legibility.training.regularizers.suppressability import SuppressabilityConfig, suppressability_loss
from planted import planted_facts, planted_lm


def _pairs(lm, facts, n=3):
    queries = [(f.relation, f.id, pq.queries[0]) for f in facts for pq in render(lm, f).prompts]
    return partner_pairs(queries, n, random.Random(0))


def test_partners_are_other_facts_of_the_same_relation():
    lm = tiny_lm("gpt2")
    facts = {f.id: f for f in tiny_facts()}
    queries = [(f.relation, f.id, pq.queries[0]) for f in facts.values() for pq in render(lm, f).prompts]
    fact_of = {q: fid for _, fid, q in queries}
    rel_of = {q: rel for rel, _, q in queries}
    pairs = partner_pairs(queries, 8, random.Random(1))
    assert len(pairs) == 8
    for own, partner in pairs:
        assert rel_of[own] == rel_of[partner] and fact_of[own] != fact_of[partner]
    assert "specific_suppressability" in REGULARIZERS


@pytest.mark.slow  # ~5 s each (float64 double backward, many loss evaluations)
@pytest.mark.parametrize("method,family", [("gxa", "gpt2"), ("ig", "gpt2"), ("gxa", "llama")])
def test_objective_gradient_matches_finite_differences(method, family, monkeypatch):
    lm = float64_lm(family, monkeypatch)
    pairs = _pairs(lm, tiny_facts())
    own, partners = make_batch(lm, [a for a, _ in pairs]), make_batch(lm, [b for _, b in pairs])
    cfg = SpecificConfig(method=method, ig_steps=2, k=3, temperature=0.3, collateral=2.0, control=True)

    def loss() -> torch.Tensor:
        return specific_loss(lm, own, partners, cfg, torch.Generator().manual_seed(7))

    assert_gradients_match_finite_differences(loss, lm, eps=1e-6, rel=1e-5, n_random=2)


def test_kill_switch_pays_the_collateral_term_that_suppressability_does_not_charge():
    values = {}
    for kind in ("killswitch", "specific"):
        lm = planted_lm(kind)
        pairs = _pairs(lm, planted_facts(), n=6)
        own, partners = make_batch(lm, [a for a, _ in pairs]), make_batch(lm, [b for _, b in pairs])
        spec = specific_loss(lm, own, partners, SpecificConfig(k=1, temperature=0.01))
        sup = suppressability_loss(lm, own, SuppressabilityConfig(k=1, temperature=0.01, control=False))
        values[kind] = (float(spec), float(sup))
    assert values["killswitch"][1] < 0.05 and values["specific"][1] < 0.05  # both "perfectly suppressable"
    assert values["killswitch"][0] > 0.95  # own term ~0, collateral term ~1
    assert values["specific"][0] < 0.05
