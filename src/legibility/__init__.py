"""legibility: measure, steer and train for interpretability in transformer language models.

The public API is what ``__all__`` lists. Names are imported on first use (module ``__getattr__``), so
``import legibility`` stays light: torch and transformers load only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from legibility.errors import LegibilityError

# public name -> module that defines it
_LAZY = {
    "METHODS": "legibility.attribution",
    "AttributionConfig": "legibility.attribution",
    "attribute": "legibility.attribution",
    "attribute_prompts": "legibility.attribution",
    "load_jsonl_facts": "legibility.facts.jsonl",
    "download_pararel": "legibility.facts.pararel",
    "load_pararel": "legibility.facts.pararel",
    "render": "legibility.facts.render",
    "Fact": "legibility.facts.types",
    "PromptQueries": "legibility.facts.types",
    "Query": "legibility.facts.types",
    "predict": "legibility.forward",
    "Intervention": "legibility.interventions",
    "amplify": "legibility.interventions",
    "scale": "legibility.interventions",
    "set_to": "legibility.interventions",
    "suppress": "legibility.interventions",
    "LoadedModel": "legibility.models",
    "Sites": "legibility.models",
    "SiteSpec": "legibility.models",
    "load_model": "legibility.models",
    "RunSettings": "legibility.run",
    "FactSource": "legibility.run",
    "RunResult": "legibility.run",
}

__all__ = [
    "AttributionConfig",
    "Fact",
    "FactSource",
    "Intervention",
    "LegibilityError",
    "LoadedModel",
    "METHODS",
    "PromptQueries",
    "Query",
    "RunResult",
    "RunSettings",
    "SiteSpec",
    "Sites",
    "amplify",
    "attribute",
    "attribute_prompts",
    "download_pararel",
    "load_jsonl_facts",
    "load_model",
    "load_pararel",
    "predict",
    "render",
    "scale",
    "set_to",
    "suppress",
]

if TYPE_CHECKING:
    from legibility.attribution import METHODS, AttributionConfig, attribute, attribute_prompts
    from legibility.facts.jsonl import load_jsonl_facts
    from legibility.facts.pararel import download_pararel, load_pararel
    from legibility.facts.render import render
    from legibility.facts.types import Fact, PromptQueries, Query
    from legibility.forward import predict
    from legibility.interventions import Intervention, amplify, scale, set_to, suppress
    from legibility.models import LoadedModel, Sites, SiteSpec, load_model
    from legibility.run import FactSource, RunResult, RunSettings


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'legibility' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
