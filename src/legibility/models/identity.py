"""What a model *is*, by content: the digests that key every run made with it.

A model's outputs are decided by its weights, its config (``config.json``, ``generation_config.json``) and
its tokenizer files, so a run key holds one sha256 for each (:func:`identity_of`, :func:`identity`):
changing any of them, in place or by copying other files over, is a changed key, never a silent reuse.

* a local directory (or the embedded model's cached copy, or a hub id already in the Hugging Face cache) is
  keyed by its files;
* a ``.gguf`` file holds all three, so its one digest stands for each;
* a model that exists only in memory is keyed by its state dict, its config and its tokenizer's
  serialization.

File digests come from :func:`legibility.models.files.sha256_file`, the one hashing helper (re-exported
here), cached under a stamp of each file that a preserved mtime (``cp -p``) cannot fool.

>>> from legibility.models.identity import model_ref
>>> model_ref("smollm2-135m")
'smollm2-135m'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legibility.models.files import cache_dir, digest_files, sha256_file

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
__all__ = ["digest_files", "identity", "identity_of", "model_files", "model_ref", "sha256_file"]


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
