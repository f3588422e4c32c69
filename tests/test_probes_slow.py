"""Probes on the embedded SmolLM2-135M (slow: real model, PARAREL)."""

from __future__ import annotations

import json

import pytest

from legibility.probes import ConceptConfig, ProbeSettings, TruthConfig, TruthSettings, run_concept, run_truth
from legibility.report.probes import write_probe_report

pytestmark = pytest.mark.slow


def test_relation_is_readable_and_selective(smollm, pararel_dir, tmp_path):
    cfg = ConceptConfig(
        relations=("P36", "P37", "P103"), facts=6, sites=("resid",), probe=ProbeSettings(folds=3)
    )
    res = run_concept(cfg, tmp_path, lm=smollm)
    rows = res["layers"]["resid"]
    assert len(rows) == 31
    head = res["headline"]["resid"]  # test facts, at the layer chosen on validation
    assert head["accuracy"] == rows[head["chosen_layer"]]["accuracy"] and head["fixed_layer"] == 20
    assert head["accuracy"]["value"] > 0.9
    assert head["selectivity"]["value"] > 0.2


def test_truth_study_runs_end_to_end(smollm, pararel_dir, tmp_path):
    cfg = TruthConfig(
        relations=("P36", "P37", "P103"),
        held_out=("P103",),
        facts=8,
        scan=30,
        templates=1,
        truth=TruthSettings(ccs_restarts=1, ccs_steps=50),
        steer_scales=(2.0,),
        steer_random=1,
        shots=2,
        judge_examples=2,
    )
    res = run_truth(cfg, tmp_path, lm=smollm)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) >= {"layers", "headline", "controls", "model_judgement", "steering", "lying"}
    assert len(res["layers"]["held_out_relations"]) == 31
    assert {"logistic", "mass_mean", "ccs"} <= set(res["layers"]["held_out_facts"][5])
    assert set(res["controls"]) == {"object_onehot", "object_embedding"}
    assert res["object_imbalance"]["train"] == 0.0  # balanced false objects
    # known facts only: the model prefers the true object on (almost) every pair
    assert res["model_judgement"]["held_out_facts"]["value"] > 0.8
    for cond in ("plain", "truthful", "lying"):
        assert 0 <= res["lying"]["model"][cond]["pair_accuracy"]["value"] <= 1
    assert res["lying"]["paired"]["lying-truthful"]["model_top1"]["mcnemar"] is not None
    assert (tmp_path / "lying.png").exists() and (tmp_path / "truth.png").exists()
    page = write_probe_report(tmp_path).read_text()
    assert "McNemar" in page and "object_onehot" in page
