"""The suppressability objective: attributions against independent references, gradient vs finite differences."""

from __future__ import annotations

import pytest
import torch
from train_helpers import assert_gradients_match_finite_differences, float64_lm

from helpers import tiny_facts, tiny_lm
from legibility import AttributionConfig, attribute, render
from legibility.forward import make_batch
from legibility.training.regularizers.suppressability import (
    SuppressabilityConfig,
    attributions,
    soft_topk_mask,
    suppressability_loss,
)


def _queries(lm, n=3):
    return [pq.queries[0] for f in tiny_facts() for pq in render(lm, f).prompts][:n]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_few_step_ig_equals_the_library_integrated_gradients(family):
    lm = tiny_lm(family)
    queries = _queries(lm)
    _, _, scores = attributions(lm, make_batch(lm, queries), "ig", steps=4)
    expected = attribute(lm, queries, "ig-reference", AttributionConfig(steps=4))
    assert torch.allclose(scores.detach(), expected, atol=1e-6, rtol=1e-4)


def test_grad_x_activation_equals_a_per_layer_reference():
    lm = tiny_lm("gpt2")
    queries = _queries(lm)
    p, acts, scores = attributions(lm, make_batch(lm, queries), "gxa")
    for qi, q in enumerate(queries):
        for layer in range(lm.sites.n_layers):
            leaf = acts[qi, layer].detach().clone().requires_grad_(True)

            def put(a, leaf=leaf, pos=q.answer_pos):
                a = a.clone()
                a[0, pos] = leaf
                return a

            with lm.sites.patch({layer: put}):
                logits = lm.model(input_ids=torch.tensor([q.input_ids])).logits[0, q.answer_pos]
            prob = logits.softmax(-1)[q.target_id]
            (g,) = torch.autograd.grad(prob, leaf)
            assert float(prob.detach()) == pytest.approx(float(p[qi].detach()), rel=1e-5)
            assert torch.allclose(scores[qi, layer].detach(), leaf.detach() * g, atol=1e-7, rtol=1e-4)


def test_soft_topk_mask_tends_to_the_hard_top_k():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 10)
    mask = soft_topk_mask(scores, k=4, temperature=1e-4)
    hard = torch.zeros(2, 30)
    hard.scatter_(1, scores.flatten(1).topk(4).indices, 1.0)
    assert torch.allclose(mask.flatten(1), hard, atol=1e-3)
    soft = soft_topk_mask(scores, k=4, temperature=0.5)
    assert ((soft > 0.01) & (soft < 0.99)).any()


@pytest.mark.parametrize(
    "method,family", [("gxa", "gpt2"), ("ig", "gpt2"), ("gxa", "llama"), ("ig", "llama")]
)
def test_objective_gradient_matches_finite_differences(method, family, monkeypatch):
    lm = float64_lm(family, monkeypatch)  # float64 throughout keeps central differences at 1e-5
    batch = make_batch(lm, _queries(lm))
    cfg = SuppressabilityConfig(method=method, ig_steps=2, k=3, temperature=0.3, control=True)

    def loss() -> torch.Tensor:
        return suppressability_loss(lm, batch, cfg, torch.Generator().manual_seed(7))

    assert_gradients_match_finite_differences(loss, lm, eps=1e-6, rel=1e-5, n_random=3)
