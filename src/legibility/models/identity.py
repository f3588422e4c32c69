"""What a model *is*, by content: the digests that key every run made with it.

A model's outputs are decided by its weights, its config (``config.json``, ``generation_config.json``) and
its tokenizer files, so a run key holds one sha256 for each (:func:`identity_of`, :func:`identity`):
changing any of them, in place or by copying other files over, is a changed key, never a silent reuse.

* a local directory (or the embedded model's cached copy, or a hub id already in the Hugging Face cache) is
  keyed by its files;
* a ``.gguf`` file holds all three, so its one digest stands for each;
* a model that exists only in memory is keyed by its state dict, its config and its tokenizer's
  serialization.

Hashing a large file takes seconds, so file digests are cached in ``<cache>/content-hashes.json`` under a
stamp of the path, device, inode, size, mtime and ctime. The ctime is set by the kernel on every change
to a file and cannot be set by a user: ``cp -p`` or ``touch -d`` preserve or forge the mtime, but the ctime
of the copy is new, so a replaced file is hashed again. :func:`sha256_file` is the one hashing helper.

>>> from legibility.models.identity import model_ref
>>> model_ref("smollm2-135m")
'smollm2-135m'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legibility.models.gguf import cache_dir

if TYPE_CHECKING:
    from legibility.models.loading import LoadedModel

# The files of a Hugging Face directory that decide a model's outputs, by part.
WEIGHTS = ("*.safetensors",)
CONFIG = ("config.json", "generation_config.json")
TOKENIZER = (
    "tokenizer*.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.model",
    "*.tiktoken",
)
PARTS = {"weights": WEIGHTS, "config": CONFIG, "tokenizer": TOKENIZER}
CACHE_NAME = "content-hashes.json"


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


def model_ref(name: str) -> str:
    """The model as a run key names it: an embedded name or hub id as given, a local path resolved to an
    absolute one (so that ``m``, ``./m`` and ``/abs/m`` are one model)."""
    from legibility.models.embedded import EMBEDDED

    if name in EMBEDDED or not name:
        return name
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def model_files(name: str) -> Path | None:
    """The directory (or ``.gguf`` file) whose files a model named ``name`` is loaded from, without loading
    or converting it; None when there is none yet (a hub id not in the cache, an embedded model not yet
    converted)."""
    from legibility.models.embedded import EMBEDDED

    if not name:
        return None
    if name in EMBEDDED:
        d = cache_dir() / "models" / name
        return d if (d / "config.json").is_file() else None
    p = Path(name).expanduser()
    if p.is_file():
        return p.resolve() if p.suffix.lower() == ".gguf" else None
    if p.is_dir():
        if not (p / "config.json").exists():
            from legibility.models.gguf import find_gguf

            with contextlib.suppress(Exception):  # several GGUF files: loading says so
                found = find_gguf(p)
                if found is not None:
                    return found.resolve()
        return p.resolve()
    return _hf_snapshot(name)


def _hf_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub library rejects is not cached either
        return None
    return Path(found).parent if isinstance(found, str) else None


def identity_of(name: str) -> dict[str, str] | None:
    """``{"weights_sha256", "config_sha256", "tokenizer_sha256"}`` of the model named ``name`` from its
    files, without loading it; None when its files are not here (see :func:`model_files`) or hold no
    weights."""
    where = model_files(name)
    if where is None:
        return None
    if where.is_file():  # a GGUF holds weights, config and tokenizer in one file
        d = sha256_file(where, cached=True)
        return {f"{part}_sha256": d for part in PARTS}
    found = {part: _glob(where, patterns) for part, patterns in PARTS.items()}
    if not found["weights"]:
        return None
    return {f"{part}_sha256": digest_files(files, where) for part, files in found.items()}


def _glob(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})


def identity(lm: LoadedModel) -> dict[str, str]:
    """The identity of a loaded model: from the files it was loaded from when ``lm.name`` names them, else
    from what it holds in memory (state dict, config, tokenizer)."""
    found = identity_of(lm.name)
    if found is not None:
        return found
    return {
        "weights_sha256": _state_digest(lm.model),
        "config_sha256": _config_digest(lm.model),
        "tokenizer_sha256": _tokenizer_digest(lm.tokenizer),
    }


def _state_digest(model: Any) -> str:
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _config_digest(model: Any) -> str:
    cfg = getattr(model, "config", None)
    data = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else {}
    for k in ("_name_or_path", "transformers_version"):  # where it came from, not what it computes
        data.pop(k, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        text = json.dumps(sorted(vocab.items()))
    specials = getattr(tokenizer, "special_tokens_map", {}) or {}
    text += json.dumps(specials, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
