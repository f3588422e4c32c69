"""Independent metrics: hand-checkable cases on synthetic tensors, records and tiny models."""

import json
import math

import numpy as np
import pytest
import torch

from helpers import tiny_facts, tiny_lm
from legibility import LegibilityError, render
from legibility.interventions import Intervention
from legibility.metrics.circuit import CircuitConfig, circuit_size, smallest_k
from legibility.metrics.effects import prompt_probs
from legibility.metrics.electrode import ElectrodeConfig, block_scores, electrode_probs, electrode_test
from legibility.metrics.independent import (
    INDEPENDENT,
    MetricContext,
    available_metrics,
    compute_metrics,
    context_from_run,
    entropy_bits,
    metric_direction,
    sparsity_stats,
)
from legibility.metrics.probes import ProbeConfig, probe_accuracies, selectivity_estimates

ANSWER_NEURON = (2, 5)  # the neuron that alone carries "germany -> berlin" in the one-neuron model


@pytest.fixture(scope="module")
def one_neuron_lm():
    """Tiny GPT-2 whose layer-2 neuron 5 is always on (bias only) and writes the "berlin" direction."""
    lm = tiny_lm("gpt2")
    m = lm.model
    berlin = lm.tokenizer.convert_tokens_to_ids("berlin")
    layer, idx = ANSWER_NEURON
    with torch.no_grad():
        mlp = m.transformer.h[layer].mlp
        mlp.c_fc.weight[:, idx] = 0.0
        mlp.c_fc.bias[idx] = 5.0  # gelu(5) ~ 5 on every input
        w = m.lm_head.weight[berlin]
        mlp.c_proj.weight[idx] = 40 * (w - w.mean()) / (w - w.mean()).norm()
        m.transformer.ln_f.weight.mul_(3.0)
    return lm


@pytest.fixture(scope="module")
def germany(one_neuron_lm):
    return render(one_neuron_lm, tiny_facts()[0])  # P36 germany -> berlin, 3 prompts


def _rec(rel, neurons, fid=None):
    return {"fact_id": fid or f"{rel}|{neurons}", "relation": rel, "neurons": neurons, "n_prompts": 3}


# ----------------------------------------------------------------------------- registry


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(LegibilityError, match="available: .*sparsity"):
        compute_metrics(["sparsity", "nope"], MetricContext())


def test_missing_inputs_are_reported_before_running():
    with pytest.raises(LegibilityError, match="lm="):
        compute_metrics(["sparsity"], MetricContext(neuron_records=[_rec("P1", [[0, 1]])]))
    with pytest.raises(LegibilityError, match="neuron_records="):
        compute_metrics(["polysemanticity"], MetricContext())


def test_available_metrics_follow_the_inputs():
    records = [_rec("P1", [[0, 1]])]
    assert available_metrics(MetricContext(neuron_records=records)) == [
        "concentration",
        "overlap",
        "polysemanticity",
    ]


def test_context_from_run_renders_the_kept_facts(tmp_path, one_neuron_lm):
    facts = tiny_facts()
    (tmp_path / "facts.json").write_text(json.dumps({"facts": [facts[1].id, facts[4].id]}))
    (tmp_path / "neurons.jsonl").write_text(json.dumps(_rec("P36", [[0, 1]], facts[1].id)) + "\n")
    ctx = context_from_run(tmp_path, one_neuron_lm, facts)
    assert [r.fact.id for r in ctx.facts] == [facts[1].id, facts[4].id] and len(ctx.neuron_records) == 1
    assert ctx.facts[0].prompts and not ctx.effects
    with pytest.raises(LegibilityError, match="same facts"):
        context_from_run(tmp_path, one_neuron_lm, facts[:2])


def test_every_metric_documents_definition_direction_and_keys():
    for name in INDEPENDENT:
        spec = INDEPENDENT[name]
        assert len(spec.definition) > 100 and spec.direction in ("higher", "lower")
        assert all(d in ("higher", "lower", "none") for d in spec.keys.values())
    assert metric_direction("independent.sparsity.kurtosis") == "higher"
    assert metric_direction("independent.circuit_size.median") == "lower"
    with pytest.raises(LegibilityError):
        metric_direction("suppressability")


# ----------------------------------------------------------------------------- record-based


def test_entropy_of_a_neuron_serving_two_relations_equally_is_one_bit():
    assert entropy_bits([2, 2]) == pytest.approx(1.0)
    assert entropy_bits([5]) == 0.0
    assert entropy_bits([1, 1, 1, 1]) == pytest.approx(2.0)


def test_polysemanticity_concentration_and_overlap_by_hand():
    records = [
        _rec("P1", [[0, 1], [0, 2]]),
        _rec("P1", [[0, 1]]),
        _rec("P2", [[0, 1], [0, 3]]),
        _rec("P2", [[0, 3]]),
        _rec("P2", []),
    ]
    m = compute_metrics(
        ["polysemanticity", "concentration", "overlap"], MetricContext(neuron_records=records)
    )
    # (0,1): P1 x2, P2 x1 -> H(2/3, 1/3); (0,2): 0 bits; (0,3): P2 x2 -> 0 bits
    h = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert m["independent.polysemanticity.entropy_bits"].value == pytest.approx(h / 3)
    assert m["independent.polysemanticity.monosemantic_share"].value == pytest.approx(2 / 3)
    assert m["independent.polysemanticity.entropy_bits_shared"].value == pytest.approx(h / 2)
    assert m["independent.polysemanticity.entropy_bits"].n == 3
    assert m["independent.polysemanticity.facts_per_neuron"].value == pytest.approx(6 / 3)
    assert m["independent.concentration.facts_with_any"].value == pytest.approx(0.8)
    assert m["independent.concentration.neurons_per_fact_with_any"].value == pytest.approx(1.5)
    # same-relation pairs share (0,1) and (0,3): 1 each; other pairs: 1, 0, 1, 0 -> 0.5
    assert m["independent.overlap.same_relation"].value == pytest.approx(1.0)
    assert m["independent.overlap.other_relation"].value == pytest.approx(0.5)
    assert m["independent.overlap.ratio"].value == pytest.approx(2.0)
    assert m["independent.overlap.contrast"].value == pytest.approx(1 / 3)
    est = m["independent.overlap.contrast"]
    assert est.n == 4 and est.ci_low <= est.value <= est.ci_high


# ----------------------------------------------------------------------------- activations


def test_sparsity_stats_match_hand_computed_kurtosis():
    acts = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 4.0]]])  # [1 prompt, 2 layers, 4 neurons]
    silent, kurt = sparsity_stats(acts, eps=0.01)
    # layer 0: m2 = 1, m4 = 1 -> -2; layer 1: centred (-1,-1,-1,3): m2 = 3, m4 = 21 -> 21/9 - 3
    assert kurt.item() == pytest.approx((-2.0 + (21 / 9 - 3)) / 2)
    assert silent.item() == pytest.approx((0.0 + 0.75) / 2)
    gauss = torch.randn(1, 1, 200_000)
    assert sparsity_stats(gauss)[1].item() == pytest.approx(0.0, abs=0.1)


def _probe_data(signal, n_facts=30, per_fact=4, seed=0):
    """Two classes; ``signal(y, rng)`` gives the [8] activation mean of a prompt of class y."""
    rng = np.random.default_rng(seed)
    labels, groups, rows = [], [], []
    for f in range(n_facts):
        y = f % 2
        for _ in range(per_fact):
            labels.append(y)
            groups.append(f)
            rows.append(signal(y) + rng.normal(0, 1, 8))
    acts = torch.tensor(np.array(rows), dtype=torch.float32)[:, None, :]  # [n, 1 layer, 8 neurons]
    return acts, labels, groups


def test_probe_selectivity_one_neuron_versus_distributed_code():
    onehot = _probe_data(lambda y: np.eye(8)[3] * (8.0 if y else -8.0))
    r = probe_accuracies(*onehot, config=ProbeConfig(folds=3))
    est = selectivity_estimates(r, onehot[2])
    assert est["single_accuracy"].value == pytest.approx(1.0)
    assert est["selectivity"].value == pytest.approx(1.0)
    assert est["selectivity"].n == 30  # bootstrap unit: facts
    # each neuron carries a little (d' = 1): one neuron ~ 69%, the layer ~ 92%
    spread = _probe_data(lambda y: np.full(8, 0.5 if y else -0.5))
    est = selectivity_estimates(probe_accuracies(*spread), spread[2])
    assert est["full_accuracy"].value > 0.8
    assert est["selectivity"].value < 0.9
    assert est["selectivity_above_chance"].value < 0.75


# ----------------------------------------------------------------------------- model-running


def test_smallest_k_doubling_then_bisection():
    calls = []

    def p_after(k):
        calls.append(k)
        return 0.0 if k >= 37 else 1.0

    assert smallest_k(p_after, 0.5, 256) == (37, False)
    assert len(calls) <= 14
    assert smallest_k(lambda k: 1.0, 0.5, 256) == (256, True)
    assert smallest_k(lambda k: 0.0, 0.5, 256) == (1, False)


def test_circuit_size_is_one_when_one_neuron_carries_the_answer(one_neuron_lm, germany):
    scores = torch.zeros(3, 48)
    scores[0, :10] = torch.arange(10, 0, -1).float() + 1.0
    scores[ANSWER_NEURON] = 0.5  # ranked 11th: ten irrelevant neurons go before it
    k, capped, before = circuit_size(one_neuron_lm, germany, scores, CircuitConfig(cap=64))
    assert before > 0.8 and not capped and k == 11
    assert circuit_size(one_neuron_lm, germany, scores, CircuitConfig(cap=8))[:2] == (8, True)
    ctx = MetricContext(lm=one_neuron_lm, facts=[germany], configs={"circuit_size": CircuitConfig(cap=8)})
    m = compute_metrics(["circuit_size"], ctx)  # ranks by integrated gradients: the answer neuron is first
    assert m["independent.circuit_size.median"].value == 1.0
    assert m["independent.circuit_size.capped_share"].value == 0.0


def test_electrode_set_to_zero_equals_suppressing_its_block(one_neuron_lm, germany):
    cfg = ElectrodeConfig(block=8)
    block = list(range(8, 16))
    p = electrode_probs(one_neuron_lm, germany.prompts, [[], [(1, 1, 0.0)], [(1, 1, 1.0)]], cfg)
    assert p[0] == pytest.approx(prompt_probs(one_neuron_lm, germany.prompts).mean(), rel=1e-5)
    off = prompt_probs(one_neuron_lm, germany.prompts, Intervention({1: tuple(block)})).mean()
    assert p[1] == pytest.approx(off, rel=1e-5)
    shift = ElectrodeConfig(block=8, mode="shift")
    p_shift = electrode_probs(one_neuron_lm, germany.prompts, [[], [(1, 1, 1.0)]], shift)
    assert p_shift[1] == pytest.approx(p_shift[0], rel=1e-5)  # gain 1 leaves the mean, hence all, unchanged
    np.testing.assert_allclose(block_scores(torch.ones(2, 20), 8), [[8, 8, 4], [8, 8, 4]])


def test_electrode_finds_the_block_of_the_answer_neuron(one_neuron_lm, germany):
    scores = torch.rand(3, 48)
    scores[ANSWER_NEURON] = 5.0
    cfg = ElectrodeConfig(block=8, candidates=3, max_electrodes=2, random_draws=2)
    r = electrode_test(one_neuron_lm, germany, scores, cfg)
    assert r.electrodes[0] == (2, 0, 0.0)  # layer 2, block 0 holds neuron 5; gain 0 silences it
    assert r.drop > 0.9 and r.to_half(2) == 1
    assert r.drop > r.random_drop


def test_all_metrics_on_a_tiny_model():
    lm = tiny_lm("llama")
    facts = [render(lm, f) for f in tiny_facts()]
    records = [_rec(r.fact.relation, [[1, i % 3], [2, 7]], r.fact.id) for i, r in enumerate(facts)]
    configs = {
        "circuit_size": CircuitConfig(cap=4, max_facts=2),
        "electrode": ElectrodeConfig(block=16, max_electrodes=2, candidates=2, random_draws=1, max_facts=2),
        "probe": ProbeConfig(folds=2),
    }
    ctx = MetricContext(lm=lm, facts=facts, neuron_records=records, configs=configs)
    m = compute_metrics(["all"], ctx)
    for name in INDEPENDENT:
        for key in INDEPENDENT[name].keys:
            assert f"independent.{name}.{key}" in m
    assert m["independent.sparsity.kurtosis"].n == len(facts)
    assert m["independent.probe.relation.full_accuracy"].n == len(facts)
    assert m["independent.probe.object.selectivity"].n == 0  # every object occurs in one fact only
    assert 1 <= m["independent.circuit_size.median"].value <= 4
    assert all(e.n == 0 or np.isfinite(e.value) for e in m.values())  # measured -> a number


def test_the_default_metrics_are_declared_in_their_entries():
    from legibility.metrics.independent import INDEPENDENT, default_metrics

    assert default_metrics() == ["concentration", "overlap", "sparsity", "polysemanticity"]
    assert all(not INDEPENDENT[n].default for n in INDEPENDENT if n not in default_metrics())
