"""Runs you can trust (issue 22): every data input keys its job, every job that writes a folder holds its
lock, temporary files are cleaned on the next start, and bad input is a one-line error, never a traceback.

The bad-input cases of the issue are pinned here one by one; ``bench/bad_inputs.py`` sweeps many more."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from legibility.cli import main
from legibility.errors import LegibilityError
from legibility.store import run_lock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "training"))

from train_helpers import tiny_cfg  # noqa: E402


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    # progress bars (tqdm's "it/s]" lines, e.g. transformers loading weights) are not messages
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.rstrip().endswith("it/s]")]
    assert len(lines) == 1 and lines[0].startswith(("error:", "legibility")), err
    for n in needles:
        assert n in err, (n, err)
    return err


def _yaml(path: Path, cfg=None) -> Path:
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg or tiny_cfg())))
    return path


# --------------------------------------------------------------------------------------------- training


def test_train_refuses_a_folder_another_train_holds(tmp_path):
    from legibility.training.trainer import train

    out = tmp_path / "t"
    with run_lock(out), pytest.raises(LegibilityError, match="in use by another run"):
        train(tiny_cfg(), out, progress=False)
    assert not (out / "config.json").exists()


@pytest.mark.slow
def test_two_concurrent_train_processes_do_not_interleave(tmp_path):
    """The issue's `legibility train tr.yaml --out ct3 & legibility train tr.yaml --out ct3`: the second is
    refused while the first trains, and metrics.jsonl holds each step once."""
    cfg = _yaml(tmp_path / "tr.yaml", tiny_cfg(steps=100_000, log_every=5, eval_every=1000))
    out = tmp_path / "ct3"
    command = [sys.executable, "-m", "legibility.cli", "train", str(cfg), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and metrics.read_bytes().count(b"\n") >= 2:  # training, lock held
                break
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "in use by another run" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    assert len(steps) == len(set(steps)) and steps == sorted(steps)


def test_a_rewritten_text_file_is_new_data_for_train(tmp_path):
    from legibility.training.config import TextSource
    from legibility.training.trainer import train

    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("\n".join(f"line number {i} of the text" for i in range(400)))
    base = tiny_cfg(steps=4, eval_every=4, checkpoint_every=4, log_every=2)
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, text=TextSource(dir=str(text))))
    out = tmp_path / "t"
    train(cfg, out, progress=False)
    digests = json.loads((out / "inputs.json").read_text())
    assert set(digests) == {"data.text.sha256"}
    first = train(cfg, out, progress=False)  # unchanged data: resumes (finished)
    # the same data moved elsewhere (another checkout, a relative path) is the same run: keyed by content
    import shutil

    moved = shutil.copytree(text, tmp_path / "moved")
    cfg_moved = dataclasses.replace(
        base, data=dataclasses.replace(base.data, text=TextSource(dir=str(moved)))
    )
    assert train(cfg_moved, out, progress=False) == first
    with pytest.raises(LegibilityError, match="different config .*data.n_sentences"):
        train(dataclasses.replace(cfg_moved, data=dataclasses.replace(cfg_moved.data, n_sentences=7)), out)
    (text / "a.txt").write_text("\n".join(f"another line {i} of the text" for i in range(400)))
    with pytest.raises(LegibilityError, match="trained on other data .*data.text.sha256"):
        train(cfg, out, progress=False)
    # a run from before inputs.json existed cannot be trusted with its text: refused, naming why
    (out / "inputs.json").unlink()
    with pytest.raises(LegibilityError, match="before legibility recorded the content of its data"):
        train(cfg, out, progress=False)


def test_a_killed_runs_temporary_files_are_deleted_on_the_next_start(tmp_path):
    from legibility.training.trainer import train

    out = tmp_path / "t"
    cfg = tiny_cfg(steps=4, eval_every=4, checkpoint_every=2, log_every=2)
    train(cfg, out, progress=False)
    left = [
        out / ".metrics.jsonl.tmp",
        out / ".config.json.tmp",
        out / "checkpoints" / ".latest.tmp",
    ]
    for p in left:
        p.write_text("half")
    (out / "checkpoints" / ".step-000006.tmp").mkdir()
    (out / "checkpoints" / ".step-000006.tmp" / "model.safetensors").write_bytes(b"x" * 100)
    train(cfg, out, progress=False)
    assert not [p for p in [*out.iterdir(), *(out / "checkpoints").iterdir()] if p.name.endswith(".tmp")]


def test_the_fallback_warning_names_what_is_damaged(tmp_path):
    """A damaged *older* checkpoint is skipped with its own warning; no claim of damaged newer ones."""
    from legibility.training import Trainer
    from legibility.training.checkpoint import CHECKSUMS

    out = tmp_path / "t"
    cfg = tiny_cfg(steps=4, eval_every=4, checkpoint_every=2, log_every=2)
    Trainer(cfg, out, progress=False).fit()
    sums = out / "checkpoints" / "step-000002" / CHECKSUMS
    sums.write_text(sums.read_text().replace('"model.safetensors": "', '"model.safetensors": "0'))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        Trainer(cfg, out, progress=False).fit()
    messages = [str(w.message) for w in rec]
    assert any("step-000002" in m and "damaged" in m for m in messages)
    assert not any("resuming from" in m for m in messages), messages
    # and a damaged newer one is named as such
    sums = out / "checkpoints" / "step-000004" / CHECKSUMS
    sums.write_text(sums.read_text().replace('"state.json": "', '"state.json": "0'))
    (out / "checkpoints" / "step-000002" / CHECKSUMS).unlink()  # the older one readable again
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        Trainer(cfg, out, progress=False).fit()
    messages = [str(w.message) for w in rec]
    assert any("skipping a damaged checkpoint" in m and "step-000004" in m for m in messages)
    assert any(
        re.search(r"resuming from .*step-000002.*the newer step-000004 is damaged", m) for m in messages
    ), messages


def test_binary_yaml_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(bytes(range(256)) * 4)
    assert main(["train", str(bad), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "is not UTF-8 text")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "s")]) == 2
    _one_line_error(capsys, "is not UTF-8 text")


def test_train_out_under_a_file_is_a_one_line_error(tmp_path, capsys):
    cfg = _yaml(tmp_path / "tr.yaml")
    (tmp_path / "file").write_text("x")
    assert main(["train", str(cfg), "--out", str(tmp_path / "file" / "x")]) == 2
    _one_line_error(capsys, "not writable")


# --------------------------------------------------------------------------------------------- sweeps


def _sweep(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "sw.yaml"
    data = {"name": "s", "base": dataclasses.asdict(tiny_cfg(steps=2)), "seeds": [0], **extra}
    path.write_text(yaml.safe_dump(data))
    return path


def test_sweep_out_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["sweep", str(_sweep(tmp_path)), "--out", str(tmp_path / "file")]) == 2
    _one_line_error(capsys, "is a file")


@pytest.mark.parametrize(
    "space,message",
    [
        ({"uniform": [0.0]}, "give two finite numbers [low, high]"),
        ({"log_uniform": [-1, 1]}, "must be > 0"),
        ({"uniform": [1.0, 0.0]}, "low <= high"),
        ({"uniform": "abc"}, "give two finite numbers"),
        ({"choice": []}, "non-empty list"),
    ],
)
def test_bad_random_distributions_are_one_line_errors(tmp_path, capsys, space, message):
    sweep = _sweep(tmp_path, random={"n": 2, "space": {"model.builtin_dropout": space}})
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "s")]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "s").exists()


def test_random_that_is_not_a_mapping_is_a_one_line_error(tmp_path, capsys):
    assert main(["sweep", str(_sweep(tmp_path, random=[1, 2])), "--out", str(tmp_path / "s")]) == 2
    _one_line_error(capsys, "'random' needs n")


def test_trial_ids_cover_the_text_folders_content_and_keep_synthetic_ones(tmp_path, monkeypatch):
    from legibility.sweeps.config import load_sweep, trial_id

    monkeypatch.chdir(tmp_path)
    plain = load_sweep(_sweep(tmp_path))
    (t,) = plain.trials
    resolved = dataclasses.asdict(tiny_cfg(steps=2))
    assert t.id == trial_id("base", {"run": resolved, "score": plain.score}, 0)  # ids of before
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("one line\nanother line\n")
    base = dataclasses.asdict(tiny_cfg(steps=2))
    base["data"]["text"] = {"dir": "txt"}
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": base, "seeds": [0]}))
    first = load_sweep(path).trials[0].id
    assert load_sweep(path).trials[0].id == first
    (tmp_path / "text-relative.yaml").write_text(path.read_text())
    base["data"]["text"] = {"dir": str(tmp_path / "txt")}  # the same folder by its absolute path
    path.write_text(yaml.safe_dump({"name": "s", "base": base, "seeds": [0]}))
    assert load_sweep(path).trials[0].id == first  # the content keys the trial, not where it lies
    (tmp_path / "txt" / "a.txt").write_text("one line\nan edited line\n")
    assert load_sweep(path).trials[0].id != first
    (tmp_path / "txt" / "a.txt").unlink()
    (tmp_path / "txt").rmdir()
    with pytest.raises(LegibilityError, match="data.text.dir: txt is not a folder"):
        load_sweep(tmp_path / "text-relative.yaml")  # before any trial starts, not once per trial


def test_a_sweep_holds_its_folders_lock(tmp_path):
    from legibility.sweeps import load_sweep, run_sweep

    out = tmp_path / "s"
    with run_lock(out), pytest.raises(LegibilityError, match="in use by another run"):
        run_sweep(load_sweep(_sweep(tmp_path)), out, progress=False)
    assert not (out / "results.duckdb").exists()


# --------------------------------------------------------------------------------------------- score / models


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from helpers import tiny_lm

    path = tmp_path_factory.mktemp("tiny-llama-reliability")
    lm = tiny_lm("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def _neurons_args(model: Path, facts: Path, out: Path) -> list[str]:
    from test_cli import LOOSE

    return [
        "neurons",
        "--model",
        str(model),
        "--facts",
        str(facts),
        "--steps",
        "2",
        *LOOSE,
        "--out",
        str(out),
    ]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_score_out_under_proc_is_a_one_line_error(tmp_path, capsys, model_dir):
    from test_cli import _facts_file

    facts = _facts_file(tmp_path / "f.jsonl", 2)
    assert main(_neurons_args(model_dir, facts, Path("/proc/x"))) == 2
    _one_line_error(capsys, "/proc/x cannot be created")


@pytest.mark.parametrize("name", ["effects.jsonl", "scorecard.json", "run.json"])
def test_an_out_holding_a_result_file_as_a_folder_is_refused_before_work(tmp_path, capsys, model_dir, name):
    from test_cli import _facts_file

    facts = _facts_file(tmp_path / "f.jsonl", 2)
    out = tmp_path / "o"
    (out / name).mkdir(parents=True)
    assert main(["score", *_neurons_args(model_dir, facts, out)[1:], "--metrics", "none"]) == 2
    _one_line_error(capsys, f"{name} is not a file")
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else written


def test_a_truncated_weight_file_is_a_one_line_error(tmp_path, capsys, model_dir):
    import shutil

    from test_cli import _facts_file

    model = Path(shutil.copytree(model_dir, tmp_path / "m"))
    with open(model / "model.safetensors", "r+b") as f:
        f.truncate(5000)
    facts = _facts_file(tmp_path / "f.jsonl", 2)
    assert main(_neurons_args(model, facts, tmp_path / "o")) == 2
    _one_line_error(capsys, "could not load the weights", "copy or download the model again")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("head", [b"GGUF\x03\x00\x00\x00" + b"\x00" * 2040, b"GGUF\x03\x00\x00\x00\x05"])
def test_a_gguf_cut_short_is_a_one_line_error(tmp_path, capsys, head):
    from test_cli import _facts_file

    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(head)
    facts = _facts_file(tmp_path / "f.jsonl", 2)
    assert main(_neurons_args(gguf, facts, tmp_path / "o")) == 2
    _one_line_error(capsys, "is not a readable GGUF file")


def test_a_killed_gguf_conversion_leaves_nothing_behind_for_long(tmp_path):
    from legibility.models.gguf import convert_once

    target = tmp_path / "models" / "x"
    target.parent.mkdir(parents=True)
    stale = target.parent / ".x-abc123"  # what mkdtemp made before the kill
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)

    def convert(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"w")

    assert convert_once(target, convert) == target
    assert not stale.exists() and (target / "model.safetensors").read_bytes() == b"w"
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".x-")] == []


# --------------------------------------------------------------------------------------------- probes


def _probe_data(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": lab, "group": g}) + "\n" for t, lab, g in rows))
    return path


GOOD_ROWS = [
    (f"{w} the capital of {s} is", lab, s)
    for s, lab in [("germany", "a"), ("france", "b"), ("italy", "a"), ("spain", "b")]
    for w in ("so", "and")
]


def test_probe_data_missing_is_a_one_line_error(tmp_path, capsys, model_dir):
    argv = [
        "probe",
        "--model",
        str(model_dir),
        "--data",
        str(tmp_path / "nope.jsonl"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    _one_line_error(capsys, "nope.jsonl: no such file")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--templates", "0"], "--templates: must be in [1, 100], got 0"),
        (["--scales", "abc"], "--scales: 'abc' is not a number"),
        (["--shots", "-1"], "--shots: must be in [0, 64], got -1"),
        (["--ccs-restarts", "0"], "--ccs-restarts: must be in [1, 1000], got 0"),
        (["--dtype", "float8"], "--dtype: invalid choice"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_probe_truth_arguments_are_checked_at_parse_time(tmp_path, capsys, extra, message):
    assert main(["probe-truth", "--out", str(tmp_path / "o"), *extra]) == 2
    _one_line_error(capsys, message)


def test_probe_texts_longer_than_the_context_are_refused_quickly(tmp_path, capsys, model_dir):
    rows = [("the capital " * 90_000, "a", "g0"), *GOOD_ROWS]  # a 1 MB text; the tiny model's context is 64
    data = _probe_data(tmp_path / "d.jsonl", rows)
    t0 = time.perf_counter()
    argv = [
        "probe",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    _one_line_error(capsys, "text 1 is more than", "model's context of 64")
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--folds", "2"], "--folds: must be in [3, 100], got 2"),
        (["--data", "TWO"], "2 group(s) of examples cannot be split into 3 folds"),
        (["--data", "ONE"], "1 group(s) of examples cannot be split into 3 folds"),
    ],
)
def test_probe_cross_validation_that_cannot_be_done_is_refused(tmp_path, capsys, model_dir, argv, message):
    two = _probe_data(tmp_path / "two.jsonl", [("the city", "a", "x"), ("a country", "b", "y")])
    one = _probe_data(tmp_path / "one.jsonl", [("the city", "a", "x"), ("a country", "b", "x")])
    argv = [{"TWO": str(two), "ONE": str(one)}.get(a, a) for a in argv]
    base = ["probe", "--model", str(model_dir), "--data", str(two), "--out", str(tmp_path / "o")]
    assert main([*base, *argv]) == 2
    _one_line_error(capsys, message)


def test_a_label_in_one_group_only_warns_in_one_line(tmp_path, capsys, model_dir):
    rows = [("the city", "a", "a"), ("a city", "a", "a"), ("the country", "b", "b"), ("a country", "b", "b")]
    rows += [("one town", "b", "c"), ("a town", "b", "c")]  # label a in one group of three
    data = _probe_data(tmp_path / "d.jsonl", rows)
    argv = [
        "probe",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    warns = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warns) == 1 and "occur in one group only" in warns[0]


def test_probe_runs_are_keyed_by_model_identity_and_dtype_and_locked(tmp_path, capsys, model_dir):
    import shutil

    from legibility.models.identity import identity_of

    model = Path(shutil.copytree(model_dir, tmp_path / "m"))
    data = _probe_data(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "o"
    argv = ["probe", "--model", str(model), "--data", str(data), "--out", str(out)]
    assert main(argv) == 0
    key = json.loads((out / "run.json").read_text())
    assert key["model"] == str(model.resolve()) and key["dtype"] == "float32"
    assert key["tokenizer_sha256"] == identity_of(str(model))["tokenizer_sha256"]
    assert "source_hash" in key
    capsys.readouterr()
    assert main([*argv, "--dtype", "bfloat16"]) == 2
    _one_line_error(capsys, "other settings", "dtype: 'float32' -> 'bfloat16'")
    tok = json.loads((model / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["paris"], vocab["berlin"] = vocab["berlin"], vocab["paris"]
    (model / "tokenizer.json").write_text(json.dumps(tok))
    assert main(argv) == 2
    _one_line_error(capsys, "tokenizer_sha256")
    with run_lock(tmp_path / "busy"):
        assert main([*argv[:-1], str(tmp_path / "busy")]) == 2
    _one_line_error(capsys, "in use by another run")


def test_report_on_a_probe_folder_is_its_probe_report(tmp_path, capsys, model_dir):
    data = _probe_data(tmp_path / "d.jsonl", GOOD_ROWS)
    out = tmp_path / "o"
    argv = ["probe", "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    assert main(argv) == 0
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert "legibility probes: concept" in (out / "report.html").read_text()
    (out / "results.json").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    _one_line_error(capsys, "unfinished concept probe run")


# --------------------------------------------------------------------------------------------- interop


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, model_dir):
    from test_cli import _facts_file

    d = tmp_path_factory.mktemp("finished")
    facts = _facts_file(d / "f.jsonl", 2)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(_neurons_args(model_dir, facts, d / "run")) == 0
    return d / "run"


def test_export_neurons_to_a_bad_place_is_refused_and_leaves_no_temp_file(tmp_path, capsys, finished_run):
    (tmp_path / "file").write_text("x")
    assert main(["export-neurons", str(finished_run), "--to", str(tmp_path / "file" / "x.json")]) == 2
    _one_line_error(capsys, "is a file; give a directory")
    target = tmp_path / "adir"
    target.mkdir()
    assert main(["export-neurons", str(finished_run), "--to", str(target)]) == 2
    _one_line_error(capsys, "is a directory; give a file name")
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert main(["export-neurons", str(finished_run), "--to", str(tmp_path / "n.json")]) == 0
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_export_neurons_of_a_run_still_writing_is_refused(tmp_path, capsys, finished_run):
    with run_lock(finished_run):
        assert main(["export-neurons", str(finished_run), "--to", str(tmp_path / "n.json")]) == 2
    _one_line_error(capsys, "still writing it")
    assert not (tmp_path / "n.json").exists()


@pytest.mark.parametrize(
    "neurons,results,extra,message",
    [
        (None, None, [], "does not exist"),
        ("not json", None, [], "is not valid JSON"),
        ('{"u1": [[1, 2], [3', None, [], "is not valid JSON"),
        ("[[1, 2]]", None, [], "is not an EleutherAI neurons file"),
        ('{"u1": [[1, 2]]}', "{oops", [], "bert_pararel_results_0.json is not valid JSON"),
        ('{"u1": [[1, 2]]}', '{"u1": 3}', [], "is not EleutherAI's results file"),
        ('{"u1": [[1, 2]]}', None, ["--results", "OURS"], "is not EleutherAI's results file"),
        ('{"u1": [[1, 2]]}', None, ["--to", "UNDER_FILE"], "is a file; give a directory"),
    ],
)
def test_import_neurons_bad_files_are_one_line_errors(tmp_path, capsys, neurons, results, extra, message):
    src = tmp_path / "bert_pararel_neurons_0.json"
    if neurons is not None:
        src.write_text(neurons)
    if results is not None:
        (tmp_path / "bert_pararel_results_0.json").write_text(results)
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"format": "legibility.knowledge-neurons", "version": 1, "facts": []}))
    (tmp_path / "file").write_text("x")
    swap = {"OURS": str(ours), "UNDER_FILE": str(tmp_path / "file" / "x.json")}
    extra = [swap.get(a, a) for a in extra]
    argv = ["import-neurons", str(src), "--to", str(tmp_path / "out.json"), *extra]
    assert main(argv) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "out.json").exists()


def test_compare_neurons_bad_sibling_and_json_targets(tmp_path, capsys, finished_run):
    a = tmp_path / "bert_pararel_neurons_0.json"
    a.write_text('{"u1": [[1, 2]]}')
    (tmp_path / "bert_pararel_results_0.json").write_text("{oops")
    assert main(["compare-neurons", str(a), str(finished_run)]) == 2
    _one_line_error(capsys, "results_0.json is not valid JSON")
    (tmp_path / "bert_pararel_results_0.json").unlink()
    made = tmp_path / "new" / "deeper" / "c.json"
    assert main(["compare-neurons", str(a), str(finished_run), "--json", str(made)]) == 0
    assert json.loads(made.read_text())["b"]["facts"] == 2


@pytest.mark.slow
def test_checkpoint_scores_are_keyed_by_each_checkpoints_weights(tmp_path):
    """A checkpoint whose weights changed (a run trained again into the same folder) is scored again."""
    import shutil

    from legibility.models.identity import sha256_file
    from legibility.probes.checkpoints import CheckpointScoring, score_checkpoints
    from legibility.probes.concept import ProbeSettings
    from legibility.training.trainer import train

    run = tmp_path / "run"
    train(tiny_cfg(steps=4, eval_every=2, checkpoint_every=2, log_every=2), run, progress=False)
    cfg = CheckpointScoring(probe=ProbeSettings(folds=3, max_iter=5), suppressability=False)
    first = score_checkpoints(run, tmp_path / "o", cfg)
    assert [r["step"] for r in first] == [2, 4]
    ckpts = run / "checkpoints"
    shutil.copy(ckpts / "step-000004" / "model.safetensors", ckpts / "step-000002" / "model.safetensors")
    again = score_checkpoints(run, tmp_path / "o", cfg)
    assert again[0]["weights_sha256"] == sha256_file(ckpts / "step-000004" / "model.safetensors")
    assert again[0]["weights_sha256"] != first[0]["weights_sha256"] and again[1] == first[1]
    assert again[0]["fact_accuracy"] == again[1]["fact_accuracy"]  # the same weights now


def test_the_bad_input_sweep_tells_clean_errors_tracebacks_and_lost_data_apart(tmp_path, monkeypatch):
    """bench/bad_inputs.py's classifier on cases whose outcome is known (no fixtures needed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "bench" / "bad_inputs.py")
    bad = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bad_inputs", bad)  # dataclasses look their module up there
    spec.loader.exec_module(bad)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.json").write_text("{}")

    def boom(*_args):
        raise ZeroDivisionError("a bug")

    def loses(argv):
        (tmp_path / "run" / "keep.json").write_text('{"changed": 1}')
        return 0

    clean = bad.run_case(bad.Case("c", ["neurons", "--steps", "0", "--out", str(tmp_path / "o")]), tmp_path)
    accepted = bad.run_case(bad.Case("a", ["methods"], "ok"), tmp_path)
    wrong = bad.run_case(bad.Case("w", ["methods"]), tmp_path)
    assert (clean["outcome"], clean["as_expected"]) == ("clean", True)
    assert (accepted["outcome"], accepted["as_expected"]) == ("accepted", True)
    assert (wrong["outcome"], wrong["as_expected"]) == ("accepted", False)
    monkeypatch.setattr("legibility.cli.main", boom)
    tb = bad.run_case(bad.Case("t", ["methods"]), tmp_path)
    assert tb["outcome"] == "traceback" and "ZeroDivisionError" in tb["error"]
    monkeypatch.setattr("legibility.cli.main", loses)
    lost = bad.run_case(bad.Case("l", ["x"], "ok", guard=("run",)), tmp_path)
    assert lost["lost"] == ["run/keep.json"]
    assert "| data lost | 1 |" in bad.markdown([clean, accepted, wrong, tb, lost], tmp_path)
