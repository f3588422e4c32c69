"""The study analysis: paired costs, Student-t intervals over seeds, hypothesis verdicts, goal check, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from legibility import LegibilityError
from legibility.metrics.stats import t_estimate
from legibility.report.study import analyse_study, grid_keys, load_plan, study_markdown, verdict

WIDTHS = (64, 128, 512)
SEEDS = (0, 1, 2)


def test_t_estimate_interval():
    x = np.array([1.0, 2.0, 4.0])
    e = t_estimate(x)
    half = 4.302652729911275 * x.std(ddof=1) / np.sqrt(3)  # t(0.975, 2), from a table to 15 digits
    assert (e.value, e.n) == (pytest.approx(7 / 3), 3)
    assert (e.ci_low, e.ci_high) == (pytest.approx(7 / 3 - half), pytest.approx(7 / 3 + half))
    assert t_estimate(np.array([0.5])).ci_low == 0.5 and t_estimate(np.array([])).n == 0
    # above df 30 the quantile is not the normal's 1.96 (the old table's shortcut, 3.8% narrow at df 32)
    y = np.random.default_rng(0).normal(size=33)
    e = t_estimate(y)
    assert (e.ci_high - e.value) / (y.std(ddof=1) / np.sqrt(33)) == pytest.approx(2.0369, abs=1e-4)


PLAN = load_plan(Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "study-hypotheses.yaml")


def _rows(effects: dict[str, dict]) -> list[dict]:
    """Finished trials of a width sweep. Per seed a shared offset moves every variant alike (as a seed's data
    order would), so paired differences recover the planted effects exactly while unpaired ones are noisy."""
    rng = np.random.default_rng(0)
    offset = {s: rng.normal(0, 0.05) for s in SEEDS}
    rows = []
    for variant, eff in effects.items():
        for w in WIDTHS:
            for s in SEEDS:
                base_spec = 0.2 + 0.1 * np.log2(w / 64)  # wider is more specific
                noise = eff.get("noise", 0.0) * rng.normal()
                rows.append(
                    {
                        "variant": variant,
                        "seed": s,
                        "status": "done",
                        "overrides": {**eff.get("overrides", {}), "model.d_ffn": w},
                        "train": {
                            "text_val_loss": 2.5 + offset[s] + eff.get("cost", 0.0),
                            "val_loss": 2.0,
                            "fact_accuracy": 0.9 + eff.get("acc", 0.0),
                        },
                        "metrics": {
                            "specific_suppressability": {
                                "value": base_spec + offset[s] + eff.get("spec", 0.0) + noise
                            },
                            "suppressability": {"value": 0.5 + eff.get("supp", 0.0)},
                        },
                    }
                )
    return rows


EFFECTS = {
    "none": {},
    "dropout": {"overrides": {"model.builtin_dropout": 0.1}, "spec": -0.1, "cost": 0.1, "acc": -0.3},
    "sparse_connections": {"spec": 0.0, "noise": 0.2},
    "suppressability": {"supp": 0.3, "spec": 0.05, "cost": 0.02},
}


def test_paired_costs_verdicts_and_width():
    rows = _rows(EFFECTS)
    assert grid_keys(rows) == ["model.d_ffn"]  # dropout's constant override is not a grid axis
    study = analyse_study(rows, plan=PLAN)
    assert study["cost_metric"] == "text_val_loss" and study["points"] == [[64], [128], [512]]
    cell = {(c["variant"], c["point"][0]): c for c in study["cells"]}
    assert cell[("dropout", 128)]["cost"]["value"] == pytest.approx(0.1)
    assert cell[("dropout", 128)]["cost"]["ci_high"] - cell[("dropout", 128)]["cost"]["ci_low"] < 1e-9
    assert cell[("none", 64)]["cost"]["value"] == 0.0
    assert cell[("dropout", 512)]["accuracy_cost"]["value"] == pytest.approx(0.3)  # top-1 lost, paired
    hyp = {h["name"]: h for h in study["hypotheses"]}
    assert hyp["dropout"]["verdict"] == "held" and hyp["dropout"]["difference"]["n"] == 9
    assert hyp["dropout"]["difference"]["value"] == pytest.approx(-0.1)
    assert [e["value"] for e in hyp["dropout"]["per_point"]] == pytest.approx([-0.1] * 3)
    comp = {c["variant"]: c for c in study["comparisons"]}
    assert set(comp) == {"dropout", "sparse_connections", "suppressability"}
    assert comp["dropout"]["cost"]["value"] == pytest.approx(0.1) and comp["dropout"]["cost"]["n"] == 9
    assert comp["suppressability"]["suppressability"]["value"] == pytest.approx(0.3)
    assert comp["dropout"]["points"] == [[64], [128], [512]]
    assert hyp["sparse connections"]["verdict"] == "not decided"
    assert hyp["suppressability objective (its own number)"]["verdict"] == "held"
    width = hyp["width"]
    assert width["verdict"] == "held" and width["difference"]["value"] == pytest.approx(0.3)
    assert width["pooled"]["n"] == 12
    assert "SoLU" not in hyp  # a hypothesis whose variant did not run is left out, not guessed
    assert hyp["dropout"]["p_holm"] >= hyp["dropout"]["p"]
    md = study_markdown(study)
    assert "**dropout** (dropout (on the FFN neurons) is bad for interpretability): held." in md
    assert "Holm-adjusted" in md
    assert "Goal" in md and "not reached" in md
    assert "| dropout - none | specific_suppressability | -0.100 [-0.100, -0.100] |" in md
    assert "| dropout | 64, 128, 512 | -0.100 [-0.100, -0.100] |" in md


def test_goal_and_contradiction():
    effects = {
        "none": {},
        "specific_suppressability": {"spec": 0.9, "cost": 0.01},
        "locality": {"spec": -0.15},
    }
    study = analyse_study(_rows(effects), plan=PLAN)
    reached = [(c["variant"], c["point"][0]) for c in study["cells"] if c["goal"]]
    assert ("specific_suppressability", 512) in reached and all(
        v == "specific_suppressability" for v, _ in reached
    )
    hyp = {h["name"]: h for h in study["hypotheses"]}
    assert hyp["locality"]["verdict"] == "contradicted"
    md = study_markdown(study)
    assert "nats): reached by specific_suppressability at d_ffn 64," in md and "at d_ffn 512." in md


def test_holm_turns_a_lone_marginal_result_into_not_decided():
    """One planted effect at p ~ 0.02 held alone; among six other tests Holm asks for p < 0.05 / 7."""
    rng = np.random.default_rng(5)
    base = {"none": {}, "locality": {"spec": 0.01}}
    rows = _rows(base)
    for r in rows:  # noise that leaves the difference marginal
        if r["variant"] == "locality":
            r["metrics"]["specific_suppressability"]["value"] += float(rng.normal(0, 0.012))
    alone = analyse_study(rows, plan=PLAN)
    h = {x["name"]: x for x in alone["hypotheses"]}["locality"]
    assert h["p"] < 0.05 and h["verdict_unadjusted"] == "held"
    for v in ("dropout", "solu", "decorrelation", "sparse_connections", "explicit_dropout"):
        rows += [dict(r, variant=v) for r in _rows({"none": {}, v: {}}) if r["variant"] == v]
    family = analyse_study(rows, plan=PLAN)
    h = {x["name"]: x for x in family["hypotheses"]}["locality"]
    assert h["p_holm"] > 0.05 and h["verdict"] == "not decided" and h["verdict_unadjusted"] == "held"


def test_verdict_needs_two_pairs():
    from legibility.metrics.stats import Estimate

    assert verdict(Estimate(1.0, 1.0, 1.0, 1), +1) == "not decided"
    assert verdict(Estimate(0.2, 0.1, 0.3, 3), -1) == "contradicted"


def test_mixed_loss_stands_in_without_held_out_text():
    rows = _rows({"none": {}, "dropout": {"cost": 0.1}})
    for r in rows:
        del r["train"]["text_val_loss"]
    assert analyse_study(rows)["cost_metric"] == "val_loss"


def test_plan_files_are_checked(tmp_path):
    bad = tmp_path / "h.yaml"
    bad.write_text("hypotheses: [{name: x, variant: a}]\n")
    with pytest.raises(LegibilityError, match="hypothesis 1 needs exactly"):
        load_plan(bad)
    bad.write_text("hypotheses: []\ngoals: {}\n")
    with pytest.raises(LegibilityError, match="unknown key"):
        load_plan(bad)
    assert len(PLAN.hypotheses) == 10 and PLAN.goal.at_least == 0.8


def test_report_writes_the_study(tmp_path):
    from legibility.report.html import write_report
    from legibility.sweeps.config import parse_sweep
    from legibility.sweeps.results import ResultsStore

    pytest.importorskip("matplotlib")
    base = {
        "model": {"n_layers": 1, "d_model": 16, "d_ffn": 32, "n_heads": 2, "context": 16},
        "train": {"seq_len": 8},
    }
    cfg = parse_sweep(
        {
            "name": "s",
            "base": base,
            "grid": {"model.d_ffn": list(WIDTHS)},
            "variants": {"none": {}, "dropout": {"regularizers": [{"name": "ffn_dropout", "p": 0.1}]}},
            "seeds": list(SEEDS),
        }
    )
    fake = {(r["variant"], r["overrides"]["model.d_ffn"], r["seed"]): r for r in _rows(EFFECTS)}
    with ResultsStore(tmp_path / "results.duckdb") as store:
        for t in cfg.trials:
            store.add_pending(cfg.name, t)
            r = fake[(t.variant, t.overrides["model.d_ffn"], t.seed)]
            store.mark_done(t.id, {"train": r["train"], "metrics": r["metrics"]})
    page = write_report(tmp_path, plan=PLAN)
    text = page.read_text()
    assert "Study: variants against the baseline" in text and "<b>dropout</b>" in text
    section = text.split("Study: variants against the baseline")[1].split("<h2>")[0]
    assert section.count("<table>") == 3  # the study's cells, per-grid-point differences, every variant
    study = json.loads((tmp_path / "study.json").read_text())
    assert {h["name"] for h in study["hypotheses"]} == {"width", "dropout"}
    assert (tmp_path / "study_frontier.png").stat().st_size > 0 and (
        tmp_path / "study_width.png"
    ).stat().st_size > 0
    assert "held" in (tmp_path / "study.md").read_text()
    with pytest.raises(LegibilityError, match="choose one of dropout, none"):
        write_report(tmp_path, baseline="nonee")


def test_module_example_runs():
    import doctest

    import legibility.report.study as study

    assert doctest.testmod(study).failed == 0


def test_study_parts_share_their_baseline_trials(tmp_path, monkeypatch):
    """The dose part reuses the study's `none` trials (same resolved config, same ids) instead of retraining."""
    from pathlib import Path

    from legibility.sweeps.config import load_sweep

    root = Path(__file__).resolve().parents[1] / "configs" / "sweeps"
    # the study's text folder (relative to where the sweep runs): its content is part of every trial id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "study_text").mkdir(parents=True)
    (tmp_path / "runs" / "study_text" / "a.txt").write_text("some general text\n")
    study, dose = load_sweep(root / "study.yaml"), load_sweep(root / "study-dose.yaml")
    assert len(study.trials) == 120 and len({t.variant for t in study.trials}) == 10
    assert {t.run_config["model"]["d_ffn"] for t in study.trials} == {64, 128, 256, 512}
    ids = {t.id for t in study.trials}
    base = [t for t in dose.trials if t.variant == "none"]
    assert len(base) == 3 and all(t.id in ids for t in base)
    assert not any(t.id in ids for t in dose.trials if t.variant != "none")
    width = load_sweep(root / "study-width.yaml")  # more baseline seeds: new ids, same config otherwise
    assert len(width.trials) == 24 and not {t.id for t in width.trials} & ids
    same = [t for t in study.trials if t.variant == "none" and t.seed == 0]
    for t in width.trials:
        twin = next(s for s in same if s.run_config["model"]["d_ffn"] == t.run_config["model"]["d_ffn"])
        assert {**t.run_config, "train": {}} == {**twin.run_config, "train": {}}
        assert {**t.run_config["train"], "seed": 0} == twin.run_config["train"]
