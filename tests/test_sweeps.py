import dataclasses
import hashlib
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
from legibility.training.checkpoint import latest_checkpoint

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
            "variants": {"a": {}, "b": {"model.builtin_dropout": 0.1}},
            "grid": {"train.lr": [0.001, 0.01]},
            "seeds": [0, 1],
        }
    )
    assert len(cfg.trials) == 2 * 2 * 2
    again = parse_sweep(
        {
            "base": BASE,
            "variants": {"a": {}, "b": {"model.builtin_dropout": 0.1}},
            "grid": {"train.lr": [0.001, 0.01]},
            "seeds": [0, 1],
        }
    )
    assert [t.id for t in cfg.trials] == [t.id for t in again.trials]
    assert len({t.id for t in cfg.trials}) == 8
    t = next(t for t in cfg.trials if t.variant == "b" and t.seed == 1)
    assert t.run_config["model"]["builtin_dropout"] == 0.1 and t.run_config["train"]["seed"] == 1


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
        ({"base": BASE, "score": {"fcts": 3}}, r"score: unknown key\(s\) fcts"),
    ],
)
def test_bad_sweep_configs_say_what_is_wrong(data, message):
    with pytest.raises(LegibilityError, match=message):
        parse_sweep(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"variants": {"../../x": {}}}, r"variant name '../../x' is not allowed"),
        ({"variants": {"a/b": {}}}, r"variant name 'a/b' is not allowed"),
        ({"variants": {"..": {}}}, r"variant name '..' is not allowed"),
        ({"variants": {"$x^2$": {}}}, r"variant name '\$x\^2\$' is not allowed"),
        ({"variants": {"": {}}}, r"variant name '' is not allowed"),
        ({"executor": {"workers": "two"}}, r"executor.workers = 'two' is not allowed; give an integer >= 1"),
        ({"executor": {"workers": 0}}, r"executor.workers = 0 is not allowed"),
        (
            {"executor": {"name": "slurm"}},
            r"executor.name = 'slurm' is not allowed; choose one of local, ray",
        ),
        ({"score": {"facts": -5}}, r"score.facts = -5 is out of range; allowed: in \[1, 1000000\]"),
        ({"score": {"threshold": 1.5}}, r"score.threshold = 1.5 is out of range"),
        ({"score": {"ig_steps": "many"}}, r"score.ig_steps: expected an integer"),
        (
            {"variants": {"a": {"train.lr": -1}}},
            r"variant 'a' .*train.lr = -1.0 is out of range; allowed: > 0",
        ),
    ],
)
def test_sweep_values_out_of_range_are_one_line_errors(data, message):
    with pytest.raises(LegibilityError, match=message) as e:
        parse_sweep({"base": BASE, **data})
    assert "\n" not in str(e.value)


def test_allowed_variant_names_pass_and_trial_dirs_stay_under_out(tmp_path):
    from legibility.sweeps.config import Trial
    from legibility.sweeps.run import trial_dir

    cfg = parse_sweep({"base": BASE, "variants": {"drop-0.1_v2": {}}})
    (t,) = cfg.trials
    assert trial_dir(tmp_path, t) == (tmp_path / "trials" / t.id).resolve()
    evil = Trial("../../escaped", "x", 0, {}, {})
    with pytest.raises(LegibilityError, match="outside"):
        trial_dir(tmp_path, evil)


def test_trial_ids_hash_the_full_resolved_config():
    def ids(**extra) -> list[str]:
        return [t.id for t in parse_sweep({"base": BASE, "seeds": [0], "score": SCORE, **extra}).trials]

    same = ids()
    assert same == ids()
    changed_base = {**BASE, "train": {**BASE["train"], "steps": 13}}
    assert ids(base=changed_base) != same  # overrides identical, base changed
    assert ids(score={**SCORE, "facts": 5}) != same
    assert ids(seeds=[1]) != same
    # a default written out explicitly resolves to the same config: the same trial
    explicit = {**BASE, "train": {**BASE["train"], "lr": 3e-3}}
    assert ids(base=explicit) == same
    split = {**BASE, "data": {**BASE["data"], "fact_split": {"held_out": 0.25}}}
    assert ids(base=split) != same  # which facts the objectives see changes the result


def test_renamed_fields_keep_their_trial_ids():
    """model.dropout was renamed model.builtin_dropout: a sweep written either way gives the same trials,
    and the id still hashes the field under its old name (so every id from before the rename holds)."""
    from legibility.sweeps.config import trial_id

    def trials(key: str) -> list:
        return parse_sweep({"base": BASE, "variants": {"d": {key: 0.1}}, "seeds": [0], "score": SCORE}).trials

    with pytest.warns(FutureWarning, match="model.builtin_dropout"):
        (old,) = trials("model.dropout")
    (new,) = trials("model.builtin_dropout")
    assert old.id == new.id
    (other,) = trials("data.val_fraction")
    assert other.id != new.id
    from legibility.training.run_config import parse_run_config

    score = parse_sweep({"base": BASE, "score": SCORE}).score  # with defaults filled in
    resolved = json.loads(json.dumps(dataclasses.asdict(parse_run_config(new.run_config))))
    resolved["model"]["dropout"] = resolved["model"].pop("builtin_dropout")  # the config as it was hashed
    digest = hashlib.sha256(
        json.dumps({"run": resolved, "score": score}, sort_keys=True, default=str).encode()
    ).hexdigest()[:12]
    assert new.id == f"d-{digest}-s0" == trial_id("d", {"run": resolved, "score": score}, 0)


def test_changed_config_keeps_old_rows_as_stale_and_reports_only_current(tmp_path):
    old = parse_sweep({"name": "s", "base": BASE, "score": SCORE})
    new = parse_sweep({"name": "s", "base": BASE, "score": {**SCORE, "facts": 6}})
    with ResultsStore(tmp_path / "results.duckdb") as store:
        (t_old,) = old.trials
        store.add_pending("s", t_old)
        store.mark_done(t_old.id, {"train": {"val_loss": 1.0}})
        (t_new,) = new.trials
        store.add_pending("s", t_new)
        store.mark_stale("s", [t_new.id])
        status = store.status()
        assert status == {t_old.id: "stale:done", t_new.id: "pending"}
        store.mark_stale("s", [t_old.id])  # back to the old config: its finished row is served again
        assert store.status() == {t_old.id: "done", t_new.id: "stale:pending"}


def _store_with_rows(tmp_path: Path) -> Path:
    db = tmp_path / "results.duckdb"
    with ResultsStore(db) as store:
        _fake_rows(store)
    return db


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE trials",
        "DELETE FROM trials",
        "UPDATE trials SET status = 'x'",
        "COPY trials TO '{out}'",
        "EXPORT DATABASE '{dir}'",
        "ATTACH '{dir}/other.duckdb' AS o",
        "INSTALL httpfs",
        "SELECT 1; DROP TABLE trials",
        "CREATE TABLE t AS SELECT 1",
        "SELECT * FROM read_csv('{out}')",
    ],
)
def test_results_query_is_read_only(tmp_path, sql):
    db = _store_with_rows(tmp_path)
    out = tmp_path / "leak.csv"
    with ResultsStore(db, read_only=True) as store:
        before = store.rows()
    with ResultsStore(db) as store, pytest.raises(LegibilityError) as e:  # as cli.py opens it
        store.query(sql.format(out=out, dir=tmp_path / "export"))
    assert "\n" not in str(e.value)
    assert not out.exists() and not (tmp_path / "export").exists()
    with ResultsStore(db, read_only=True) as store:
        assert store.rows() == before and len(before) == 6
        cols, rows = store.query("SELECT count(*) AS n FROM trials_flat")
    assert cols == ["n"] and rows == [(6,)]


def test_report_on_a_sweep_without_finished_trials_says_why(tmp_path):
    from legibility.report.html import write_report

    cfg = parse_sweep({"name": "s", "base": BASE, "variants": {"a": {}, "b": {}}})
    with ResultsStore(tmp_path / "results.duckdb") as store:
        for t in cfg.trials:
            store.add_pending("s", t)
        store.mark_failed(cfg.trials[0].id, "LegibilityError: the loss became nan at step 3\ntraceback")
    with pytest.raises(LegibilityError) as e:
        write_report(tmp_path)
    msg = str(e.value)
    assert "1 failed, 1 pending" in msg and "the loss became nan at step 3" in msg and "rerun" in msg
    assert "\n" not in msg


@pytest.mark.slow
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


@pytest.mark.slow
def test_sweep_killed_mid_trial_resumes(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    base = {**BASE, "train": {**BASE["train"], "steps": 60}}
    sweep.write_text(
        json.dumps(
            {
                "name": "k",
                "base": base,
                "variants": {"a": {}, "b": {"model.builtin_dropout": 0.1}},
                "seeds": [0],
                "score": SCORE,
            }
        )
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "legibility.cli", "sweep", str(sweep), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # wait until the second trial has written its first checkpoint (the first trial is finished by then)
    while time.time() < deadline and proc.poll() is None:
        ckpts = (
            list((out / "trials").glob("b-*/train/checkpoints/step-*")) if (out / "trials").exists() else []
        )
        if ckpts:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (b_dir,) = (out / "trials").glob("b-*")
    # the kill landed mid-trial: b is recorded as running, has a checkpoint, and has no final model yet
    with ResultsStore(out / "results.duckdb", read_only=True) as store:
        status = {r["variant"]: r["status"] for r in store.rows()}
    assert status == {"a": "done", "b": "running"}
    assert not (b_dir / "train" / "model").exists()
    ckpt = latest_checkpoint(b_dir / "train" / "checkpoints")
    assert ckpt is not None and ckpt.name < f"step-{base['train']['steps']:06d}"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with ResultsStore(out / "results.duckdb") as store:
        rows = store.rows()
    assert [r["status"] for r in rows] == ["done", "done"]
    final = json.loads((b_dir / "train" / "model" / "final.json").read_text())
    assert final["step"] == base["train"]["steps"]
    # resumed == uninterrupted: the same sweep run in one go scores every trial identically
    whole = tmp_path / "whole"
    cmd_whole = [*cmd[: cmd.index("--out") + 1], str(whole), "--no-progress"]
    done = subprocess.run(cmd_whole, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with ResultsStore(whole / "results.duckdb") as store:
        uninterrupted = store.rows()

    def results(rs: list[dict]) -> dict:
        return {
            r["trial_id"]: (r["metrics"], r["train"].get("val_loss"), r["train"].get("fact_accuracy"))
            for r in rs
        }

    assert results(rows) == results(uninterrupted)


def test_pareto_front_and_spearman():
    pts = {"a": (0.1, 0.9), "b": (0.5, 0.5), "c": (0.4, 0.4), "d": (0.9, 0.1)}
    assert pareto_front(pts, True, True) == ["a", "b", "d"]  # c is dominated by b
    assert pareto_front(pts, True, False) == ["d"]  # d has the highest x and the lowest y
    assert pareto_front(pts, False, True) == ["a"]
    # ties do not dominate; a point equal on one axis and worse on the other does
    ties = {"p": (1.0, 1.0), "q": (1.0, 1.0), "r": (1.0, 0.5), "s": (0.5, 2.0)}
    assert pareto_front(ties, True, True) == ["s", "p", "q"]
    rows = [{"train": {"x": float(i), "y": float(i * i), "z": float(-i)}, "metrics": {}} for i in range(5)]
    m = spearman_matrix(rows, ["x", "y", "z"])
    assert m[0, 1] == pytest.approx(1.0) and m[0, 2] == pytest.approx(-1.0)


def _fake_rows(store: ResultsStore) -> None:
    """Trial rows as a finished sweep leaves them (synthetic numbers: this tests rendering, not training)."""
    cfg = parse_sweep(
        {
            "name": "<script>alert(1)</script>",
            "base": BASE,
            "variants": {"plain": {}, "dropout": {"model.builtin_dropout": 0.2}},
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


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    from legibility.report.html import write_report

    with ResultsStore(tmp_path / "results.duckdb") as store:
        _fake_rows(store)
    page = write_report(tmp_path)
    text = page.read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>not bold</b>" not in text and "failed" in text
    assert (tmp_path / "frontier.png").stat().st_size > 0 and (tmp_path / "agreement.png").stat().st_size > 0
    assert (tmp_path / "frontier_suppressability.png").stat().st_size > 0
    chromium = _chromium()
    dom = subprocess.run(
        [chromium, *HEADLESS, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-ok="true"' in dom.stdout and 'data-images="3"' in dom.stdout
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


@pytest.mark.slow
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


def test_results_command_refuses_writes_and_leaves_the_report_working(tmp_path, capsys):
    from legibility.cli import main

    db = _store_with_rows(tmp_path)
    for sql in ("DROP TABLE trials", "DELETE FROM trials", f"COPY trials TO '{tmp_path / 'x.csv'}'"):
        assert main(["results", str(tmp_path), "--sql", sql]) == 2
        err = capsys.readouterr().err
        assert "read-only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()
    assert main(["results", str(tmp_path), "--sql", "SELECT count(*) FROM trials"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "6"
    with ResultsStore(db, read_only=True) as store:
        assert len(store.rows()) == 6
