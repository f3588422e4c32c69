"""The specific-suppressability objective: its gradient against finite differences (float64), and its value
on hand-built models with relation-wide and with fact-specific neurons."""

from __future__ import annotations

import random

import pytest
import torch

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
    from transformers.models.llama import modeling_llama

    def rms_norm_in_input_dtype(self, x):  # LlamaRMSNorm upcasts to float32 even in a float64 model
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm_in_input_dtype)
    eps, rel = 1e-6, 1e-5
    lm = tiny_lm(family)
    lm.model.double()
    pairs = _pairs(lm, tiny_facts())
    own, partners = make_batch(lm, [a for a, _ in pairs]), make_batch(lm, [b for _, b in pairs])
    cfg = SpecificConfig(method=method, ig_steps=2, k=3, temperature=0.3, collateral=2.0, control=True)

    def loss() -> torch.Tensor:
        return specific_loss(lm, own, partners, cfg, torch.Generator().manual_seed(7))

    params = [p for n, p in lm.model.named_parameters() if "mlp" in n and p.dim() == 2][:2]
    params.append(lm.model.get_input_embeddings().weight)
    grads = torch.autograd.grad(loss(), params)
    gen = torch.Generator().manual_seed(3)
    checked = 0
    for param, grad in zip(params, grads, strict=True):
        flat, gflat = param.data.view(-1), grad.view(-1)
        picks = (
            gflat.abs().topk(3).indices.tolist()
            + torch.randint(0, flat.numel(), (2,), generator=gen).tolist()
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
