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
