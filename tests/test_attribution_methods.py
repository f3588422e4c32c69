"""Fast attribution methods (issue 21): relevance patching, attribution patching with baselines, the two-stage
method, and the registry's ``prepare`` step."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from torch import nn

from helpers import ALL_FAMILIES, FAMILIES, tiny_facts, tiny_lm
from legibility.attribution import METHODS, AttributionConfig, attribute, prepare_facts, relevance
from legibility.attribution.fast import layer_path_gradients
from legibility.attribution.patching import with_baselines
from legibility.attribution.reference import _activations
from legibility.errors import LegibilityError
from legibility.facts.render import render
from legibility.forward import answer_logits, make_batch
from legibility.models import sites
from relp_reference import reference_logits, relp_reference, relp_reference_gradients

CFG = AttributionConfig(steps=5, batch_size=16, baselines=3)


def rendered(lm):
    return [render(lm, f) for f in tiny_facts()]


def first_queries(facts, n: int = 3):
    return [p.queries[0] for r in facts for p in r.prompts][:n]


def assert_close(got: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    scale = ref.abs().max()
    assert scale > 0, "reference scores are all zero: the comparison would prove nothing"
    assert (got - ref).abs().max() <= rel * scale, float((got - ref).abs().max() / scale)


# ------------------------------------------------------------------------------------------------- relp


@pytest.mark.parametrize("family", FAMILIES)
def test_relp_equals_the_written_out_reference(family):
    """The hooks give the scores of the plain op-by-op forward with the rules as frozen constants; that
    forward without the rules reproduces the HF logits (so it is the architecture), and the rules matter
    (relp is not grad x act)."""
    lm = tiny_lm(family)
    qs = first_queries(rendered(lm), 2)
    relp = attribute(lm, qs, "relp", CFG)
    gxa = attribute(lm, qs, "grad-x-act", CFG)
    for i, q in enumerate(qs):
        hf = answer_logits(lm, make_batch(lm, [q]))[0].detach()
        torch.testing.assert_close(reference_logits(lm, q), hf, rtol=1e-5, atol=1e-5)
        ref = relp_reference(lm, q)
        assert_close(relp[i], ref)
        assert (gxa[i] - ref).abs().max() > 0.05 * ref.abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_token_gradients_equal_the_whole_prompt_backward(family, monkeypatch):
    """The engine path (prefix cached, only the answer token run again from block 0's site) gives the
    gradients of the whole prompt's forward and backward, plain and under RelP's rules."""
    from legibility.attribution import patching

    lm = tiny_lm(family)
    qs = first_queries(rendered(lm), 7)
    fast = [
        patching.answer_gradients(lm, qs, 4, rules)
        for rules in (patching.plain_gradients, relevance.relevance_rules)
    ]
    family = lm.model.config.model_type
    monkeypatch.setitem(sites.FAMILIES, family, dataclasses.replace(sites.FAMILIES[family], engine=False))
    for (acts, grads), rules in zip(fast, (patching.plain_gradients, relevance.relevance_rules), strict=True):
        ref_acts, ref_grads = patching.answer_gradients(lm, qs, 4, rules)
        assert_close(acts, ref_acts)
        assert_close(grads, ref_grads)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_relp_rules_leave_the_forward_values_unchanged(family):
    lm = tiny_lm(family)
    batch = make_batch(lm, first_queries(rendered(lm), 3))
    with torch.no_grad():
        plain = answer_logits(lm, batch)
        with relevance.relevance_rules(lm):
            ruled = answer_logits(lm, batch)
    torch.testing.assert_close(ruled, plain, rtol=0, atol=0)


def test_relp_refuses_a_model_whose_attention_it_cannot_see(monkeypatch):
    lm = tiny_lm("gemma2")  # eager attention: the weights come from a softmax
    qs = first_queries(rendered(lm), 1)
    attribute(lm, qs, "relp", CFG)
    monkeypatch.setattr(relevance, "_SOFTMAX", set())
    with pytest.raises(LegibilityError, match="0 attention"):
        attribute(lm, qs, "relp", CFG)


def test_relp_half_rule_needs_the_standard_site_of_a_gated_family():
    from legibility import load_model
    from legibility.models.sites import SiteSpec

    lm = tiny_lm("llama")
    other = load_model(lm.model, lm.tokenizer, spec=SiteSpec("model.layers", "mlp.up_proj", io="output"))
    with pytest.raises(LegibilityError, match="standard FFN sites"):
        attribute(other, first_queries(rendered(lm), 1), "relp", CFG)


def test_identity_and_half_rules_have_the_stated_local_gradients():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    y = relevance.identity_rule(x, nn.functional.gelu(x))
    torch.testing.assert_close(y, nn.functional.gelu(x))
    (g,) = torch.autograd.grad(y.sum(), x)
    gelu = nn.functional.gelu(x.detach())
    expected = torch.where(
        x == 0, torch.tensor(0.5), gelu / torch.where(x == 0, torch.tensor(1.0), x.detach())
    )
    torch.testing.assert_close(g, expected)
    h = relevance.half_rule(x * 3)
    (g,) = torch.autograd.grad(h.sum(), x)
    torch.testing.assert_close(h, x * 3) and torch.testing.assert_close(g, torch.full_like(x, 1.5))


def test_ln_rule_refuses_a_norm_it_cannot_reproduce():
    class OddRMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))
            self.eps = 1e-6

        def forward(self, x):
            return 2 * x  # not a normalization the rule knows

    x = torch.randn(2, 4)
    module = OddRMSNorm()
    with pytest.raises(LegibilityError, match="OddRMSNorm"):
        relevance.ln_rule(module, x, module(x))


# -------------------------------------------------------------------------------------- baselines and atp


def test_baselines_are_the_same_template_with_other_subjects_of_the_relation():
    lm = tiny_lm("llama")
    facts = rendered(lm)
    prepared = with_baselines(lm, facts, 2)
    shuffled = with_baselines(lm, random.Random(1).sample(facts, len(facts)), 2)
    by_id = {r.fact.id: r for r in shuffled}
    subjects = {r.fact.subject for r in facts}
    for r in prepared:
        assert by_id[r.fact.id].prompts == r.prompts  # does not depend on the facts' order
        for p in r.prompts:
            q = p.queries[0]
            assert len(q.baselines) == 2
            for b in q.baselines:
                text = lm.tokenizer.decode(list(b.input_ids))
                others = [s for s in subjects if s in text]
                assert others and r.fact.subject not in others  # another subject ...
                assert text.replace(others[0], r.fact.subject) == lm.tokenizer.decode(list(q.input_ids))
                assert b.answer_pos == len(b.input_ids) - 1  # ... in the same template


def test_atp_scores_are_activation_minus_baseline_times_the_gradient():
    """Against an independent computation: the baseline activations from plain recorded forwards, the
    gradient from the IG engine at alpha = 1."""
    lm = tiny_lm("llama")
    facts = prepare_facts(lm, rendered(lm), "atp-mean", CFG)
    qs = first_queries(facts, 3)
    mean = attribute(lm, qs, "atp-mean", CFG)
    corrupt = attribute(lm, qs, "atp-corrupt", CFG)
    layers = range(lm.sites.n_layers)
    for i, q in enumerate(qs):
        acts, grads = layer_path_gradients(lm, q, layers, torch.ones(1), 64)
        base = torch.stack([_activations(lm, b) for b in q.baselines])
        assert len(q.baselines) == CFG.baselines
        assert_close(mean[i], (acts - base.mean(0)) * grads[:, 0])
        assert_close(corrupt[i], (acts - base[0]) * grads[:, 0])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_relp_with_baselines_patches_against_other_subjects_with_relps_gradient(family):
    lm = tiny_lm(family)
    facts = prepare_facts(lm, rendered(lm), "relp-mean", CFG)
    qs = first_queries(facts, 2)
    mean = attribute(lm, qs, "relp-mean", CFG)
    corrupt = attribute(lm, qs, "relp-corrupt", CFG)
    for i, q in enumerate(qs):
        acts, grads = relp_reference_gradients(lm, q)
        base = torch.stack([_activations(lm, b) for b in q.baselines])
        assert_close(mean[i], (acts - base.mean(0)) * grads)
        assert_close(corrupt[i], (acts - base[0]) * grads)


def test_atp_needs_prepared_facts():
    lm = tiny_lm("llama")
    with pytest.raises(LegibilityError, match="prepare_facts"):
        attribute(lm, first_queries(rendered(lm), 1), "atp-mean", CFG)


def test_methods_declare_what_they_need_in_the_registry():
    for name in (
        "relp",
        "relp-mean",
        "relp-corrupt",
        "atp-mean",
        "atp-corrupt",
        "ig-prefilter",
        "grad-x-act",
    ):
        assert not METHODS[name].exact
    assert METHODS["ig"].prepare is None and METHODS["relp"].prepare is None
    lm = tiny_lm("llama")
    facts = rendered(lm)
    contrast = prepare_facts(lm, facts, "ig-contrastive", CFG)
    assert contrast[0].prompts[0].queries[0].contrast_ids
    assert prepare_facts(lm, facts, "ig", CFG) == facts
    prefiltered = prepare_facts(lm, facts, "ig-prefilter", dataclasses.replace(CFG, prefilter="atp-mean"))
    assert prefiltered[0].prompts[0].queries[0].baselines  # the first stage's needs


# ------------------------------------------------------------------------------------------------ two-stage


@pytest.mark.parametrize("first", ["relp", "atp-mean"])
def test_prefilter_stage_is_selectable_and_exact_on_its_layers(first):
    lm = tiny_lm("llama")
    cfg = dataclasses.replace(CFG, prefilter=first, candidates=3)
    qs = first_queries(prepare_facts(lm, rendered(lm), "ig-prefilter", cfg), 2)
    exact = attribute(lm, qs, "ig", cfg)
    cheap = attribute(lm, qs, first, cfg)
    two = attribute(lm, qs, "ig-prefilter", cfg)
    for i in range(len(qs)):
        layers = set((cheap[i].flatten().topk(3).indices // lm.sites.n_neurons).tolist())
        kept = {int(layer) for layer in torch.nonzero(two[i].abs().sum(1) > 0)[:, 0]}
        assert kept == layers
        idx = sorted(layers)
        assert_close(two[i, idx], exact[i, idx])
    with pytest.raises(LegibilityError, match="own first stage"):
        attribute(lm, qs, "ig-prefilter", dataclasses.replace(cfg, prefilter="ig-prefilter"))


# ------------------------------------------------------------------------------------------------- ablation


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2", "bert"])
def test_rowwise_suppression_equals_one_intervention_at_a_time(family):
    from legibility.attribution.ablation import suppressed_probs
    from legibility.forward import predict
    from legibility.interventions import Intervention, group_by_layer

    lm = tiny_lm(family)
    qs = [p.queries[0] for r in rendered(lm) for p in r.prompts][:5]
    rng = random.Random(0)
    n = lm.sites.n_neurons
    sets = [[], [(0, 1)], [(layer, rng.randrange(n)) for layer in range(lm.sites.n_layers) for _ in range(5)]]
    sets.append([(lm.sites.n_layers - 1, i) for i in range(n)])  # a whole layer: a large effect
    rows = [(q, s) for q in range(len(qs)) for s in range(len(sets))]
    got = suppressed_probs(lm, qs, sets, rows, batch_size=7)
    for s, chosen in enumerate(sets):
        if chosen:
            with Intervention(group_by_layer(chosen), "suppress").apply(lm):
                expected = predict(lm, qs).prob
        else:
            expected = predict(lm, qs).prob
        mine = got[[r for r, (_, s2) in enumerate(rows) if s2 == s]]
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-7)
    assert (got[3::4] - got[0::4]).abs().max() > 1e-3  # the whole-layer set changes p: not vacuous


def test_baselines_refuse_a_relation_with_one_subject():
    lm = tiny_lm("llama")
    facts = rendered(lm)
    alone = [facts[0], *[r for r in facts if r.fact.relation != facts[0].fact.relation]]
    with pytest.raises(LegibilityError, match=f"relation {facts[0].fact.relation} has only"):
        prepare_facts(lm, alone, "atp-mean", CFG)
