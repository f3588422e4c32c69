"""Files of a run that survive damage: append-only JSONL stores, atomic JSON files and a lock on the run
directory.

A :class:`JsonlStore` holds one record per line, flushed and fsynced. On opening:

* a torn last line (a kill mid-write: no final newline) is dropped silently;
* any other line that is not valid JSON is moved to ``<file>.corrupt`` with a warning naming file and line,
  and the valid records after it are kept;
* a record without the required keys is a :class:`LegibilityError` naming file and line (it was written by
  something else, and guessing would hide the problem).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from legibility.errors import LegibilityError

LOCK_NAME = ".lock"


class StoreWarning(UserWarning):
    """A run file was damaged and repaired (its bad lines were set aside)."""


class JsonlStore:
    """Records keyed by ``key`` in a JSONL file; ``required`` lists keys every record must have."""

    def __init__(self, path: str | os.PathLike, key: str = "fact_id", required: Sequence[str] = ()):
        self.path = Path(path)
        self.key = key
        self.required = tuple(dict.fromkeys([key, *required]))
        self.records: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, else a torn last line
        keep: list[bytes] = []
        corrupt: list[tuple[int, bytes]] = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                corrupt.append((i, line))
                continue
            if not isinstance(rec, dict) or (missing := [k for k in self.required if k not in rec]):
                what = "is not a JSON object" if not isinstance(rec, dict) else f"lacks {missing}"
                raise LegibilityError(
                    f"{self.path}:{i}: record {what}; this file was not written by this version of "
                    "legibility: move it away, or rerun with --force to recompute"
                )
            self.records[str(rec[self.key])] = rec
            keep.append(line)
        if corrupt:
            with open(f"{self.path}.corrupt", "ab") as f:
                for _, line in corrupt:
                    f.write(line + b"\n")
            where = ", ".join(str(i) for i, _ in corrupt)
            warnings.warn(
                f"{self.path}: line(s) {where} are not valid JSON; moved them to {self.path}.corrupt and kept "
                f"the {len(keep)} valid records (their facts will be recomputed)",
                StoreWarning,
                stacklevel=3,
            )
        if corrupt or tail:
            atomic_write_bytes(self.path, b"".join(line + b"\n" for line in keep))

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records.values())

    def append(self, record: dict) -> None:
        missing = [k for k in self.required if k not in record]
        if missing:
            raise LegibilityError(f"record for {self.path} lacks {missing}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[str(record[self.key])] = record


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary sibling and a rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


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
    atomic_write_bytes(path, json.dumps(settings, indent=2, sort_keys=True).encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_writable(out_dir: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output directory that is a file or cannot be created/written, without creating it."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LegibilityError(f"{flag} {out} is a file; give a directory")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise LegibilityError(f"{flag} {out}: {probe} is not writable; choose a directory you can write to")
    return out


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<out_dir>/.lock`` (pid and host) for the block; a second run on the same directory is refused.

    A lock left by a killed run on this host (its pid is gone) is taken over with a warning.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if isinstance(pid, int) and host == me["host"] and _alive(pid):
                raise LegibilityError(
                    f"{out} is in use by another run (pid {pid}); wait for it to finish or use another --out"
                ) from None
            if isinstance(pid, int) and host not in (None, me["host"]):
                raise LegibilityError(
                    f"{out} is locked by a run on host {host} (pid {pid}); if that run is dead, delete {path}"
                ) from None
            warnings.warn(f"{out}: recovered the stale lock of a run that died (pid {pid})", StoreWarning, 3)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise LegibilityError(f"could not take the lock {path}; is another run starting on {out}?")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            holder = json.loads(path.read_text() or "{}")
            if holder.get("pid") == me["pid"]:
                path.unlink()


def is_disk_error(e: OSError) -> bool:
    """Whether an OSError is the user's disk (full, read-only, no permission) rather than a bug."""
    return e.errno in {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM, errno.EDQUOT}
