"""Content hashes that key cached editing results: any JSON-ready settings (the model is keyed by
:func:`legibility.models.identity.identity`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def settings_key(*parts: Any, length: int = 16) -> str:
    """A short sha256 of JSON-ready ``parts`` (dataclasses via ``dataclasses.asdict`` first)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
