"""Probe results that hold: layers chosen on validation facts and reported on test facts, object-identity
controls, balanced false statements, known facts, and the statistics behind them (scipy / statsmodels against
plain implementations)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from helpers import tiny_facts, tiny_lm
from legibility.errors import LegibilityError
from legibility.facts.types import Fact
from legibility.probes import (
    balanced_false_objects,
    choose_layer,
    fixed_layer,
    mcnemar_exact,
    paired_difference,
    probe_layers,
    truth_statements,
)
from legibility.probes.concept import ProbeSettings, choose, group_folds
from legibility.probes.data import Statement, uniform_false_objects
from legibility.probes.selection import split_by_relation
from legibility.probes.stats import accuracy_estimate, group_means, mean_ci
from legibility.probes.truth import TruthSettings, fit_truth_probes, object_controls, object_onehot
from legibility.probes.truth_study import object_balance, score_layers, truth_headline

# ------------------------------------------------------------------------------------------ statistics


def plain_percentile_bootstrap(units: np.ndarray, n_boot: int = 20000, seed: int = 1) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = units[rng.integers(0, len(units), size=(n_boot, len(units)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def test_accuracy_estimate_is_the_mean_of_fact_means_with_a_bootstrap_interval_over_facts():
    rng = np.random.default_rng(0)
    groups = [f"f{i}" for i in range(300) for _ in range(1 + i % 3)]  # 1-3 statements per fact
    correct = (rng.random(len(groups)) < 0.7).astype(float)
    est = accuracy_estimate(correct, groups, seed=0)
    by_fact: dict[str, list[float]] = {}
    for g, c in zip(groups, correct, strict=True):
        by_fact.setdefault(g, []).append(c)
    units = np.array([np.mean(v) for v in by_fact.values()])
    assert est.value == pytest.approx(units.mean()) and est.n == 300
    lo, hi = plain_percentile_bootstrap(units)
    # BCa and percentile intervals agree closely for a mean of 300 bounded units
    assert est.ci_low == pytest.approx(lo, abs=0.012) and est.ci_high == pytest.approx(hi, abs=0.012)
    np.testing.assert_allclose(group_means(correct, groups), units)


@pytest.mark.parametrize("n", [5, 12, 40])
def test_all_right_or_all_wrong_gives_the_clopper_pearson_interval(n):
    # the exact interval for k = n successes is [(alpha/2)^(1/n), 1]: no bootstrap spread to speak of
    est = accuracy_estimate(np.ones(2 * n), [f"f{i // 2}" for i in range(2 * n)])
    assert (est.value, est.ci_high) == (1.0, pytest.approx(1.0))
    assert est.ci_low == pytest.approx(0.025 ** (1 / n), rel=1e-9)
    zero = accuracy_estimate(np.zeros(n), [f"f{i}" for i in range(n)])
    assert zero.ci_low == pytest.approx(0.0) and zero.ci_high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
    # a non-binary constant (a difference of 0) has no such interval: the point itself
    flat = mean_ci(np.zeros(n))
    assert (flat.ci_low, flat.ci_high) == (0.0, 0.0)


def plain_mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    m = only_a + only_b
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2**m
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mcnemar_matches_the_binomial_test_on_discordant_pairs(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(60) < 0.7
    b = np.where(rng.random(60) < 0.3, ~a, a) & (rng.random(60) < 0.8 + 0.1 * seed)
    got = mcnemar_exact(a, b)
    assert got["a_only"] == int((a & ~b).sum()) and got["b_only"] == int((~a & b).sum())
    assert got["pvalue"] == pytest.approx(plain_mcnemar_exact(a, b), rel=1e-9)
    assert mcnemar_exact(a, a)["pvalue"] == 1.0


def test_paired_difference_resamples_facts_jointly():
    # per fact a strong fact effect shared by both conditions, plus a small shift of +0.1 under b
    rng = np.random.default_rng(3)
    facts = [f"f{i}" for i in range(200) for _ in range(2)]
    effect = np.repeat(rng.normal(0, 1, 200), 2)
    a = effect + rng.normal(0, 0.1, 400)
    b = effect + 0.1 + rng.normal(0, 0.1, 400)
    res = paired_difference(a, b, facts, seed=0)
    d = res["difference"]
    units = group_means(b - a, facts)
    assert d["value"] == pytest.approx(units.mean())
    lo, hi = plain_percentile_bootstrap(units)
    assert d["ci_low"] == pytest.approx(lo, abs=0.005) and d["ci_high"] == pytest.approx(hi, abs=0.005)
    assert d["ci_low"] > 0  # the shift is found ...
    ua, ub = accuracy_estimate(a, facts), accuracy_estimate(b, facts)
    unpaired = math.hypot(ua.ci_high - ua.ci_low, ub.ci_high - ub.ci_low)
    assert d["ci_high"] - d["ci_low"] < unpaired / 5  # ... where unpaired intervals would overlap widely
    assert res["mcnemar"] is None  # not 0/1 outcomes
    binary = paired_difference(np.array([1, 1, 0, 1.0]), np.array([0, 1, 0, 0.0]), ["x", "x", "y", "z"])
    assert binary["mcnemar"] == {"a_only": 2, "b_only": 0, "pvalue": pytest.approx(0.5)}
    assert binary["difference"]["value"] == pytest.approx((-0.5 + 0 - 1) / 3)


# ---------------------------------------------------------------------------------------- layer choice


def test_fixed_layer_is_two_thirds_of_the_depth():
    assert fixed_layer(31) == 20 and fixed_layer(30) == 19 and fixed_layer(3) == 1 and fixed_layer(1) == 0
    assert fixed_layer(31, 0.5) == 15
    with pytest.raises(LegibilityError):
        fixed_layer(0)


def test_choose_layer_takes_the_first_best_and_skips_nan():
    assert choose_layer([0.5, float("nan"), 0.8, 0.8, 0.1]) == 2
    with pytest.raises(LegibilityError, match="validation"):
        choose_layer([float("nan")])


def test_split_by_relation_is_disjoint_complete_and_stratified():
    by_rel = {r: [f"{r}-{i}" for i in range(n)] for r, n in (("P1", 20), ("P2", 8), ("P3", 3))}
    parts = split_by_relation(by_rel, (0.5, 0.25, 0.25), seed=0)
    assert sum(len(p) for p in parts) == 31 and set().union(*parts) == {f for v in by_rel.values() for f in v}
    assert all(not (parts[i] & parts[j]) for i in range(3) for j in range(i + 1, 3))
    assert [len({f for f in p if f.startswith("P1-")}) for p in parts] == [10, 5, 5]
    assert all(any(f.startswith("P2-") for f in p) for p in parts)  # every relation in every part
    assert parts == split_by_relation(by_rel, (0.5, 0.25, 0.25), seed=0)  # seeded


def layered(n_facts: int, layers: int, signal: dict[int, float], d: int = 12, seed: int = 0):
    """Two statements (true, false) per fact; the truth direction exists only in the ``signal`` layers, with
    the given margin."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g, dtype=torch.float64)
    v /= v.norm()
    n = 2 * n_facts
    y = torch.tensor([1, 0] * n_facts)
    x = torch.randn(n, layers, d, generator=g, dtype=torch.float64)
    for layer, margin in signal.items():
        x[:, layer] += margin * (2 * y - 1)[:, None].double() * v
    facts = [f"f{i // 2}" for i in range(n)]
    return x.float(), y, facts, v.float()


def test_concept_probe_finds_the_layer_with_the_signal_on_validation():
    x, y, facts, _ = layered(120, 6, signal={3: 2.0, 4: 2.0})
    rows = probe_layers(x, y.tolist(), facts, facts, ProbeSettings(folds=3))
    picked = choose(rows)
    assert picked["chosen"] in (3, 4) and picked["fixed"] == 3
    assert rows[picked["chosen"]]["accuracy"].value > 0.85
    assert max(rows[i]["accuracy"].value for i in (0, 1, 2, 5)) < 0.7


def test_concept_headline_is_not_the_maximum_over_test_facts():
    # layer 4: a modest signal in every fact. Layer 1: a strong one in the test facts (fold 0) and in one of
    # the two development folds only, so cross-validation on the development facts cannot see it while the
    # test facts would pick layer 1. The layer is chosen on validation: 4.
    x, y, facts, v = layered(150, 6, signal={4: 0.7})
    folds = group_folds(facts, y.tolist(), 3, seed=0)
    rows_1 = torch.from_numpy(np.isin(folds, [0, 1]))
    x[rows_1, 1] += 3.0 * (2 * y[rows_1] - 1)[:, None].float() * v
    rows = probe_layers(x, y.tolist(), facts, facts, ProbeSettings(folds=3))
    picked = choose(rows)
    assert picked["chosen"] == 4
    assert rows[1]["accuracy"].value > rows[4]["accuracy"].value + 0.1  # the test maximum is elsewhere
    assert rows[1]["validation"].value < rows[4]["validation"].value


def truth_statements_for(facts: list[str], relation: str = "P1") -> list[Statement]:
    out = []
    for i, f in enumerate(facts):
        for true in (True, False):
            obj = f"o{i}" if true else f"o{(i + 1) % len(facts)}"
            out.append(Statement(f"s{i} is {obj}.", f"s{i} is", obj, true, f, relation, f"s{i}", 0, "x"))
    return out


def test_truth_layer_is_chosen_on_validation_and_scored_on_test():
    # a modest truth direction at layers 2 and 5 in every fact; a strong one at layer 6 in every fact but
    # the validation facts: the test facts alone would pick layer 6
    x, y, _, v = layered(160, 8, signal={2: 0.6, 5: 0.6})
    split = np.array(
        ["train"] * 160 + ["validation"] * 60 + ["held_out_facts"] * 60 + ["held_out_relations"] * 40
    )
    not_val = torch.from_numpy(split != "validation")
    x[not_val, 6] += 3.0 * (2 * y[not_val] - 1)[:, None].float() * v
    statements = truth_statements_for([f"f{i}" for i in range(160)])
    tr = np.flatnonzero(split == "train")
    fitted = fit_truth_probes(x[tr], y[tr], TruthSettings())
    splits = ("validation", "held_out_facts", "held_out_relations")
    per_layer = score_layers(fitted, x, statements, split, splits)
    head = truth_headline(per_layer, fixed_layer(8))
    for method in ("logistic", "mass_mean"):
        h = head[method]
        assert h["chosen_layer"] in (2, 5), method
        assert h["held_out_facts"] == per_layer["held_out_facts"][h["chosen_layer"]][method]
        assert 0.6 < h["held_out_facts"]["pair"]["value"] < 0.97
        assert per_layer["held_out_facts"][6][method]["pair"]["value"] > h["held_out_facts"]["pair"]["value"]
        assert (
            h["fixed_layer"] == 5 and h["fixed"]["held_out_facts"] == per_layer["held_out_facts"][5][method]
        )
    assert head["logistic"]["held_out_facts"]["pair"]["n"] == 30  # CI over the 30 test facts, not 60 rows


# ----------------------------------------------------------------------------- object-identity controls


def one_relation(counts: dict[str, int]) -> list[Fact]:
    facts, i = [], 0
    for obj, n in counts.items():
        for _ in range(n):
            facts.append(Fact(f"s{i}", "P1", obj, ("[X] is [Y] .",), id=f"f{i:03d}"))
            i += 1
    return facts


def test_balanced_false_objects_claim_every_object_as_often_false_as_true():
    facts = one_relation({"A": 9, "B": 5, "C": 3, "D": 3, "E": 2})
    facts += [Fact(f"t{i}", "P2", o, ("[X] has [Y] .",), id=f"g{i}") for i, o in enumerate("xxyyzz")]
    chosen = balanced_false_objects(facts, seed=4)
    assert set(chosen) == {f.id for f in facts}
    by_id = {f.id: f for f in facts}
    assert all(chosen[i] != by_id[i].object for i in chosen)
    for rel in ("P1", "P2"):
        true = Counter(by_id[i].object for i in chosen if by_id[i].relation == rel)
        false = Counter(o for i, o in chosen.items() if by_id[i].relation == rel)
        assert true == false
    st = truth_statements(facts, 1, false_objects=chosen)
    assert object_balance(st) == 0.0
    uniform = truth_statements(facts, 1, seed=4)  # the default (original) construction
    assert uniform == truth_statements(facts, 1, 4, uniform_false_objects(facts, 4))
    assert object_balance(uniform) > 0.2  # rare objects are mostly claimed falsely


def test_balanced_false_objects_drop_the_surplus_of_a_dominant_object_and_respect_the_key():
    chosen = balanced_false_objects(one_relation({"A": 6, "B": 1, "C": 1}))
    kept = [f for f in one_relation({"A": 6, "B": 1, "C": 1}) if f.id in chosen]
    assert Counter(f.object for f in kept) == {"A": 2, "B": 1, "C": 1}  # 2 A's for the 2 others
    assert balanced_false_objects(one_relation({"A": 3})) == {}
    # grouping by a key (e.g. the first token): objects sharing it are never paired with each other
    facts = one_relation({"Saint Louis": 2, "Saint Paul": 2, "Berlin": 3, "Bonn": 1})
    chosen = balanced_false_objects(facts, seed=1, key=lambda f: f.object.split()[0])
    assert all(chosen[f.id].split()[0] != f.object.split()[0] for f in facts if f.id in chosen)
    assert Counter(chosen.values()) == Counter(f.object for f in facts if f.id in chosen)


def object_only_setting(balanced: bool, seed: int = 0, noise: float = 0.1):
    """Statements whose features encode only the claimed object (its embedding plus noise), no truth."""
    counts = {"A": 16, "B": 8, "C": 4, "D": 4, "E": 4, "F": 4}
    facts = one_relation(counts)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(facts))
    train_ids = {facts[i].id for i in order[:24]}
    train = [f for f in facts if f.id in train_ids]
    test = [f for f in facts if f.id not in train_ids]
    if balanced:  # the study balances within each split
        chosen = {**balanced_false_objects(train, seed), **balanced_false_objects(test, seed)}
    else:  # the extreme shortcut: false statements claim objects that are never true
        chosen = {f.id: "XYZ"[i % 3] for i, f in enumerate(facts)}
    st = truth_statements(train, 1, seed, chosen) + truth_statements(test, 1, seed, chosen)
    split = np.array(["train" if s.fact in train_ids else "held_out_facts" for s in st])
    g = torch.Generator().manual_seed(seed)
    emb = {o: torch.randn(16, generator=g) for o in [*counts, "X", "Y", "Z"]}
    x = torch.stack([emb[s.obj] + noise * torch.randn(16, generator=g) for s in st])
    y = torch.tensor([s.true for s in st], dtype=torch.long)
    return st, split, x, y


def test_object_control_catches_a_truth_probe_that_reads_only_the_object():
    st, split, x, y = object_only_setting(balanced=False)
    tr = np.flatnonzero(split == "train")
    fitted = fit_truth_probes(x[tr, None], y[tr], TruthSettings())
    splits = ("held_out_facts",)
    probe = score_layers(fitted, x[:, None], st, split, splits)["held_out_facts"][0]["logistic"]["pair"]
    vocab = sorted({st[i].obj for i in tr})
    onehot = object_onehot(st, vocab)
    controls = object_controls({"object_onehot": onehot}, tr, y)
    ctrl = score_layers([controls], onehot[:, None], st, split, splits)["held_out_facts"][0]["object_onehot"]
    # the "truth" probe looks perfect, and so does the control that sees only the object
    assert probe["value"] > 0.9 and ctrl["pair"]["value"] > 0.9 and ctrl["statement"]["value"] > 0.9


def test_balanced_false_objects_leave_the_object_control_at_chance():
    st, split, x, y = object_only_setting(balanced=True, noise=0.0)
    tr = np.flatnonzero(split == "train")
    onehot = object_onehot(st, sorted({st[i].obj for i in tr}))
    controls = object_controls({"object_onehot": onehot}, tr, y)
    got = score_layers([controls], onehot[:, None], st, split, ("held_out_facts",))["held_out_facts"][0]
    assert got["object_onehot"]["pair"]["value"] == pytest.approx(0.5, abs=1e-9)  # every pair a tie
    # a truth probe on features that hold only the object has nothing to learn: flat scores
    fitted = fit_truth_probes(x[tr, None], y[tr], TruthSettings())[0]
    for name in ("logistic", "mass_mean"):
        scores = fitted[name].scores(x)[:, 0]
        assert float(scores.max() - scores.min()) < 1e-4, name
    # while the unbalanced construction hands both the same shortcut
    st_u, split_u, x_u, y_u = object_only_setting(balanced=False, noise=0.0)
    tr_u = np.flatnonzero(split_u == "train")
    scores = fit_truth_probes(x_u[tr_u, None], y_u[tr_u], TruthSettings())[0]["mass_mean"].scores(x_u)[:, 0]
    assert float(scores.max() - scores.min()) > 1.0


def test_object_onehot_marks_unseen_objects_with_zeros():
    st = truth_statements_for(["f0", "f1"])
    x = object_onehot(st, ["o0"])
    assert x[:, 0].tolist() == [1, 0, 0, 1] and x.shape == (4, 1)


# ----------------------------------------------------------------------------------------- known facts


def test_known_facts_by_candidates_and_by_top1(monkeypatch):
    import legibility.probes.truth as truth

    lm = tiny_lm("llama")
    facts = [
        f for f in tiny_facts() if f.relation == "P36"
    ]  # germany-berlin, france-paris, italy-rome, spain-madrid
    vocab = lm.model.get_input_embeddings().weight.shape[0]
    tok = {
        w: truth.first_token(lm, "the capital of x is", w)
        for w in ("berlin", "paris", "rome", "madrid", "city")
    }

    def fake_logprobs(lm_, prefixes, batch_size=16):
        rows = torch.full((len(prefixes), vocab), -10.0)
        for i, p in enumerate(prefixes):
            if "germany" in p:  # right among the candidates, and top-1 over the vocabulary
                rows[i, tok["berlin"]] = -1.0
            elif "france" in p:  # right among the candidates, but "city" beats it over the vocabulary
                rows[i, tok["paris"]], rows[i, tok["city"]] = -2.0, -1.0
            elif "italy" in p:  # wrong: prefers another capital
                rows[i, tok["madrid"]] = -1.0
            else:  # spain: right on one of its two prompts -> half of them -> known
                rows[i, tok["madrid"] if "capital of" in p else tok["rome"]] = -1.0
        yield rows

    monkeypatch.setattr(truth, "last_logprobs", fake_logprobs)
    kept, report = truth.known_facts(lm, facts, templates=2, criterion="candidates")
    assert [f.subject for f in kept] == ["germany", "france", "spain"]
    assert report["known"] == {"P36": 3} and report["examined"] == {"P36": 4}
    top1, _ = truth.known_facts(lm, facts, templates=2, criterion="top1")
    assert [f.subject for f in top1] == ["germany", "spain"]
    every, _ = truth.known_facts(lm, facts, templates=2, criterion="all", limit=2)
    assert [f.subject for f in every] == ["germany", "france"]
    with pytest.raises(LegibilityError, match="known-facts criterion"):
        truth.known_facts(lm, facts, 2, "sometimes")
