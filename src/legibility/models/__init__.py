"""Models: loading, the embedded real model, and the FFN sites of each architecture.

Names are imported on first use so that ``legibility.models.embedded`` stays importable without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "DEFAULT_MODEL": "legibility.models.loading",
    "LoadedModel": "legibility.models.loading",
    "load_model": "legibility.models.loading",
    "ARCHITECTURES": "legibility.models.sites",
    "Sites": "legibility.models.sites",
    "SiteSpec": "legibility.models.sites",
}
__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MODEL",
    "LoadedModel",
    "SiteSpec",
    "Sites",
    "load_model",
]

if TYPE_CHECKING:
    from legibility.models.loading import DEFAULT_MODEL, LoadedModel, load_model
    from legibility.models.sites import ARCHITECTURES, Sites, SiteSpec


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'legibility.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
