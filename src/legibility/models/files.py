"""Model files on disk: legibility's cache folder and the one content-hash helper.

Hashing a large file takes seconds, so file digests are cached in ``<cache>/content-hashes.json`` under a
stamp of the path, device, inode, size, mtime and ctime. The ctime is set by the kernel on every change to a
file and cannot be set by a user: ``cp -p`` or ``touch -d`` preserve or forge the mtime, but the ctime of the
copy is new, so a replaced file is hashed again. This module imports nothing else of the package, so every
layer (model loading, GGUF conversion, checkpoints, run keys) can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

CACHE_NAME = "content-hashes.json"


def cache_dir() -> Path:
    """Root of legibility's caches: $LEGIBILITY_CACHE, else ~/.cache/legibility."""
    return Path(os.environ.get("LEGIBILITY_CACHE", Path.home() / ".cache" / "legibility"))


def sha256_file(path: str | os.PathLike, *, cached: bool = False) -> str:
    """Hex sha256 of a file's bytes, read in chunks. ``cached``: reuse the digest of a file whose stamp
    (path, device, inode, size, mtime, ctime) is unchanged since it was last hashed (see the module doc)."""
    if cached:
        return _cached_digests([Path(path)])[0]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def _cached_digests(paths: list[Path]) -> list[str]:
    cache_path = cache_dir() / CACHE_NAME
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    out, changed = [], False
    for p in paths:
        stamp = _stamp(p)
        digest = cache.get(stamp)
        if not isinstance(digest, str):
            digest = sha256_file(p)
            # the digest is stored only if the file did not change while it was read
            if _stamp(p) == stamp:
                cache[stamp] = digest
                changed = True
        out.append(digest)
    if changed:
        _save_cache(cache_path, cache)
    return out


def _save_cache(path: Path, cache: dict) -> None:
    """Keep the entries of files that still exist; a private temporary name, since several processes may
    write at once (the cache only saves time, so a lost update costs one more hash, never a wrong one)."""
    alive = {k: v for k, v in cache.items() if Path(k.split("|", 1)[0]).exists()}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(alive, indent=0), encoding="utf-8")
        os.replace(tmp, path)


def digest_files(files: Iterable[Path], root: Path) -> str:
    """One sha256 over the names (relative to ``root``) and cached content digests of ``files``."""
    files = sorted(files)
    h = hashlib.sha256()
    for f, d in zip(files, _cached_digests(files), strict=True):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(d.encode())
    return h.hexdigest()
