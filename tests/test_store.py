import json
import os
import socket
import subprocess
import sys

import pytest

from legibility import LegibilityError
from legibility.store import JsonlStore, check_settings


def test_torn_last_line_is_dropped_and_appends_continue(tmp_path):
    path = tmp_path / "x.jsonl"
    s = JsonlStore(path)
    s.append({"fact_id": "a", "v": 1})
    s.append({"fact_id": "b", "v": 2})
    with path.open("a") as f:
        f.write('{"fact_id": "c", "v"')  # killed mid-write
    again = JsonlStore(path)
    assert list(again.records) == ["a", "b"]
    again.append({"fact_id": "c", "v": 3})
    assert [r["v"] for r in JsonlStore(path)] == [1, 2, 3]


def test_settings_mismatch_refuses_to_mix_results(tmp_path):
    check_settings(tmp_path, {"steps": 20})
    check_settings(tmp_path, {"steps": 20})
    with pytest.raises(LegibilityError, match="steps: 20 -> 10"):
        check_settings(tmp_path, {"steps": 10})


def test_corrupt_middle_line_is_quarantined_and_later_records_are_kept(tmp_path):
    from legibility.store import StoreWarning

    path = tmp_path / "neurons.jsonl"
    path.write_text('{"fact_id": "a"}\n{"fact_id": "b", oops\n{"fact_id": "c"}\n{"fact_id": "d"}\n')
    with pytest.warns(StoreWarning, match=r"neurons.jsonl: line\(s\) 2 are not valid JSON"):
        store = JsonlStore(path)
    assert list(store.records) == ["a", "c", "d"]
    assert (tmp_path / "neurons.jsonl.corrupt").read_text() == '{"fact_id": "b", oops\n'
    assert [json.loads(x)["fact_id"] for x in path.read_text().splitlines()] == ["a", "c", "d"]


def test_torn_last_line_is_repaired_silently(tmp_path, recwarn):
    path = tmp_path / "x.jsonl"
    path.write_text('{"fact_id": "a"}\n{"fact_id": "b"')
    assert list(JsonlStore(path).records) == ["a"]
    assert path.read_text() == '{"fact_id": "a"}\n' and not recwarn.list


def test_record_missing_a_required_key_names_file_and_line(tmp_path):
    path = tmp_path / "effects.jsonl"
    path.write_text('{"fact_id": "a", "before": 1}\n{"fact_id": "b"}\n')
    with pytest.raises(LegibilityError, match=r"effects.jsonl:2: record lacks \['before'\]"):
        JsonlStore(path, required=("before",))


@pytest.mark.parametrize("kind", ["flock", "file"])
def test_lock_refuses_a_live_run_and_recovers_a_dead_ones(tmp_path, kind, monkeypatch):
    """Both mechanisms: the kernel's flock, and the exclusive file where there is no fcntl (Windows)."""
    from legibility.store import StoreWarning, run_lock

    if kind == "file":
        monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError

    with (
        run_lock(tmp_path),
        pytest.raises(LegibilityError, match="in use by another run"),
        run_lock(tmp_path),
    ):
        pass
    assert not (tmp_path / ".lock").exists()  # released
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with pytest.warns(StoreWarning, match="stale lock"), run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(LegibilityError, match="locked by a run on host elsewhere"), run_lock(tmp_path):
        pass
    assert (tmp_path / ".lock").exists()  # another host's lock is left for its owner


CONTENDER = """
import sys, time
from legibility import LegibilityError
from legibility.store import run_lock
out, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    pass
try:
    with run_lock(out):
        print("got", flush=True)
        time.sleep(1.5)
except LegibilityError as e:
    print("refused:", e, flush=True)
"""


@pytest.mark.slow
def test_runs_starting_at_the_same_moment_in_separate_processes_get_one_lock(tmp_path):
    """Several processes take the lock of one --out at the same instant, three rounds: each round exactly
    one wins and the others are refused naming the winner (no window in which two both win)."""
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for round_ in range(3):
        out = tmp_path / f"o{round_}"
        start = time.time() + 2.0  # after every interpreter has started
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CONTENDER, str(out), str(start)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(4)
        ]
        lines = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert sum(line == "got" for line in lines) == 1, lines
        assert all(line == "got" or "in use by another run (pid" in line for line in lines), lines
        assert not (out / ".lock").exists()  # the winner released it


@pytest.mark.slow
def test_a_cli_run_is_refused_while_another_process_holds_the_out(tmp_path):
    """A real second process: `legibility neurons` on an --out locked by another live process exits 2
    with the one-line reason and writes nothing; once that process is killed the same command runs."""
    from helpers import tiny_lm
    from test_cli import LOOSE, _args, _facts_file

    tiny_model_dir = tmp_path / "model"
    lm = tiny_lm("llama")
    lm.model.save_pretrained(tiny_model_dir)
    lm.tokenizer.save_pretrained(tiny_model_dir)

    holder = """
import sys, time
from legibility.store import run_lock
with run_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(out), "120"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    facts = _facts_file(tmp_path / "f.jsonl", 2)
    cmd = [
        sys.executable,
        "-m",
        "legibility.cli",
        *_args("neurons", tiny_model_dir, facts, out, "--steps", "2", *LOOSE),
    ]
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.poll() is None  # the holder was alive all along
    proc.kill()
    proc.wait()
    assert refused.returncode == 2, refused.stderr
    assert f"in use by another run (pid {proc.pid})" in refused.stderr and "Traceback" not in refused.stderr
    assert not (out / "neurons.jsonl").exists()
    after = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert after.returncode == 0, after.stderr
    assert "stale lock" in after.stderr and (out / "neurons.jsonl").exists()


def test_one_resumable_folder_scheme_names_each_difference_and_refuses_a_damaged_key(tmp_path):
    from legibility.errors import LegibilityError
    from legibility.store import check_settings, key_diff, read_key

    check_settings(tmp_path, {"model": "a", "facts": 3})
    check_settings(tmp_path, {"model": "a", "facts": 3})  # the same key resumes
    assert read_key(tmp_path / "run.json") == {"model": "a", "facts": 3}
    with pytest.raises(LegibilityError, match=r"facts: 3 -> 4"):
        check_settings(tmp_path, {"model": "a", "facts": 4})
    assert key_diff({"a": 1}, {"b": 2}) == ["a: 1 -> '(absent)'", "b: '(absent)' -> 2"]
    (tmp_path / "run.json").write_text("{not json")
    assert read_key(tmp_path / "run.json") is None
    with pytest.raises(LegibilityError, match="is damaged"):
        check_settings(tmp_path, {"model": "a"})
