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
import hashlib
import json
import os
import shutil
import socket
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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


def key_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``name: old -> new`` for each key that differs: how every refusal of a resumable folder says why."""
    return [
        f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def settings_key(*parts: Any, length: int = 16) -> str:
    """A short sha256 of JSON-ready ``parts``: the name of a content-addressed cache inside a resumable folder
    (editing's known-fact and neuron caches), so other settings land in another cache instead of a stale one."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def read_key(path: Path) -> dict | None:
    """The key of a resumable folder (its ``run.json``), or None when it is missing or damaged."""
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return key if isinstance(key, dict) else None


def check_settings(out_dir: Path, settings: dict) -> None:
    """The resumable-folder scheme of every job: write ``run.json`` (the key: every setting and input digest
    that changes a result) on the first run; on a rerun, refuse to mix results made with another key, naming
    each difference as ``name: old -> new`` (the runner's ``run.json`` is checked the same way)."""
    path = out_dir / "run.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = read_key(path)
        if old is None:
            raise LegibilityError(f"{path} is damaged; delete {out_dir} (or use a new --out) to start over")
        # only the keys asked about: a key this version no longer writes does not refuse an older folder
        diff = key_diff({k: old[k] for k in settings if k in old}, settings)
        if diff:
            raise LegibilityError(
                f"{out_dir} holds results made with other settings ({'; '.join(diff)}). Use a new --out "
                "directory, or delete it to start over."
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


def make_dir(out_dir: str | os.PathLike, flag: str = "--out") -> Path:
    """Create ``out_dir`` (and its parents), or a one-line LegibilityError saying why it cannot be."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LegibilityError(f"{flag} {out} is a file; give a directory") from None
    except OSError as e:
        raise LegibilityError(
            f"{flag} {out} cannot be created ({e.strerror}); choose a directory you can write to"
        ) from None
    return out


def check_files(out_dir: str | os.PathLike, names: Sequence[str], flag: str = "--out") -> None:
    """Refuse an output directory where one of the files a job writes (``names``) is something else (a
    directory, say): the job would fail at its end, after all the work."""
    out = Path(out_dir)
    for name in names:
        path = out / name
        if (path.exists() or path.is_symlink()) and not path.is_file():
            raise LegibilityError(
                f"{flag} {out}: {path} is not a file (a directory?), but this job writes it; move it away "
                "or choose another directory"
            )


def check_target(path: str | os.PathLike, flag: str = "--to") -> Path:
    """Refuse a file to write that is a directory or lies in a directory that cannot be created."""
    p = Path(path)
    if p.is_dir():
        raise LegibilityError(f"{flag} {p} is a directory; give a file name")
    check_writable(p.parent, flag=f"{flag} {p}: its folder")
    return p


def write_file(path: str | os.PathLike, data: str | bytes, flag: str = "--to") -> Path:
    """Write ``path`` atomically (temporary sibling + rename; the temporary file never survives a failure),
    creating its folder; a path that cannot be written is a one-line LegibilityError."""
    p = check_target(path, flag)
    make_dir(p.parent, flag=f"{flag} {p}: its folder")
    raw = data.encode() if isinstance(data, str) else data
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(p)
    except OSError as e:
        raise LegibilityError(f"cannot write {flag} {p}: {e.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return p


def clean_temp(out_dir: str | os.PathLike, *subdirs: str) -> list[Path]:
    """Delete the temporary files and folders (``*.tmp``) that a killed job left in ``out_dir`` (and in its
    ``subdirs``); call it only while holding the directory's :func:`run_lock`, when no one writes them."""
    removed = []
    for d in (Path(out_dir), *(Path(out_dir) / s for s in subdirs)):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if not p.name.endswith(".tmp") or p.name.startswith(f"{LOCK_NAME}."):
                continue
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
    return removed


def _publish(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, or raise FileExistsError; the file never exists empty.

    The text is written to a private file first and hard-linked into place (atomic, and refused when the
    name exists), so a run that finds the lock always reads its holder: an empty lock would look stale
    and be taken over while its run was still starting. Where hard links are not supported the file is
    created exclusively and then written."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        pass
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<out_dir>/.lock`` (pid and host) for the block; a second run on the same directory is refused.

    Where the OS has ``flock`` (Linux, macOS) the lock is the kernel's: it dies with its process, so a
    killed run never blocks the next one, and two runs starting at the same moment cannot both win. The
    file names the holder for the error message; a file left by a killed run is taken over with a warning.
    Elsewhere the file itself is the lock (created exclusively; a holder whose pid is gone is stale).
    """
    out = make_dir(out_dir)
    path = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        import fcntl
    except ImportError:  # no flock (Windows)
        with _file_lock(out, path, me):
            yield path
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _holder(path).get("pid")
            raise LegibilityError(
                f"{out} is in use by another run (pid {pid}); wait for it to finish or use another --out"
            ) from None
        try:  # the run before may have released and deleted the file between our open and our flock
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        before = _holder(path)
        if before.get("host") not in (None, me["host"]):
            raise LegibilityError(
                f"{out} is locked by a run on host {before['host']} (pid {before.get('pid')}); if that run "
                f"is dead, delete {path}"
            )
        if before.get("pid") not in (None, me["pid"]):
            warnings.warn(
                f"{out}: recovered the stale lock of a run that died (pid {before['pid']})", StoreWarning, 3
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        clean_temp(out)  # what a killed run left behind
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # while still holding the lock: a waiter then sees another inode and retries
    finally:
        os.close(fd)


def check_idle(out_dir: str | os.PathLike) -> None:
    """Refuse to read a directory that a run holds right now (its files are still being written), without
    writing anything into it."""
    path = Path(out_dir) / LOCK_NAME
    try:
        import fcntl
    except ImportError:
        holder = _holder(path)
        pid = holder.get("pid")
        busy = isinstance(pid, int) and holder.get("host") == socket.gethostname() and _alive(pid)
    else:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # no lock file: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            busy = False
        except BlockingIOError:
            busy, pid = True, _holder(path).get("pid")
        finally:
            os.close(fd)
    if busy:
        raise LegibilityError(
            f"{out_dir} is in use by a run (pid {pid}) that is still writing it; wait for it to finish"
        )


def _holder(path: Path) -> dict:
    """The pid and host a lock file names ({} when it is empty, unreadable or gone)."""
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def _file_lock(out: Path, path: Path, me: dict) -> Iterator[None]:
    """The lock without flock: the file is created exclusively, already holding its pid and host."""
    for _ in range(2):
        try:
            _publish(path, json.dumps(me))
        except FileExistsError:
            holder = _holder(path)
            pid, host = holder.get("pid"), holder.get("host")
            if isinstance(pid, int) and host == me["host"] and _alive(pid):
                raise LegibilityError(
                    f"{out} is in use by another run (pid {pid}); wait for it to finish or use another --out"
                ) from None
            if isinstance(pid, int) and host not in (None, me["host"]):
                raise LegibilityError(
                    f"{out} is locked by a run on host {host} (pid {pid}); if that run is dead, delete {path}"
                ) from None
            warnings.warn(f"{out}: recovered the stale lock of a run that died (pid {pid})", StoreWarning, 4)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        break
    else:
        raise LegibilityError(f"could not take the lock {path}; is another run starting on {out}?")
    clean_temp(out)
    try:
        yield
    finally:
        if _holder(path).get("pid") == me["pid"]:
            with contextlib.suppress(OSError):
                path.unlink()


def is_disk_error(e: OSError) -> bool:
    """Whether an OSError is the user's disk (full, read-only, no permission) rather than a bug."""
    return e.errno in {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM, errno.EDQUOT}
