"""What keys a probe run (the model's name, and its weights' content hash for a local directory) and how a
probe run loads its model."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from legibility.models.loading import LoadedModel, load_model


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_key(name: str) -> str:
    """The model name, plus a content hash of its weight files when it is a local directory."""
    p = Path(name)
    if p.is_dir():
        files = sorted(p.glob("*.safetensors")) + sorted(p.glob("config.json"))
        return name + ":" + hashlib.sha256("".join(file_hash(f) for f in files).encode()).hexdigest()[:16]
    return name


def load_probe_model(model: str | LoadedModel) -> LoadedModel:
    """The loaded model (masked LMs read their texts with special tokens)."""
    if isinstance(model, LoadedModel):
        return model
    lm = load_model(model)
    if lm.kind != "causal" and not lm.add_special_tokens:
        lm.add_special_tokens = True
    return lm
