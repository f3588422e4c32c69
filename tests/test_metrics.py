import numpy as np
import pytest

from legibility.metrics.effects import random_neurons
from legibility.metrics.scorecard import effect_metrics, layer_histogram, neuron_metrics
from legibility.metrics.stats import bootstrap, mean_estimate, ratio_of_means_estimate


def test_bootstrap_interval_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = mean_estimate(rng.normal(1.0, 1.0, 20))
    large = mean_estimate(rng.normal(1.0, 1.0, 2000))
    assert small.ci_low < small.value < small.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low) / 5
    assert large.ci_low < 1.0 < large.ci_high
    assert np.isnan(mean_estimate(np.array([])).value) and mean_estimate(np.array([])).n == 0
    assert bootstrap(np.mean, np.array([3.0])).ci_low == 3.0


def test_ratio_of_means_differs_from_mean_of_ratios():
    before, after = np.array([0.9, 0.1]), np.array([0.45, 0.1])
    assert ratio_of_means_estimate(before, after).value == pytest.approx((0.275 - 0.5) / 0.5)
    assert mean_estimate((after - before) / before).value == pytest.approx(-0.25)


def _effect(fid, rel, before, kn, rnd, act, amp, same=(), other=()):
    return {
        "fact_id": fid,
        "relation": rel,
        "before": before,
        "own": {
            "suppress": {"kn": kn, "random": rnd, "activation": act},
            "amplify": {"kn": amp, "random": before, "activation": before},
        },
        "same": [{"before": b, "suppress": s, "amplify": a} for b, s, a in same],
        "other": [{"before": b, "suppress": s, "amplify": a} for b, s, a in other],
    }


def test_effect_metrics_hand_computed():
    effects = [
        _effect("a", "P1", 0.5, 0.1, 0.5, 0.4, 1.0, same=[(0.2, 0.1, 0.3)], other=[(0.4, 0.4, 0.4)]),
        _effect("b", "P1", 0.2, 0.2, 0.1, 0.2, 0.2, other=[(0.5, 0.25, 0.5)]),
        _effect("c", "P2", 0.4, 0.0, 0.4, 0.3, 0.6),
    ]
    m = effect_metrics(effects)
    own = [(0.1 - 0.5) / 0.5, 0.0, -1.0]
    assert m["suppression.own"].value == pytest.approx(np.mean(own))
    assert m["suppression.random"].value == pytest.approx(np.mean([0.0, -0.5, 0.0]))
    assert m["suppression.own.ratio_of_means"].value == pytest.approx((0.3 - 1.1) / 1.1)
    assert m["amplification.own"].value == pytest.approx(np.mean([1.0, 0.0, 0.5]))
    assert m["suppressability"].value == pytest.approx(np.mean([0.8 - 0.0, 0.0 - 0.5, 1.0 - 0.0]))
    assert (
        m["suppression.same_relation"].value == pytest.approx(-0.5) and m["suppression.same_relation"].n == 1
    )
    assert m["suppression.other_relation"].value == pytest.approx(np.mean([0.0, -0.5]))
    assert m["suppression.own.ratio_of_means@P2"].value == pytest.approx(-1.0)
    assert m["suppression.own.ratio_of_means@P1"].value == pytest.approx((0.15 - 0.35) / 0.35)


def test_neuron_metrics_and_layer_histogram():
    records = [
        {"relation": "P1", "neurons": [[0, 1], [1, 2]], "n_prompts": 3, "min_prompts": 2},
        {"relation": "P1", "neurons": [[0, 1]], "n_prompts": 3, "min_prompts": 2},
        {"relation": "P2", "neurons": [[0, 1], [2, 2]], "n_prompts": 3, "min_prompts": 2},
        {"relation": "P2", "neurons": [], "n_prompts": 3, "min_prompts": 2},
    ]
    m = neuron_metrics(records)
    assert m["neurons.per_fact"].value == pytest.approx(5 / 4)
    assert m["neurons.facts_with_any"].value == pytest.approx(0.75)
    assert m["neurons.overlap.same_relation"].value == pytest.approx(1.0)
    assert m["neurons.overlap.other_relation"].value == pytest.approx(1.0)
    np.testing.assert_allclose(layer_histogram(records, 3), [3 / 5, 1 / 5, 1 / 5])


def test_random_control_has_same_count_per_layer_and_avoids_the_neurons():
    kn = [(0, 1), (0, 2), (3, 5)]
    r = random_neurons(kn, 10, "seed")
    assert sorted(layer for layer, _ in r) == [0, 0, 3]
    assert not set(r) & set(kn)
    assert r == random_neurons(kn, 10, "seed") != random_neurons(kn, 10, "other")


def test_specific_suppressability_and_specificity_ratios_hand_computed():
    from legibility.metrics.scorecard import specific_scores

    a = _effect("a", "P1", 0.5, 0.05, 0.5, 0.4, 1.0, same=[(0.2, 0.1, 0.2), (0.4, 0.4, 0.4)])  # own 0.9
    b = _effect("b", "P1", 0.2, 0.0, 0.2, 0.2, 0.2, same=[(0.5, 0.0, 0.5)])  # kill switch: own 1, same 1
    c = _effect("c", "P2", 0.4, 0.6, 0.4, 0.3, 0.6, same=[(0.5, 0.6, 0.5)])  # p rose: own drop clipped to 0
    d = _effect("d", "P3", 0.4, 0.0, 0.4, 0.3, 0.6)  # no same-relation control: left out
    b["same_subject"] = [{"before": 0.5, "suppress": 0.25, "amplify": 0.5}]
    m = effect_metrics([a, b, c, d])
    want = [0.9 * (1 - 0.25), 1.0 * (1 - 1.0), 0.0]
    assert list(specific_scores([a, b, c, d])) == pytest.approx(want)
    assert m["specific_suppressability"].value == pytest.approx(np.mean(want))
    assert m["specific_suppressability"].n == 3
    own, same = [0.9, 1.0, -0.5], [0.25, 1.0, -0.2]
    assert m["specificity.same_relation"].value == pytest.approx(np.mean(own) / np.mean(same))
    assert m["specificity.same_subject"].value == pytest.approx(1.0 / 0.5)
    assert m["suppression.same_subject"].n == 1
    assert m["specificity.other_relation"].n == 0  # no other-relation controls at all
    assert 0.0 <= m["specific_suppressability"].ci_low <= m["specific_suppressability"].ci_high <= 1.0
