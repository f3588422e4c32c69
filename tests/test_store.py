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


def test_lock_refuses_a_live_run_and_recovers_a_dead_ones(tmp_path):
    from legibility.store import StoreWarning, run_lock

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
