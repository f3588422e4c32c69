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

ROOT = Path(__file__).resolve().parents[1]
# A tiny random model knows nothing: accept any rank so that its facts are kept.
LOOSE = ["--known-top-k", "1000", "--known-share", "0.0", "--no-progress"]


def _args(command: str, model_dir: Path, facts: Path, out: Path, *extra: str) -> list[str]:
    """CLI arguments of a run of the tiny model on a facts file."""
    return [command, "--model", str(model_dir), "--facts", str(facts), "--out", str(out), *extra]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_lm("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def _facts_file(path: Path, n: int = 4) -> Path:
    subjects = ["germany", "france", "italy", "spain"]
    objects = ["berlin", "paris", "rome", "madrid"]
    rows = []
    for i in range(n):
        s, o = subjects[i % 4], objects[(i // 4 + i) % 4]
        rows.append(
            {
                "id": f"f{i}",
                "subject": s,
                "relation": ["P36", "P37"][i % 2],
                "object": o,
                "prompts": [
                    "the capital of [X] is [Y] .",
                    "[X] capital city is [Y] .",
                    "the city of [X] is [Y]",
                ],
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_score_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    facts = _facts_file(tmp_path / "f.jsonl", 6)
    args = _args("score", tiny_model_dir, facts, out, "--steps", "4", *LOOSE)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "suppressability" in printed and str(out) in printed
    card = json.loads((out / "scorecard.json").read_text())["metrics"]
    for key in (
        "suppressability",
        "suppression.own",
        "suppression.random",
        "amplification.own",
        "neurons.per_fact",
    ):
        assert set(card[key]) == {"value", "ci_low", "ci_high", "n"}
    assert card["neurons.per_fact"]["n"] == 6
    for name in (
        "concentration",
        "overlap",
        "sparsity",
        "polysemanticity",
    ):  # the default independent metrics
        assert any(k.startswith(f"independent.{name}.") for k in card), name

    for name in ("neurons.jsonl", "effects.jsonl", "layers.png", "suppression.png", "facts.json"):
        assert (out / name).stat().st_size > 0
    assert main(["report", str(out), "--cards", "1"]) == 0
    page = (out / "report.html").read_text()
    assert "suppressability" in page and page.count("data:image/png;base64") == 2 and "promotes" in page
    # A rerun finds everything done and produces the same scorecard.
    before = (out / "neurons.jsonl").read_text()
    assert main(args) == 0
    assert (out / "neurons.jsonl").read_text() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--relations", "P999"], "unknown relation"),
        (["--data-dir", "/nonexistent/pararel"], "PARAREL data not found"),
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--method", "nope"], "unknown attribution method 'nope'"),
        (["--limit", "0"], "argument --limit: must be in [1, 1000000], got 0"),
        (["--controls", "-5"], "argument --controls: must be in [0, 1000], got -5"),
        (["--controls", "1000000"], "argument --controls: must be in [0, 1000], got 1000000"),
        (["--holdout", "1"], "argument --holdout: must be in [0.0, 1.0), got 1"),
        (["--steps", "1000000000"], "argument --steps: must be in [1, 4096], got 1000000000"),
        (["--steps", "nan"], "argument --steps: 'nan' is not an integer"),
        (["--known-share", "nan"], "argument --known-share: 'nan' is not a number"),
        (["--known-share", "1.5"], "argument --known-share: must be in [0.0, 1.0], got 1.5"),
        (["--steps", "two"], "argument --steps: 'two' is not an integer"),
        (["--relations", "P36,P10e"], "P10e (did you mean"),
        (["--model", "smollm2-13m"], "did you mean 'smollm2-135m'"),
        (["--model", "nobody/no-such-model"], "hub is offline"),
    ],
)
def test_bad_inputs_exit_nonzero_with_one_clear_message(
    tmp_path, capsys, extra, message, pararel_dir, monkeypatch
):
    monkeypatch.setenv("LEGIBILITY_PARAREL", str(pararel_dir))
    command = "score" if "--controls" in extra else "neurons"
    code = main([command, "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_malformed_facts_file_names_the_line(tmp_path, capsys, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"subject": "a", "relation": "P1", "object": "b", "prompts": ["[Y]"]}\n{oops\n')
    assert main(_args("neurons", tiny_model_dir, bad, tmp_path / "o")) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err


def test_multi_token_target_in_single_token_mode_is_refused(tmp_path, capsys, tiny_model_dir):
    f = tmp_path / "f.jsonl"
    f.write_text(
        json.dumps(
            {
                "subject": "france",
                "relation": "P36",
                "object": "paris berlin",
                "prompts": ["the capital of [X] is [Y] ."],
            }
        )
        + "\n"
    )
    assert main(_args("neurons", tiny_model_dir, f, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "not a single token" in err and "--multi-token" in err


def test_changed_settings_on_an_existing_out_dir_are_refused(tmp_path, capsys, tiny_model_dir):
    facts = _facts_file(tmp_path / "f.jsonl", 2)
    base = _args("neurons", tiny_model_dir, facts, tmp_path / "o", *LOOSE)
    assert main([*base, "--steps", "2"]) == 0
    assert main([*base, "--steps", "3"]) == 2
    assert "steps: 2 -> 3" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_loses_and_repeats_nothing(tmp_path, tiny_model_dir):
    facts = _facts_file(tmp_path / "f.jsonl", 16)
    out = tmp_path / "run"

    def command(out_dir):
        cli = _args("neurons", tiny_model_dir, facts, out_dir, "--steps", "20", *LOOSE)
        return [sys.executable, "-m", "legibility.cli", *cli]

    cmd = command(out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "neurons.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = path.read_text().splitlines()
    assert 3 <= len(done_before) < 16, "the kill should land mid-run"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    lines = path.read_text().splitlines()
    ids = [json.loads(line)["fact_id"] for line in lines]
    assert sorted(ids) == sorted(f"f{i}" for i in range(16))  # none lost, none repeated
    assert lines[: len(done_before)] == done_before  # finished facts were not recomputed
    # and the resumed results equal an uninterrupted run
    fresh = tmp_path / "fresh"
    assert main(command(fresh)[3:]) == 0
    by_id = {
        json.loads(x)["fact_id"]: json.loads(x) for x in (fresh / "neurons.jsonl").read_text().splitlines()
    }
    for line in lines:
        rec = json.loads(line)
        assert rec["neurons"] == by_id[rec["fact_id"]]["neurons"]


def test_unknown_independent_metric_is_refused_before_any_work(tmp_path, capsys):
    assert main(["score", "--metrics", "sparsity,bogus", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "electrode" in err
    assert not (tmp_path / "o").exists()


def test_card_prints_not_available_for_an_unmeasurable_tier(capsys):
    from legibility.cli import _print_card

    nan = float("nan")
    _print_card(
        {
            "suppression.same_subject": {"value": nan, "ci_low": nan, "ci_high": nan, "n": 0},
            "specific_suppressability": {"value": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n": 7},
        }
    )
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("suppression.same_subject"))
    assert "not available" in row and "nan" not in row
    assert any(line.startswith("specific_suppressability") and "0.250" in line for line in out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["score", "--out", "OUT", "--device", "tpu"], "unknown device 'tpu'"),
        (["report", "MISSING"], "is not a directory"),
    ],
)
def test_device_and_report_errors_come_before_heavy_imports(tmp_path, argv, message):
    argv = [str(tmp_path / a) if a in ("OUT", "MISSING") else a for a in argv]
    code = f"import sys; from legibility.cli import main; rc = main({argv!r}); print('torch' in sys.modules); sys.exit(rc)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stdout.strip() == "False"  # torch was never imported
