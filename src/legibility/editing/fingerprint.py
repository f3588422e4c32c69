"""Content hashes that key cached editing results: the model's weights and any JSON-ready settings."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from legibility.models.loading import LoadedModel


@torch.no_grad()
def model_fingerprint(lm: LoadedModel) -> str:
    """sha256 over the model's state-dict tensors (names, dtypes, shapes and bytes), so that two models with
    the same name but other weights (an edited copy, a retrained run) never share a cache (~1 s for a
    135M-parameter model on CPU)."""
    h = hashlib.sha256()
    for name, t in sorted(lm.model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def settings_key(*parts: Any, length: int = 16) -> str:
    """A short sha256 of JSON-ready ``parts`` (dataclasses via ``dataclasses.asdict`` first)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
