"""Specific suppressability on hand-built models, and the attribution methods that look for specific
neurons (contrastive IG, IG at the subject) against a slow reference written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import tiny_facts, tiny_lm
from legibility import AttributionConfig, LegibilityError, attribute, render
from legibility.attribution import attribute_prompts
from legibility.attribution.contrastive import contrast_objective, with_contrast
from legibility.attribution.paths import path_attribution
from legibility.facts.split import PromptSplit
from legibility.metrics.effects import EffectConfig, EffectRunner
from legibility.metrics.scorecard import score_metrics
from legibility.metrics.table import names
from legibility.neurons import knowledge_neurons
from planted import GATE, planted_facts, planted_lm


def _score(lm, method: str = "ig", steps: int = 5):
    """Neurons from each fact's selection prompts, effects on its held-out prompt (as the runner does)."""
    facts = [render(lm, f) for f in planted_facts()]
    if method == "ig-contrastive":
        facts = with_contrast(facts)
    split = PromptSplit(holdout=0.5)
    runner = EffectRunner(lm, facts, EffectConfig(controls=3), split)
    effects, sets, records = [], {}, []
    for r in facts:
        scores = attribute_prompts(lm, split.split(r)[0], method, AttributionConfig(steps=steps))
        kn = knowledge_neurons(r.fact.id, r.fact.relation, scores).neurons
        sets[r.fact.id] = kn
        records.append({"fact_id": r.fact.id, "relation": r.fact.relation, "neurons": kn, "n_prompts": 3})
        effects.append(runner.fact_effects(r, kn))
    return score_metrics(records, effects), sets


@pytest.mark.slow  # ~10 s on a shared CPU
def test_relation_wide_kill_switch_scores_zero_though_suppressability_is_perfect():
    m, sets = _score(planted_lm("killswitch"))
    assert all(kn == [(0, GATE + (0 if i.startswith("P36") else 1))] for i, kn in sets.items())
    assert m["suppressability"].value > 0.99  # the essay's metric cannot tell
    assert m["suppression.same_relation"].value < -0.99
    assert m["collateral.same_relation"].value > 0.99
    assert m["specific_suppressability"].value < 0.01 and m["specific_suppressability"].n == 8
    assert m["specificity.same_relation"].value == pytest.approx(1.0, abs=0.01)
    assert m["suppression.other_relation"].value == pytest.approx(0.0, abs=1e-4)


def test_fact_specific_neurons_score_high():
    m, sets = _score(planted_lm("specific"))
    facts = [f.id for f in planted_facts()]
    assert [sets[f] for f in facts] == [[(0, k)] for k in range(8)]
    assert m["specific_suppressability"].value > 0.95
    assert m["specific_suppressability"].ci_low > 0.95
    assert m["suppression.same_relation"].value == pytest.approx(0.0, abs=1e-4)
    assert m["specificity.same_relation"].value > 900  # own drop ~0.97 over the floored control drop
    # no kept subject has facts in two relations here: the tier is reported as not available
    assert m["suppression.same_subject"].n == 0 and math.isnan(m["suppression.same_subject"].value)
    assert "specific_suppressability" in names("card")


@pytest.mark.slow  # ~8 s on a shared CPU
def test_contrastive_ig_ignores_the_relation_gate_that_plain_ig_picks():
    lm = planted_lm("mixed")
    m_ig, sets_ig = _score(lm, "ig")
    m_c, sets_c = _score(lm, "ig-contrastive")
    facts = [f.id for f in planted_facts()]
    assert all((0, GATE) in sets_ig[f] for f in facts[:4])  # plain IG keeps the relation-wide gate
    assert [sets_c[f] for f in facts] == [[(0, k)] for k in range(8)]
    assert m_ig["specific_suppressability"].value < 0.05
    assert m_c["specific_suppressability"].value > 0.9


def test_control_tiers_are_disjoint_and_what_they_say():
    lm = tiny_lm("llama")
    facts = [render(lm, f) for f in tiny_facts()]  # every subject has a P36 and a P37 fact
    runner = EffectRunner(lm, facts, EffectConfig(controls=2), PromptSplit(holdout=0.0))
    rec = runner.fact_effects(facts[0], [(0, 1), (1, 2)])
    f0 = facts[0].fact
    by_id = {r.fact.id: r.fact for r in facts}
    tiers = {t: [by_id[c["fact_id"]] for c in cs] for t, cs in rec["controls"].items()}
    assert [g.subject for g in tiers["same_subject"]] == [f0.subject]
    assert all(g.object != f0.object for g in tiers["same_subject"])
    assert all(g.relation == f0.relation and g.subject != f0.subject for g in tiers["same_relation"])
    assert all(g.object != f0.object for g in tiers["same_relation"])
    assert all(
        g.relation != f0.relation and g.subject != f0.subject and g.object != f0.object
        for g in tiers["other_relation"]
    )
    assert (
        tiers["same_object"] == [] and len(tiers["same_relation"]) == 2 and len(tiers["other_relation"]) == 2
    )
    record = {"fact_id": f0.id, "relation": f0.relation, "neurons": [[0, 1], [1, 2]], "n_prompts": 1}
    m = score_metrics([record], [rec])
    assert m["suppression.same_subject"].n == 1
    before, after = (
        rec["controls"]["same_subject"][0]["before"],
        rec["controls"]["same_subject"][0]["suppress"],
    )
    assert m["suppression.same_subject"].value == pytest.approx((after - before) / before)


# --- attribution methods against a slow reference -------------------------------------------------------


def slow_ig(lm, query, objective, position: int, steps: int) -> torch.Tensor:
    """One path point at a time, the plain HF forward, full logits: IG by its definition."""
    ids = torch.tensor([query.input_ids])
    with torch.no_grad(), lm.sites.record() as store:
        lm.model(input_ids=ids)
    out = torch.zeros(lm.sites.n_layers, lm.sites.n_neurons)
    for layer in range(lm.sites.n_layers):
        a = store[layer][0, position].float()
        total = torch.zeros_like(a)
        for k in range(steps):
            point = (k / steps * a).clone().requires_grad_(True)

            def put(x, point=point):
                x = x.clone()
                x[0, position] = point
                return x

            with torch.enable_grad(), lm.sites.patch({layer: put}):
                logprobs = lm.model(input_ids=ids).logits[0, query.answer_pos].float().log_softmax(-1)
                (g,) = torch.autograd.grad(objective(logprobs), point)
            total += g / steps
        out[layer] = a * total
    return out


def test_contrastive_and_subject_ig_match_the_slow_reference():
    lm = tiny_lm("llama")
    facts = with_contrast([render(lm, f) for f in tiny_facts()])
    q = facts[0].prompts[0].queries[0]
    others = [c for c in q.contrast_ids if c != q.target_id]
    assert len(others) == 3 and q.target_id not in others
    cfg = AttributionConfig(steps=5, batch_size=3)  # chunks split the path
    got = attribute(lm, [q], "ig-contrastive", cfg)[0]
    want = slow_ig(lm, q, lambda lp: lp[q.target_id] - lp[others].logsumexp(0), q.answer_pos, 5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert got.abs().max() > 1e-3
    # the engine path above and the plain hook path agree
    hooks = path_attribution(lm, q, contrast_objective(q), q.answer_pos, cfg)
    torch.testing.assert_close(hooks, want, rtol=1e-4, atol=1e-6)
    # the subject ("germany" in "the capital of germany is") is not the last token here
    assert q.subject_pos == 3 and q.answer_pos == 4
    got = attribute(lm, [q], "ig-subject", cfg)[0]
    want = slow_ig(lm, q, lambda lp: lp[q.target_id].exp(), q.subject_pos, 5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(got, attribute(lm, [q], "ig", cfg)[0])


def test_contrastive_ig_is_complete():
    """Per layer, the scores sum to f(a) - f(0) as the path is refined (completeness of IG)."""
    lm = tiny_lm("gpt2")
    q = with_contrast([render(lm, f) for f in tiny_facts()])[1].prompts[0].queries[0]
    scores = attribute(lm, [q], "ig-contrastive", AttributionConfig(steps=400, batch_size=400))[0]
    others = [c for c in q.contrast_ids if c != q.target_id]
    from legibility.forward import answer_logits, make_batch

    def f(layer=None):
        fns = {layer: lambda x: torch.cat([x[:, :-1], 0 * x[:, -1:]], 1)} if layer is not None else {}
        with torch.no_grad(), lm.sites.patch(fns):
            lg = answer_logits(lm, make_batch(lm, [q]))[0].float()
        return float(lg[q.target_id] - lg[others].logsumexp(0))

    for layer in range(lm.sites.n_layers):
        assert float(scores[layer].sum()) == pytest.approx(
            f() - f(layer), abs=0.02 * abs(f() - f(layer)) + 1e-3
        )


def test_methods_refuse_queries_without_what_they_need():
    lm = tiny_lm("llama")
    q = render(lm, tiny_facts()[0]).prompts[0].queries[0]
    with pytest.raises(LegibilityError, match="with_contrast"):
        attribute(lm, [q], "ig-contrastive")
    from dataclasses import replace

    with pytest.raises(LegibilityError, match="subject"):
        attribute(lm, [replace(q, subject_pos=-1)], "ig-subject")
    assert np.isfinite(float(attribute(lm, [q], "ig-subject", AttributionConfig(steps=2))[0].sum()))


def test_effects_measured_in_one_pass_equal_each_group_measured_alone():
    """fact_effects batches every prompt group of one intervention into one pass; each number equals the
    plain measurement of its group alone (held-out, selection, each control)."""
    from legibility.interventions import Intervention, group_by_layer
    from legibility.metrics.effects import prompt_probs

    lm = tiny_lm("gpt2")
    facts = [render(lm, f) for f in tiny_facts()]
    split = PromptSplit(holdout=0.5, seed=1)
    kn = [(0, 3), (1, 7)]
    rec = EffectRunner(lm, facts, EffectConfig(controls=2), split, seed=1).fact_effects(facts[0], kn)
    by_id = {r.fact.id: r for r in facts}
    sel, held = split.split(facts[0])

    def mean(prompts, op=None, neurons=kn):
        iv = Intervention(group_by_layer(neurons), op) if op else None
        return float(prompt_probs(lm, prompts, iv).mean())

    assert rec["before"] == pytest.approx(mean(held), rel=1e-5)
    assert rec["own"]["suppress"]["kn"] == pytest.approx(mean(held, "suppress"), rel=1e-5)
    assert rec["in_sample"]["amplify"]["kn"] == pytest.approx(mean(sel, "amplify"), rel=1e-5)
    random_set = [tuple(n) for n in rec["neuron_sets"]["random"]]
    assert rec["own"]["suppress"]["random"] == pytest.approx(mean(held, "suppress", random_set), rel=1e-5)
    n = 0
    for entries in rec["controls"].values():
        for c in entries:
            prompts = by_id[c["fact_id"]].prompts
            assert c["before"] == pytest.approx(mean(prompts), rel=1e-5)
            assert c["suppress"] == pytest.approx(mean(prompts, "suppress"), rel=1e-5)
            assert c["amplify"] == pytest.approx(mean(prompts, "amplify"), rel=1e-5)
            n += 1
    assert n >= 4  # same relation and other relation, two each


# ------------------------------------------- gaming cases on hand-built models: v1 is fooled, v2 is not
# The neuron sets are handed over (what a gamed or careless attribution would return); every effect is
# measured on the model by the runner's EffectRunner, on held-out prompts.


def _measure(lm, sets: dict[str, list[tuple[int, int]]]):
    from legibility.metrics.scorecard import specific_scores_v1

    facts = [render(lm, f) for f in planted_facts()]
    runner = EffectRunner(lm, facts, EffectConfig(controls=3), PromptSplit(holdout=0.5))
    records, effects = [], []
    for r in facts:
        kn = sets[r.fact.id]
        records.append({"fact_id": r.fact.id, "relation": r.fact.relation, "neurons": kn, "n_prompts": 3})
        if kn:
            effects.append(runner.fact_effects(r, kn))
    return score_metrics(records, effects), specific_scores_v1(effects)


def test_planted_other_relation_kill_switch_fools_v1_not_v2():
    """Each fact's set is its own fact neuron plus the *other* relation's gate: the fact goes, its relation
    stays, every fact of the other relation goes too."""
    lm = planted_lm("mixed")
    sets = {
        f.id: [(0, k), (0, GATE + (1 if f.relation == "P36" else 0))] for k, f in enumerate(planted_facts())
    }
    m, v1 = _measure(lm, sets)
    assert len(v1) == 8 and v1.mean() > 0.9  # v1 charges the same relation only
    assert m["collateral.same_relation"].value < 0.05
    assert m["collateral.other_relation"].value > 0.95
    assert m["specific_suppressability"].value < 0.05


def test_planted_localizing_only_the_easy_facts_counts_the_rest_as_zero():
    """Perfect neurons for two facts of eight, none for the others: v1 averages the two, v2 counts eight."""
    lm = planted_lm("specific")
    facts = planted_facts()
    sets = {f.id: ([(0, k)] if k < 2 else []) for k, f in enumerate(facts)}
    m, v1 = _measure(lm, sets)
    assert len(v1) == 2 and v1.mean() > 0.95
    assert m["specific_suppressability"].n == 8
    assert m["specific_suppressability"].value == pytest.approx(2 / 8 * v1.mean(), abs=0.03)
    assert m["neurons.facts_with_any"].value == pytest.approx(0.25)
