"""Append-only JSONL files that survive a kill: one record per line, flushed and fsynced, and a torn last
line (from a kill mid-write) dropped on the next open."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from legibility.errors import LegibilityError


class JsonlStore:
    def __init__(self, path: str | os.PathLike, key: str = "fact_id"):
        self.path = Path(path)
        self.key = key
        self.records: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        good_bytes = 0
        with self.path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn write at the end: drop it
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    break
                self.records[str(rec[self.key])] = rec
                good_bytes += len(raw)
        if good_bytes != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_bytes)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records.values())

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[str(record[self.key])] = record


def check_settings(out_dir: Path, settings: dict) -> None:
    """Write run.json on the first run; on a rerun, refuse to mix results made with other settings."""
    path = out_dir / "run.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise LegibilityError(
                f"{out_dir} holds results made with other settings ({changes}). Use a new --out directory, "
                "or delete it to start over."
            )
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    tmp.replace(path)
