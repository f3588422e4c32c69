import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from legibility import LegibilityError
from legibility.report.frontier import pareto_front, spearman_matrix
from legibility.sweeps import ResultsStore, parse_sweep, run_sweep

BASE = {
    "model": {"family": "gpt2", "n_layers": 1, "d_model": 16, "d_ffn": 32, "n_heads": 2, "context": 24},
    "data": {"world": {"n_subjects": 12, "n_relations": 2, "n_objects": 4}, "n_sentences": 400},
    "train": {
        "steps": 12,
        "batch_size": 4,
        "seq_len": 24,
        "warmup": 2,
        "eval_every": 6,
        "checkpoint_every": 6,
    },
}
SCORE = {"facts": 4, "ig_steps": 4}


def test_grid_variants_and_seeds_expand_with_stable_ids():
    cfg = parse_sweep(
        {
            "base": BASE,
            "variants": {"a": {}, "b": {"model.dropout": 0.1}},
            "grid": {"train.lr": [0.001, 0.01]},
            "seeds": [0, 1],
        }
    )
    assert len(cfg.trials) == 2 * 2 * 2
    again = parse_sweep(
        {
            "base": BASE,
            "variants": {"a": {}, "b": {"model.dropout": 0.1}},
            "grid": {"train.lr": [0.001, 0.01]},
            "seeds": [0, 1],
        }
    )
    assert [t.id for t in cfg.trials] == [t.id for t in again.trials]
    assert len({t.id for t in cfg.trials}) == 8
    t = next(t for t in cfg.trials if t.variant == "b" and t.seed == 1)
    assert t.run_config["model"]["dropout"] == 0.1 and t.run_config["train"]["seed"] == 1


def test_random_search_samples_from_distributions():
    cfg = parse_sweep(
        {
            "base": BASE,
            "random": {
                "n": 5,
                "space": {
                    "train.lr": {"log_uniform": [1e-4, 1e-2]},
                    "model.activation": {"choice": ["gelu", "relu"]},
                },
            },
        }
    )
    lrs = [t.overrides["train.lr"] for t in cfg.trials]
    assert len(set(lrs)) == 5 and all(1e-4 <= x <= 1e-2 for x in lrs)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"base": BASE, "colour": 1}, "unknown sweep key"),
        ({"base": BASE, "variants": {"x": {"model.widht": 3}}}, "variant 'x'"),
        ({"base": BASE, "grid": {"train.lr": []}}, "non-empty lists"),
        ({"base": BASE, "seeds": "0"}, "'seeds' must be"),
        (
            {"base": BASE, "random": {"n": 2, "space": {"train.lr": {"normal": [0, 1]}}}},
            "random.space.train.lr",
        ),
        ({"base": "missing.yaml"}, "does not exist"),
        ({"base": BASE, "score": {"fcts": 3}}, "'score'"),
    ],
)
def test_bad_sweep_configs_say_what_is_wrong(data, message):
    with pytest.raises(LegibilityError, match=message):
        parse_sweep(data)


def test_sweep_records_failures_and_reruns_skip_finished_trials(tmp_path):
    cfg = parse_sweep(
        {
            "base": BASE,
            "variants": {"ok": {}, "diverges": {"train.lr": 1e12, "train.grad_clip": 0.0}},
            "seeds": [0],
            "score": SCORE,
        }
    )
    counts = run_sweep(cfg, tmp_path, progress=False)
    assert counts == {"done": 1, "failed": 1}
    with ResultsStore(tmp_path / "results.duckdb") as store:
        rows = {r["variant"]: r for r in store.rows()}
        cols, flat = store.query(
            "SELECT variant, suppressability, val_loss FROM trials_flat WHERE status = 'done'"
        )
    assert rows["diverges"]["error"] and "loss" in rows["diverges"]["error"].lower()
    assert rows["ok"]["train"]["step"] == BASE["train"]["steps"] and rows["ok"]["train_s"] > 0
    assert flat[0][0] == "ok" and flat[0][2] is not None
    finished = rows["ok"]["finished"]
    assert run_sweep(cfg, tmp_path, progress=False) == {"done": 1, "failed": 1}
    with ResultsStore(tmp_path / "results.duckdb") as store:
        assert {r["variant"]: r for r in store.rows()}["ok"]["finished"] == finished  # not rerun


def test_sweep_killed_mid_trial_resumes(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    base = {**BASE, "train": {**BASE["train"], "steps": 60}}
    sweep.write_text(
        json.dumps(
            {
                "name": "k",
                "base": base,
                "variants": {"a": {}, "b": {"model.dropout": 0.1}},
                "seeds": [0],
                "score": SCORE,
            }
        )
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "legibility.cli", "sweep", str(sweep), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # wait until the second trial has started training (the first one is finished by then)
    while time.time() < deadline and proc.poll() is None:
        dirs = list((out / "trials").glob("b-*/train")) if (out / "trials").exists() else []
        if dirs:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    with ResultsStore(out / "results.duckdb") as store:
        rows = store.rows()
    assert [r["status"] for r in rows] == ["done", "done"]


def test_pareto_front_and_spearman():
    pts = {"a": (0.1, 0.9), "b": (0.5, 0.5), "c": (0.4, 0.4), "d": (0.9, 0.1)}
    assert pareto_front(pts, True, True) == ["a", "b", "d"]
    assert pareto_front(pts, True, False) == ["c", "d"] or pareto_front(pts, True, False) == ["d"]
    rows = [{"train": {"x": float(i), "y": float(i * i), "z": float(-i)}, "metrics": {}} for i in range(5)]
    m = spearman_matrix(rows, ["x", "y", "z"])
    assert m[0, 1] == pytest.approx(1.0) and m[0, 2] == pytest.approx(-1.0)


def _fake_rows(store: ResultsStore) -> None:
    """Trial rows as a finished sweep leaves them (synthetic numbers: this tests rendering, not training)."""
    cfg = parse_sweep(
        {
            "name": "<script>alert(1)</script>",
            "base": BASE,
            "variants": {"plain": {}, "dropout": {"model.dropout": 0.2}},
            "seeds": [0, 1, 2],
        }
    )
    for i, t in enumerate(cfg.trials):
        store.add_pending(cfg.name, t)
        store.mark_running(t.id)
        if t.variant == "dropout" and t.seed == 2:
            store.mark_failed(t.id, "LegibilityError: loss is nan at step 7 <b>not bold</b>")
            continue
        s = 0.3 + 0.1 * i
        metrics = {
            "suppressability": {"value": s, "ci_low": s - 0.1, "ci_high": s + 0.1, "n": 10},
            "neurons.per_fact": {"value": 3.0 + i, "ci_low": 2.0, "ci_high": 4.0, "n": 10},
        }
        store.mark_done(
            t.id,
            {
                "train": {"val_loss": 2.0 - 0.1 * i, "fact_accuracy": 0.2 + 0.05 * i},
                "metrics": metrics,
                "train_s": 1.0,
                "score_s": 1.0,
            },
        )


def test_report_renders_in_headless_chromium(tmp_path):
    from legibility.report.html import write_report

    with ResultsStore(tmp_path / "results.duckdb") as store:
        _fake_rows(store)
    page = write_report(tmp_path)
    text = page.read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>not bold</b>" not in text and "failed" in text
    assert (tmp_path / "frontier.png").stat().st_size > 0 and (tmp_path / "agreement.png").stat().st_size > 0
    chromium = _chromium()
    dom = subprocess.run(
        [chromium, *HEADLESS, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-ok="true"' in dom.stdout and 'data-images="2"' in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, *HEADLESS, "--window-size=1200,2000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000


def test_report_without_results_is_a_clear_error(tmp_path):
    from legibility.report.html import write_report

    with pytest.raises(LegibilityError, match="no results.duckdb"):
        write_report(tmp_path)


HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(name).exists():
            return name
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; `make install` installs Debian's chromium")
    pytest.skip("chromium not installed (make install-browser)")
    return ""


def test_ray_executor_runs_trials_and_records_failures(tmp_path):
    ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
    cfg = parse_sweep(
        {
            "name": "ray",
            "base": BASE,
            "variants": {"ok": {}, "diverges": {"train.lr": 1e12, "train.grad_clip": 0.0}},
            "seeds": [0],
            "score": SCORE,
            "executor": {"name": "ray", "address": None},
        }
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        counts = run_sweep(cfg, tmp_path, progress=False)
    finally:
        ray.shutdown()
    assert counts == {"done": 1, "failed": 1}
    with ResultsStore(tmp_path / "results.duckdb") as store:
        rows = {r["variant"]: r for r in store.rows()}
    assert "loss" in rows["diverges"]["error"].lower() and rows["ok"]["train_s"] > 0
