import numpy as np
import pytest

from legibility.metrics.effects import random_neurons
from legibility.metrics.scorecard import (
    TIERS,
    fact_score,
    layer_histogram,
    score_metrics,
    specific_scores_v1,
)
from legibility.metrics.stats import bootstrap, mean_estimate, ratio_of_means_estimate


def test_bootstrap_interval_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = mean_estimate(rng.normal(1.0, 1.0, 20))
    large = mean_estimate(rng.normal(1.0, 1.0, 500))
    assert small.ci_low < small.value < small.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low) / 3
    assert large.ci_low < 1.0 < large.ci_high
    assert np.isnan(mean_estimate(np.array([])).value) and mean_estimate(np.array([])).n == 0
    assert bootstrap(np.mean, np.array([3.0])).ci_low == 3.0


def test_ratio_of_means_differs_from_mean_of_ratios():
    before, after = np.array([0.9, 0.1]), np.array([0.45, 0.1])
    assert ratio_of_means_estimate(before, after).value == pytest.approx((0.275 - 0.5) / 0.5)
    assert mean_estimate((after - before) / before).value == pytest.approx(-0.25)


def _control(before, suppress, amplify=None, relation="P1"):
    return {"fact_id": f"c{before}{suppress}", "relation": relation, "before": before, "suppress": suppress,
            "amplify": before if amplify is None else amplify}  # fmt: skip


def _effect(fid, rel, before, kn, rnd, act=None, amp=None, in_sample=None, **controls):
    e = {
        "fact_id": fid,
        "relation": rel,
        "before": before,
        "own": {
            "suppress": {"kn": kn, "random": rnd, "activation": before if act is None else act},
            "amplify": {"kn": before if amp is None else amp, "random": before, "activation": before},
        },
        "controls": {t: [_control(*c) for c in controls.get(t, [])] for t in TIERS},
    }
    if in_sample is not None:
        b, k, r = in_sample
        e["in_sample"] = {"before": b, "suppress": {"kn": k, "random": r}, "amplify": {"kn": b, "random": b}}
    return e


def _records(effects, without_neurons=0, rel="P1"):
    recs = [{"fact_id": e["fact_id"], "relation": e["relation"], "neurons": [[0, 1]], "n_prompts": 4,
             "min_prompts": 2} for e in effects]  # fmt: skip
    recs += [{"fact_id": f"none{i}", "relation": rel, "neurons": [], "n_prompts": 4, "min_prompts": 2}
             for i in range(without_neurons)]  # fmt: skip
    return recs


def _score(effects, without_neurons=0):
    return score_metrics(_records(effects, without_neurons), effects)


def test_effect_metrics_hand_computed():
    effects = [
        _effect(
            "a", "P1", 0.5, 0.1, 0.5, 0.4, 1.0, same_relation=[(0.2, 0.1, 0.3)], other_relation=[(0.4, 0.4)]
        ),
        _effect("b", "P1", 0.2, 0.2, 0.1, 0.2, 0.2, other_relation=[(0.5, 0.25)]),
        _effect("c", "P2", 0.4, 0.0, 0.4, 0.3, 0.6),
    ]
    m = _score(effects)
    own = [(0.1 - 0.5) / 0.5, 0.0, -1.0]
    assert m["suppression.own"].value == pytest.approx(np.mean(own))
    assert m["suppression.random"].value == pytest.approx(np.mean([0.0, -0.5, 0.0]))
    assert m["suppression.own.ratio_of_means"].value == pytest.approx((0.3 - 1.1) / 1.1)
    assert m["amplification.own"].value == pytest.approx(np.mean([1.0, 0.0, 0.5]))
    # own excess: clip(own drop - random drop, 0, 1); b's random neurons hurt more than its own: 0
    assert m["suppressability"].value == pytest.approx(np.mean([0.8, 0.0, 1.0]))
    assert (
        m["suppression.same_relation"].value == pytest.approx(-0.5) and m["suppression.same_relation"].n == 1
    )
    assert m["suppression.other_relation"].value == pytest.approx(np.mean([0.0, -0.5]))
    assert m["collateral.other_relation"].value == pytest.approx(np.mean([0.0, 0.5]))
    assert m["suppression.own.ratio_of_means@P2"].value == pytest.approx(-1.0)
    assert m["suppression.own.ratio_of_means@P1"].value == pytest.approx((0.15 - 0.35) / 0.35)
    # s_f = own excess x prod (1 - collateral of each tier the fact has)
    want = [0.8 * (1 - 0.5) * (1 - 0.0), 0.0, 1.0]
    assert m["specific_suppressability"].value == pytest.approx(np.mean(want))
    assert m["specific_suppressability"].n == 3
    assert m["specific_suppressability@P1"].value == pytest.approx(np.mean(want[:2]))
    assert "specific_suppressability.in_sample" not in m  # no split: there is no separate in-sample number


def test_in_sample_is_reported_apart_from_held_out():
    e = _effect("a", "P1", 0.5, 0.4, 0.5, in_sample=(0.6, 0.0, 0.6), same_relation=[(0.5, 0.5)])
    m = _score([e])
    assert m["specific_suppressability"].value == pytest.approx(0.2)  # held-out: 0.5 -> 0.4
    assert m["specific_suppressability.in_sample"].value == pytest.approx(1.0)  # selection prompts: wiped
    assert m["suppressability.in_sample"].value == pytest.approx(1.0)


def test_neuron_metrics_and_layer_histogram():
    records = [
        {"fact_id": "a", "relation": "P1", "neurons": [[0, 1], [1, 2]], "n_prompts": 3, "min_prompts": 2},
        {"fact_id": "b", "relation": "P1", "neurons": [[0, 1]], "n_prompts": 3, "min_prompts": 2},
        {"fact_id": "c", "relation": "P2", "neurons": [[0, 1], [2, 2]], "n_prompts": 3, "min_prompts": 2},
        {"fact_id": "d", "relation": "P2", "neurons": [], "n_prompts": 3, "min_prompts": 2},
        {"fact_id": "e", "relation": "P2", "neurons": [[5, 5]], "n_prompts": 1, "min_prompts": 2},  # too few
    ]
    m = score_metrics(records, None)
    assert m["neurons.per_fact"].value == pytest.approx(5 / 4)
    assert m["neurons.facts_with_any"].value == pytest.approx(0.75)
    assert m["neurons.overlap.same_relation"].value == pytest.approx(1.0)
    assert m["neurons.overlap.other_relation"].value == pytest.approx(1.0)
    assert "specific_suppressability" not in m  # neurons only: no effects were measured
    np.testing.assert_allclose(layer_histogram(records[:4], 3), [3 / 5, 1 / 5, 1 / 5])


def test_random_control_has_same_count_per_layer_and_avoids_the_neurons():
    kn = [(0, 1), (0, 2), (3, 5)]
    r = random_neurons(kn, 10, "seed")
    assert sorted(layer for layer, _ in r) == [0, 0, 3]
    assert not set(r) & set(kn)
    assert r == random_neurons(kn, 10, "seed") != random_neurons(kn, 10, "other")


def test_specificity_ratios_hand_computed():
    a = _effect("a", "P1", 0.5, 0.05, 0.5, same_relation=[(0.2, 0.1), (0.4, 0.4)])  # own 0.9
    b = _effect("b", "P1", 0.2, 0.0, 0.2, same_relation=[(0.5, 0.0)], same_subject=[(0.5, 0.25)])
    c = _effect("c", "P2", 0.4, 0.6, 0.4, same_relation=[(0.5, 0.6)])  # p rose
    m = _score([a, b, c])
    own, same = [0.9, 1.0, -0.5], [0.25, 1.0, -0.2]
    assert m["specificity.same_relation"].value == pytest.approx(np.mean(own) / np.mean(same))
    assert m["specificity.same_subject"].value == pytest.approx(1.0 / 0.5)
    assert m["suppression.same_subject"].n == 1
    assert m["specificity.other_relation"].n == 0  # no other-relation controls at all
    assert 0.0 <= m["specific_suppressability"].ci_low <= m["specific_suppressability"].ci_high <= 1.0


# ------------------------------------------------------------------- gaming cases: v1 is fooled, v2 is not
# Each case is a model whose neurons are not fact-specific, scored by the first definition (high) and by the
# current one (about 0). Clean: suppressing a fact's neurons removes it and nothing else.

CLEAN = {"same_relation": [(0.5, 0.5), (0.4, 0.4)], "other_relation": [(0.3, 0.3)]}


def test_a_fact_specific_model_scores_high_on_both():
    effects = [_effect(f"f{i}", "P1", 0.6, 0.0, 0.6, **CLEAN) for i in range(4)]
    assert specific_scores_v1(effects).mean() == pytest.approx(1.0)
    assert _score(effects)["specific_suppressability"].value == pytest.approx(1.0)


def test_gaming_other_relation_kill_switch():
    """The neurons leave the relation alone but wipe out every other relation's facts."""
    effects = [
        _effect(
            f"f{i}", "P1", 0.6, 0.0, 0.6, same_relation=[(0.5, 0.5)], other_relation=[(0.4, 0.0), (0.3, 0.0)]
        )
        for i in range(4)
    ]
    assert specific_scores_v1(effects).mean() == pytest.approx(1.0)
    assert _score(effects)["specific_suppressability"].value == pytest.approx(0.0)


def test_gaming_neurons_that_random_neurons_match():
    """Removing as many random neurons removes the fact just as well: nothing was located."""
    effects = [_effect(f"f{i}", "P1", 0.6, 0.06, 0.06, **CLEAN) for i in range(4)]
    assert specific_scores_v1(effects).mean() == pytest.approx(0.9)
    assert _score(effects)["specific_suppressability"].value == pytest.approx(0.0)


def test_gaming_localizing_only_the_easy_facts():
    """Two facts of ten get perfect neurons; the other eight get none and must count as 0."""
    effects = [_effect(f"f{i}", "P1", 0.6, 0.0, 0.6, **CLEAN) for i in range(2)]
    assert specific_scores_v1(effects).mean() == pytest.approx(1.0)
    m = _score(effects, without_neurons=8)
    assert m["specific_suppressability"].value == pytest.approx(0.2)
    # a relation none of whose facts has neurons scores 0, it does not vanish from the per-relation table
    records = _records(effects, 3, rel="P2")
    assert score_metrics(records, effects)["specific_suppressability@P2"].value == 0.0
    assert m["specific_suppressability"].n == 10
    assert m["neurons.facts_with_any"].value == pytest.approx(0.2)


def test_gaming_one_rising_control_hides_wiped_ones():
    """One low-p control rises 0.05 -> 0.25 (+400%); averaging before clipping hides two wiped controls."""
    effects = [
        _effect(f"f{i}", "P1", 0.6, 0.0, 0.6, same_relation=[(0.05, 0.25), (0.5, 0.0), (0.4, 0.0)])
        for i in range(3)
    ]
    assert specific_scores_v1(effects).mean() == pytest.approx(1.0)
    assert _score(effects)["specific_suppressability"].value == pytest.approx(1 - 2 / 3)


def test_gaming_answer_token_neurons():
    """The neurons suppress the answer token itself: every fact with this object goes, whatever its relation,
    while facts of the relation with other objects stay."""
    effects = [
        _effect(
            f"f{i}",
            "P1",
            0.6,
            0.0,
            0.6,
            same_relation=[(0.5, 0.5), (0.4, 0.4)],
            same_object=[(0.5, 0.0, None, "P2"), (0.3, 0.0, None, "P3")],
            other_relation=[(0.3, 0.3)],
        )
        for i in range(3)
    ]
    assert specific_scores_v1(effects).mean() == pytest.approx(1.0)
    m = _score(effects)
    assert m["specific_suppressability"].value == pytest.approx(0.0)
    assert m["collateral.same_object"].value == pytest.approx(1.0)


def test_fact_score_terms():
    e = _effect("a", "P1", 0.5, 0.1, 0.4, same_relation=[(0.5, 0.25)], same_subject=[(0.2, 0.3)])
    f = fact_score(e)
    assert f.own == pytest.approx(0.8) and f.random == pytest.approx(0.2)
    assert f.own_excess == pytest.approx(0.6)
    assert f.collateral == pytest.approx({"same_relation": 0.5, "same_subject": 0.0})  # rise clipped to 0
    assert f.specific == pytest.approx(0.6 * 0.5)


def test_bootstrap_is_scipy_bca_and_the_vectorized_forms_agree():
    from scipy import stats

    x = np.random.default_rng(3).exponential(1.0, 40)
    ref = stats.bootstrap((x,), np.mean, n_resamples=1000, method="BCa", rng=np.random.default_rng(0))
    got = mean_estimate(x)
    assert (got.ci_low, got.ci_high) == pytest.approx(tuple(ref.confidence_interval))
    assert bootstrap(np.mean, x) == got  # the row-resampling form gives the same resamples
    pairs = np.stack([x, x / 2], 1)
    assert bootstrap(lambda r: (r[:, 1].mean() - r[:, 0].mean()) / r[:, 0].mean(), pairs) == pytest.approx(
        ratio_of_means_estimate(x, x / 2)
    )


def test_t_estimate_and_holm_match_the_references():
    from scipy import stats

    from legibility.metrics.stats import holm, paired_test, t_estimate

    x = np.array([0.1, 0.3, -0.05, 0.2, 0.15])
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (t_estimate(x).ci_low, t_estimate(x).ci_high) == pytest.approx((lo, hi))
    assert paired_test(x) == pytest.approx(stats.ttest_1samp(x, 0).pvalue)
    # Holm by hand: sorted p = 0.01, 0.03, 0.04 -> x3, x2, x1 with running max
    reject, adj = holm([0.04, 0.01, 0.03, float("nan")])
    assert adj[:3] == pytest.approx([0.06, 0.03, 0.06]) and np.isnan(adj[3])
    assert reject == [False, True, False, False]
