"""The runner: resume == uninterrupted (bit for bit), run keys, locks and one-line errors."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import tiny_lm
from legibility.cli import main
from test_cli import LOOSE, _args, _facts_file


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-run")
    lm = tiny_lm("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_killed_and_resumed_and_rerun_equal_an_uninterrupted_run_bit_for_bit(tmp_path, model_dir):
    facts = _facts_file(tmp_path / "f.jsonl", 16)
    extra = ["--steps", "2", "--metrics", "sparsity,overlap", *LOOSE]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    # Every run in its own process on one thread, so that they all compute with the same kernels.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def command(out):
        return [sys.executable, "-m", "legibility.cli", *_args("score", model_dir, facts, out, *extra)]

    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    effects = killed / "effects.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if effects.exists() and effects.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = effects.read_bytes().count(b"\n")
    subprocess.run(command(fresh), env=env, check=True, capture_output=True)
    total = (fresh / "effects.jsonl").read_bytes().count(b"\n")
    assert 2 <= done < total, f"the kill should land mid-effects ({done} of {total})"
    assert not (killed / "scorecard.json").exists()
    resumed = subprocess.run(command(killed), env=env, check=True, capture_output=True, text=True)
    assert "stale lock" in resumed.stderr
    for name in ("facts.json", "neurons.jsonl", "effects.jsonl", "scorecard.json"):
        assert (killed / name).read_bytes() == (fresh / name).read_bytes(), name
    card = (fresh / "scorecard.json").read_bytes()
    subprocess.run(command(fresh), env=env, check=True, capture_output=True)  # a no-op rerun
    assert (fresh / "scorecard.json").read_bytes() == card


def test_changed_inputs_are_refused_naming_the_key_and_recomputed_with_force(tmp_path, model_dir, capsys):
    facts = _facts_file(tmp_path / "f.jsonl", 4)
    out = tmp_path / "o"
    base = ["--steps", "2", "--metrics", "none", "--controls", "1", *LOOSE]
    assert main(_args("score", model_dir, facts, out, *base)) == 0
    card = (out / "scorecard.json").read_bytes()
    base[base.index("--controls") + 1] = "2"
    assert main(_args("score", model_dir, facts, out, *base)) == 2
    err = _err(capsys)
    assert "effects.controls: 1 -> 2" in err and "--force" in err and err.count("\n") == 1
    assert (out / "scorecard.json").read_bytes() == card  # nothing touched
    # the same path with other content
    facts.write_text(facts.read_text().replace("the city of", "the town of"))
    assert main(_args("score", model_dir, facts, out, *base)) == 2
    assert "facts_sha256" in _err(capsys)
    assert main(_args("score", model_dir, facts, out, *base, "--force")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["effects.controls"] == 2
    assert "the town of" in (out / "neurons.jsonl").read_text()


def test_other_weights_in_the_same_model_dir_are_a_changed_key(tmp_path, capsys):
    model = tmp_path / "m"
    lm = tiny_lm("llama", seed=0)
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    facts = _facts_file(tmp_path / "f.jsonl", 2)
    args = _args("neurons", model, facts, tmp_path / "o", "--steps", "2", *LOOSE)
    assert main(args) == 0
    tiny_lm("llama", seed=1).model.save_pretrained(model)
    assert main(args) == 2
    assert "weights_sha256" in _err(capsys)


def test_a_failed_start_writes_nothing(tmp_path, model_dir, capsys):
    f = tmp_path / "f.jsonl"
    f.write_text(
        json.dumps(
            {
                "subject": "france",
                "relation": "P36",
                "object": "paris",
                "prompts": ["[Y] is the capital of [X] ."],
            }
        )
        + "\n"
    )
    out = tmp_path / "o"
    assert main(_args("neurons", model_dir, f, out, "--multi-token")) == 2
    err = _err(capsys)
    assert "object slot [Y] must end every prompt" in err and "--multi-token" not in err
    assert not out.exists()
    # the corrected rerun is not refused
    f.write_text(f.read_text().replace("[Y] is the capital of [X] .", "the capital of [X] is [Y]"))
    args = _args("neurons", model_dir, f, out, "--steps", "2", "--min-prompts", "1", *LOOSE)
    assert main(args) == 2  # one prompt: nothing left to measure on
    assert "has 1 usable prompt(s) and needs 2" in _err(capsys) and not out.exists()
    assert main([*args, "--holdout", "0"]) == 0


def test_a_second_run_on_a_locked_out_is_refused(tmp_path, model_dir, capsys):
    from legibility.store import run_lock

    facts = _facts_file(tmp_path / "f.jsonl", 2)
    out = tmp_path / "o"
    with run_lock(out):
        assert main(_args("neurons", model_dir, facts, out, *LOOSE)) == 2
    assert "in use by another run" in _err(capsys)
    assert not (out / "neurons.jsonl").exists()


def test_prompt_longer_than_the_context_is_refused_before_running(tmp_path, model_dir, capsys):
    f = tmp_path / "f.jsonl"
    subject = " ".join(["germany"] * 100)  # the tiny model's context is 64 positions
    f.write_text(
        json.dumps(
            {
                "subject": subject,
                "relation": "P36",
                "object": "berlin",
                "prompts": ["the capital of [X] is [Y]"],
            }
        )
        + "\n"
    )
    assert main(_args("neurons", model_dir, f, tmp_path / "o", *LOOSE)) == 2
    err = _err(capsys)
    assert "more than the model's context of 64" in err and err.count("\n") == 1


def test_non_utf8_facts_file_says_what_to_do(tmp_path, capsys):
    f = tmp_path / "f.jsonl"
    f.write_bytes('{"subject": "Zürich"}\n'.encode("latin-1"))
    assert main(["neurons", "--facts", str(f), "--out", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert "f.jsonl is not UTF-8" in err and "save it as UTF-8" in err


def test_out_that_is_a_file_or_unwritable_is_refused(tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["neurons", "--facts", str(f), "--out", str(f)]) == 2
    assert "is a file" in _err(capsys)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # the tests run as root, who may write anywhere
    assert main(["neurons", "--facts", str(f), "--out", str(tmp_path / "new" / "o")]) == 2
    assert "not writable" in _err(capsys)


def test_report_on_a_partial_or_damaged_run_is_one_line(tmp_path, model_dir, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text("{}")
    assert main(["report", str(out)]) == 2
    assert "unfinished run" in _err(capsys)
    (out / "scorecard.json").write_text('{"metrics": ')
    assert main(["report", str(out)]) == 2
    assert "scorecard.json is damaged" in _err(capsys)
    (out / "scorecard.json").write_text('{"metrics": {}}')
    (out / "neurons.jsonl").write_text('{"fact_id": "a", "neurons": []}\n{broken\n')
    assert main(["report", str(out), "--cards", "0"]) == 2
    assert "neurons.jsonl:2 is damaged" in _err(capsys)
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_argument_errors_come_before_heavy_imports(tmp_path):
    code = (
        "import sys; from legibility.cli import main; "
        "rc = main(['score', '--controls', '-5', '--out', 'x']); "
        "rc2 = main(['neurons', '--facts', '/no/such.jsonl', '--out', 'x']); "
        "print(rc, rc2, 'torch' in sys.modules, 'legibility.training' in sys.modules)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    assert res.stdout.split() == ["2", "2", "False", "False"], res.stderr
    assert res.stderr.count("\n") == 2 and "must be in [0, 1000], got -5" in res.stderr


def test_import_legibility_is_light_and_the_public_names_still_import():
    code = (
        "import sys, legibility; light = 'torch' not in sys.modules and 'legibility.training' not in sys.modules; "
        "from legibility import Fact, RunSettings; print(light, 'load_model' in legibility.__all__)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    assert res.stdout.split() == ["True", "True"], res.stderr


def test_settings_round_trip_through_the_run_key():
    from legibility.attribution import AttributionConfig
    from legibility.metrics.effects import EffectConfig
    from legibility.run import KnownConfig, RunSettings, run_key, settings_from_key

    s = RunSettings(
        model="m",
        attribution=AttributionConfig(steps=3),
        known=KnownConfig(limit=2),
        effects=EffectConfig(controls=1, control_prompts=2),
        metrics=("sparsity",),
        seed=4,
        dtype="bfloat16",
        holdout=0.25,
    )
    model = {"weights_sha256": "w", "config_sha256": "c", "tokenizer_sha256": "t"}
    key = json.loads(json.dumps(run_key(s, "f", model)))  # as read back from run.json
    assert settings_from_key(key) == s
    assert settings_from_key(run_key(RunSettings(effects=None), "f", model)).effects is None


def test_a_plugged_in_executor_runs_the_stages_and_records_come_back_in_fact_order(tmp_path):
    from legibility.facts.jsonl import load_jsonl_facts
    from legibility.metrics.effects import EffectConfig
    from legibility.run import KnownConfig, RunSettings, run
    from legibility.sharding import EXECUTORS, ShardConfig

    calls = []

    def reversed_executor(setup, items, callbacks, cfg):  # as a parallel executor may
        calls.append(len(items))
        work = setup(cfg.device)
        for item in reversed(list(items)):
            callbacks.done(item, work(item))

    if "reversed-test" not in EXECUTORS:
        EXECUTORS.register("reversed-test")(reversed_executor)
    facts = load_jsonl_facts(_facts_file(tmp_path / "f.jsonl", 4))
    settings = RunSettings(known=KnownConfig(top_k=1000, min_share=0.0), effects=EffectConfig(controls=1))
    from legibility.attribution import AttributionConfig

    settings = dataclasses.replace(settings, attribution=AttributionConfig(steps=2))
    res = run(
        settings,
        tmp_path / "o",
        facts=facts,
        lm=tiny_lm("llama"),
        progress=False,
        shard=ShardConfig("reversed-test"),
    )
    assert len(calls) == 3  # the known-fact scan, the neurons and the effects all go through the executor
    assert [r["fact_id"] for r in res.neuron_records] == [r.fact.id for r in res.facts]
    lines = (tmp_path / "o" / "neurons.jsonl").read_text().splitlines()
    assert [json.loads(x)["fact_id"] for x in lines] == [r.fact.id for r in reversed(res.facts)]
