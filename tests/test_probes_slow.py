"""Probes on the embedded SmolLM2-135M (slow: real model, PARAREL)."""

from __future__ import annotations

import json

import pytest

from legibility.probes import ConceptConfig, ProbeSettings, TruthConfig, TruthSettings, run_concept, run_truth

pytestmark = pytest.mark.slow


def test_relation_is_readable_and_selective(smollm, pararel_dir, tmp_path):
    cfg = ConceptConfig(
        relations=("P36", "P37", "P103"), facts=4, sites=("resid",), probe=ProbeSettings(folds=2)
    )
    res = run_concept(cfg, tmp_path, lm=smollm)
    rows = res["layers"]["resid"]
    assert len(rows) == 31
    best = rows[res["best_layer"]["resid"]]
    assert best["accuracy"]["value"] > 0.9
    assert best["selectivity"]["value"] > 0.2


def test_truth_study_runs_end_to_end(smollm, pararel_dir, tmp_path):
    cfg = TruthConfig(
        relations=("P36", "P37", "P103"),
        held_out=("P103",),
        facts=5,
        templates=1,
        truth=TruthSettings(ccs_restarts=1, ccs_steps=50),
        steer_scales=(2.0,),
        steer_random=1,
        shots=2,
        judge_examples=2,
    )
    res = run_truth(cfg, tmp_path, lm=smollm)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) >= {"layers", "model_judgement", "steering", "lying"}
    assert len(res["layers"]["held_out_relations"]) == 31
    assert {"logistic", "mass_mean", "ccs"} <= set(res["layers"]["held_out_facts"][5])
    for cond in ("plain", "truthful", "lying"):
        assert 0 <= res["lying"]["model"][cond]["pair_accuracy"]["value"] <= 1
    assert (tmp_path / "lying.png").exists() and (tmp_path / "truth.png").exists()
