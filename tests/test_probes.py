"""Probe math pinned on synthetic data with a planted answer, plus datasets, features and the report page."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import tiny_facts, tiny_lm
from legibility.errors import LegibilityError
from legibility.probes import (
    Example,
    accuracy_estimate,
    control_labels,
    fit_ccs,
    fit_logistic,
    fit_mass_mean,
    group_split,
    load_jsonl_examples,
    pararel_examples,
    probe_layers,
    truth_statements,
)
from legibility.probes.activations import cached_features, extract, load_features
from legibility.probes.concept import ProbeSettings, group_folds
from legibility.probes.linear import ccs_loss


def planted(n: int = 400, d: int = 20, margin: float = 2.0, seed: int = 0):
    """x = label-signed margin along a unit direction v + isotropic noise; returns x, y, v."""
    v = torch.randn(d, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    v /= v.norm()  # the same planted direction for every seed
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.5).long()
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + margin * (2 * y - 1)[:, None].double() * v
    return x, y, v


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.double(), b.double()) / (a.norm() * b.norm()))


def test_logistic_recovers_planted_direction():
    x, y, v = planted()
    probe = fit_logistic(x, y)
    assert cos(probe.direction(), v) > 0.9
    xt, yt, _ = planted(seed=1)
    assert float((probe.predict(xt) == yt).double().mean()) > 0.95


def test_logistic_multiclass_beats_chance_by_far():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 10, generator=g) * 3
    y = torch.randint(0, 4, (300,), generator=g)
    x = means[y] + torch.randn(300, 10, generator=g)
    probe = fit_logistic(x[:200], y[:200], 4)
    assert float((probe.predict(x[200:]) == y[200:]).float().mean()) > 0.9


def test_mass_mean_is_the_class_mean_difference():
    x, y, _ = planted()
    probe = fit_mass_mean(x, y)
    expected = x[y == 1].mean(0) - x[y == 0].mean(0)
    torch.testing.assert_close(probe.weight[:, 0], expected)
    # the threshold is the midpoint: the two class means score +-|diff|^2 / 2
    s = probe.scores(torch.stack([x[y == 1].mean(0), x[y == 0].mean(0)]))[:, 0]
    torch.testing.assert_close(s, torch.stack([expected.norm() ** 2 / 2, -(expected.norm() ** 2) / 2]))


def test_iid_mass_mean_corrects_for_correlated_noise():
    # noise much larger along a nuisance axis that overlaps the class-mean difference
    g = torch.Generator().manual_seed(0)
    n, d = 2000, 5
    y = (torch.rand(n, generator=g) < 0.5).long()
    v = torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)
    nuisance = torch.tensor([1.0, 1.0, 0, 0, 0], dtype=torch.float64) / 2**0.5
    x = (
        torch.randn(n, d, generator=g, dtype=torch.float64) * 0.3
        + torch.randn(n, 1, generator=g, dtype=torch.float64) * 5 * nuisance
        + (2 * y - 1)[:, None].double() * (v + nuisance)
    )
    plain, iid = fit_mass_mean(x, y), fit_mass_mean(x, y, iid=True)
    acc = [float((p.predict(x) == y).double().mean()) for p in (plain, iid)]
    assert acc[1] > acc[0] + 0.1  # the covariance-corrected direction separates far better


def test_control_task_stays_at_chance():
    x, y, _ = planted(n=600)
    groups = [f"g{i // 3}" for i in range(600)]  # 3 examples per group
    feats = x[:, None, :].float()
    rows = probe_layers(feats, y.tolist(), groups, groups, ProbeSettings(folds=3))
    assert rows[0]["accuracy"].value > 0.95
    ctrl = rows[0]["control"]
    assert abs(ctrl.value - 0.5) < 0.1
    assert rows[0]["selectivity"].value > 0.35


def test_control_labels_one_per_type_and_same_distribution():
    labels = [0] * 300 + [1] * 100
    types = [f"t{i % 100}" for i in range(400)]
    ctrl = control_labels(types, labels, seed=0)
    by_type: dict[str, set[int]] = {}
    for t, c in zip(types, ctrl, strict=True):
        by_type.setdefault(t, set()).add(c)
    assert all(len(v) == 1 for v in by_type.values())
    share = np.mean([next(iter(v)) for v in by_type.values()])
    assert 0.1 < share < 0.4  # drawn from the 3:1 label distribution


def test_ccs_finds_planted_contrast_direction():
    g = torch.Generator().manual_seed(0)
    n, d = 400, 16
    v = torch.randn(d, generator=g, dtype=torch.float64)
    v /= v.norm()
    truth = (torch.rand(n, generator=g) < 0.5).long()  # 1: side a is the true one
    base = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.0
    sign = (2 * truth - 1)[:, None].double()
    xa = base + 2.0 * sign * v + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    xb = base - 2.0 * sign * v + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    probe = fit_ccs(xa[:300], xb[:300], truth[:300], restarts=3, steps=300, seed=0)
    assert abs(cos(probe.direction(), v)) > 0.9
    acc = float(((probe.truth_score(xa[300:], xb[300:]) > 0.5).long() == truth[300:]).double().mean())
    assert acc > 0.95  # sign fixed on training labels carries to test


def test_ccs_loss_values():
    p = torch.tensor([0.9, 0.5])
    q = torch.tensor([0.1, 0.5])
    # consistency 0 on both; confidence min(.9,.1)^2 = .01 and .25
    assert float(ccs_loss(p, q)) == pytest.approx((0.01 + 0.25) / 2)


def test_group_split_never_leaks():
    groups = [f"f{i // 7}" for i in range(700)]
    train, test = group_split(groups, 0.25, seed=3)
    assert not {g for g, t in zip(groups, train, strict=True) if t} & {
        g for g, t in zip(groups, test, strict=True) if t
    }
    assert 0.2 < test.mean() < 0.3
    folds = group_folds(groups, [i // 7 % 2 for i in range(700)], 3, seed=0)
    for g in set(groups):
        assert len({int(f) for f, h in zip(folds, groups, strict=True) if h == g}) == 1


def test_accuracy_estimate_bootstraps_over_groups():
    correct = np.array([1, 1, 1, 1, 0, 0])  # group a: 4 right, group b: 2 wrong
    est = accuracy_estimate(correct, ["a"] * 4 + ["b"] * 2)
    assert est.value == pytest.approx(0.5)  # mean of per-group means, not of examples
    assert est.n == 2


def test_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text('{"text": "a dog", "label": "animal"}\n\n{"text": "a car", "label": "thing"}\n{"text": 3}\n')
    with pytest.raises(LegibilityError, match=r"data.jsonl:4: 'text'"):
        load_jsonl_examples(p)
    p.write_text('{"text": "a dog", "label": "x"}\nnot json\n')
    with pytest.raises(LegibilityError, match=r"data.jsonl:2: not valid JSON"):
        load_jsonl_examples(p)
    p.write_text('{"text": "a dog", "label": "x", "subject": "cat"}\n')
    with pytest.raises(LegibilityError, match=r"data.jsonl:1: 'subject'"):
        load_jsonl_examples(p)
    p.write_text('{"text": "a dog", "label": "x", "group": 1}\n{"text": "a cat", "label": "y"}\n')
    ex = load_jsonl_examples(p)
    assert [e.group for e in ex] == ["1", "line-2"]


def test_pararel_examples_group_by_fact_and_drop_rare_labels():
    facts = tiny_facts()
    ex = pararel_examples(facts, "relation")
    assert {e.label for e in ex} == {"P36", "P37"}
    assert all("[Y]" not in e.text for e in ex)
    assert len({e.group for e in ex}) == len(facts)
    assert pararel_examples(facts, "object") == []
    from legibility.facts.types import Fact

    inverted = Fact(
        "paris", "P1376", "france", ("[Y] has the capital paris .", "paris is the capital of [Y] .")
    )
    ex = pararel_examples([inverted, inverted], "relation", min_per_label=1)
    assert [e.text for e in ex] == [
        "paris is the capital of"
    ] * 2  # the inverted template is skipped  # every object occurs once: no class with 2 facts


def test_truth_statements_pair_true_with_same_relation_false():
    st = truth_statements(tiny_facts(), templates=2, seed=0)
    assert len(st) % 2 == 0
    for t, f in zip(st[::2], st[1::2], strict=True):
        assert t.true and not f.true and t.fact == f.fact and t.other == f.obj and f.other == t.obj
        assert t.obj != f.obj
    objects = {"P36": {"berlin", "paris", "rome", "madrid"}}
    assert all(s.obj in objects["P36"] for s in st if s.relation == "P36")


def test_features_cached_as_safetensors_and_positions(tmp_path):
    lm = tiny_lm("llama")
    texts = ["the capital of germany is", "the capital of france is berlin"]
    feats = cached_features(lm, tmp_path, texts, ["germany", "france"], "last")
    assert feats["resid"].shape == (2, 4, 32) and feats["ffn"].shape == (2, 3, 48)
    assert sorted(p.name for p in (tmp_path / "ffn").iterdir())[0] == "layer-00.safetensors"
    again = load_features(tmp_path, ("resid", "ffn"))
    torch.testing.assert_close(again["resid"], feats["resid"])
    # the subject position reads the token of "germany" (index 3), same as the last token of a 4-token text
    sub = extract(lm, texts[:1], ["germany"], "subject")
    short = extract(lm, ["the capital of germany"], None, "last")
    torch.testing.assert_close(sub["resid"], short["resid"])
    with pytest.raises(LegibilityError, match="not found"):
        extract(lm, texts[:1], ["spain"], "subject")


def test_concept_run_keyed_and_reported(tmp_path):
    from legibility.probes.run import ConceptConfig, run_concept
    from legibility.report.probes import write_probe_report

    lm = tiny_lm("gpt2")
    data = tmp_path / "d.jsonl"
    words = ["germany", "france", "italy", "spain", "berlin", "paris", "rome", "madrid", "english"]
    rows = [{"text": f"the capital of {w} is", "label": "ab"[i % 2], "group": w} for i, w in enumerate(words)]
    rows += [{"text": f"in {r['group']} a city", "label": r["label"], "group": r["group"]} for r in rows]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ConceptConfig(model="tiny", source=str(data), probe=ProbeSettings(folds=3, max_iter=20))
    res = run_concept(cfg, tmp_path / "run", lm=lm)
    assert len(res["layers"]["resid"]) == 4 and len(res["layers"]["ffn"]) == 3
    # 9 facts in 3 folds: 3 test facts, the layer chosen on the 6 development facts
    assert (
        res["layers"]["resid"][0]["accuracy"]["n"] == 3 and res["layers"]["resid"][0]["validation"]["n"] == 6
    )
    head = res["headline"]["resid"]
    assert (
        head["fixed_layer"] == 2
        and head["accuracy"] == res["layers"]["resid"][head["chosen_layer"]]["accuracy"]
    )
    assert (tmp_path / "run" / "accuracy.png").stat().st_size > 1000
    page = write_probe_report(tmp_path / "run").read_text()
    assert "selectivity" in page and "data:image/png;base64," in page and "chosen layer" in page
    with pytest.raises(LegibilityError, match="folds >= 3"):
        run_concept(
            ConceptConfig(model="tiny", source=str(data), probe=ProbeSettings(folds=2)),
            tmp_path / "r2",
            lm=lm,
        )
    with pytest.raises(LegibilityError, match="other settings"):
        run_concept(
            ConceptConfig(model="tiny", source=str(data), position="subject"), tmp_path / "run", lm=lm
        )


def test_example_type_defaults():
    e = Example("t", "l", "g")
    assert e.type == "" and e.subject == ""


def test_pair_accuracy_counts_ties_as_half():
    from legibility.probes.truth import pair_correct

    np.testing.assert_array_equal(
        pair_correct(np.array([2.0, 1.0, 1.0]), np.array([1.0, 2.0, 1.0])), [1, 0, 0.5]
    )


def test_last_logprobs_of_padded_batches_equal_each_prompt_alone():
    from helpers import tiny_lm
    from legibility.probes.truth import last_logprobs

    lm = tiny_lm("llama")
    texts = ["The capital of France is", "Paris is the", "A"]
    got = torch.cat(list(last_logprobs(lm, texts, batch_size=2)))
    for i, text in enumerate(texts):
        ref = lm.model(input_ids=torch.tensor([lm.encode(text)])).logits[0, -1].float().log_softmax(-1)
        assert torch.allclose(got[i], ref, atol=1e-5)


def test_labelled_text_file_that_is_not_utf8_is_a_one_line_error(tmp_path):
    from legibility.probes.data import load_jsonl_examples

    bad = tmp_path / "labels.jsonl"
    bad.write_bytes(b'{"text": "caf\xe9", "label": "a"}\n')
    with pytest.raises(LegibilityError, match="is not UTF-8 text"):
        load_jsonl_examples(bad)


def test_next_token_readout_matches_each_prompt_alone():
    from legibility.probes.truth import next_token_readout

    lm = tiny_lm("llama")
    texts = ["the capital of france is", "paris is the", "a"]
    good, bad = [lm.encode(" paris")[0], 7, 9], [lm.encode(" rome")[0], 8, 9]
    margins, top1 = next_token_readout(lm, texts, good, bad)
    for i, text in enumerate(texts):
        ref = lm.model(input_ids=torch.tensor([lm.encode(text)])).logits[0, -1].float().log_softmax(-1)
        assert float(margins[i]) == pytest.approx(float(ref[good[i]] - ref[bad[i]]), abs=1e-5)
        assert bool(top1[i]) == (int(ref.argmax()) == good[i])
    assert float(margins[2]) == 0.0
