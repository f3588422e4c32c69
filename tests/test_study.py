"""The study analysis: paired costs, Student-t intervals over seeds, hypothesis verdicts, goal check, report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from legibility import LegibilityError
from legibility.metrics.stats import T975, t_estimate
from legibility.report.study import analyse_study, grid_keys, study_markdown, verdict

WIDTHS = (64, 128, 512)
SEEDS = (0, 1, 2)


def _t_cdf(x: float, df: int) -> float:
    """The Student-t CDF by trapezoid integration of its density (an independent reference for T975)."""
    from math import gamma, pi, sqrt

    grid = np.linspace(-x, x, 400_001)
    c = gamma((df + 1) / 2) / (sqrt(df * pi) * gamma(df / 2))
    dens = c * (1 + grid**2 / df) ** (-(df + 1) / 2)
    inside = float(np.sum((dens[1:] + dens[:-1]) / 2 * np.diff(grid)))
    return 0.5 + inside / 2


@pytest.mark.parametrize("df", [2, 3, 5, 11, 30])
def test_t_quantiles_match_the_integrated_density(df):
    assert _t_cdf(T975[df - 1], df) == pytest.approx(0.975, abs=2e-4)


def test_t_estimate_interval():
    x = np.array([1.0, 2.0, 4.0])
    e = t_estimate(x)
    half = 4.303 * x.std(ddof=1) / np.sqrt(3)
    assert (e.value, e.n) == (pytest.approx(7 / 3), 3)
    assert (e.ci_low, e.ci_high) == (pytest.approx(7 / 3 - half), pytest.approx(7 / 3 + half))
    assert t_estimate(np.array([0.5])).ci_low == 0.5 and t_estimate(np.array([])).n == 0


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
    "dropout": {"overrides": {"model.dropout": 0.1}, "spec": -0.1, "cost": 0.1, "acc": -0.3},
    "sparse_connections": {"spec": 0.0, "noise": 0.2},
    "suppressability": {"supp": 0.3, "spec": 0.05, "cost": 0.02},
}


def test_paired_costs_verdicts_and_width():
    rows = _rows(EFFECTS)
    assert grid_keys(rows) == ["model.d_ffn"]  # dropout's constant override is not a grid axis
    study = analyse_study(rows)
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
    md = study_markdown(study)
    assert "**dropout** (dropout is bad for interpretability): held." in md
    assert "Goal" in md and "not reached" in md
    assert "| dropout - none | specific_suppressability | -0.100 [-0.100, -0.100] |" in md
    assert "| dropout | 64, 128, 512 | -0.100 [-0.100, -0.100] |" in md


def test_goal_and_contradiction():
    effects = {
        "none": {},
        "specific_suppressability": {"spec": 0.9, "cost": 0.01},
        "locality": {"spec": -0.15},
    }
    study = analyse_study(_rows(effects))
    reached = [(c["variant"], c["point"][0]) for c in study["cells"] if c["goal"]]
    assert ("specific_suppressability", 512) in reached and all(
        v == "specific_suppressability" for v, _ in reached
    )
    hyp = {h["name"]: h for h in study["hypotheses"]}
    assert hyp["locality"]["verdict"] == "contradicted"
    md = study_markdown(study)
    assert "nats): reached by specific_suppressability at d_ffn 64," in md and "at d_ffn 512." in md


def test_verdict_needs_two_pairs():
    from legibility.metrics.stats import Estimate

    assert verdict(Estimate(1.0, 1.0, 1.0, 1), +1) == "not decided"
    assert verdict(Estimate(0.2, 0.1, 0.3, 3), -1) == "contradicted"


def test_mixed_loss_stands_in_without_held_out_text():
    rows = _rows({"none": {}, "dropout": {"cost": 0.1}})
    for r in rows:
        del r["train"]["text_val_loss"]
    assert analyse_study(rows)["cost_metric"] == "val_loss"


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
            "variants": {"none": {}, "dropout": {"model.dropout": 0.1}},
            "seeds": list(SEEDS),
        }
    )
    fake = {(r["variant"], r["overrides"]["model.d_ffn"], r["seed"]): r for r in _rows(EFFECTS)}
    with ResultsStore(tmp_path / "results.duckdb") as store:
        for t in cfg.trials:
            store.add_pending(cfg.name, t)
            r = fake[(t.variant, t.overrides["model.d_ffn"], t.seed)]
            store.mark_done(t.id, {"train": r["train"], "metrics": r["metrics"]})
    page = write_report(tmp_path)
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
    assert len(study.trials) == 108 and len({t.variant for t in study.trials}) == 9
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
