"""legibility: measure, steer and train for interpretability in transformer language models."""

import legibility.training.model  # noqa: F401  (registers the SoLU activation with transformers)
from legibility.attribution import METHODS, AttributionConfig, attribute, attribute_prompts
from legibility.errors import LegibilityError
from legibility.facts.jsonl import load_jsonl_facts
from legibility.facts.pararel import download_pararel, load_pararel
from legibility.facts.render import render
from legibility.facts.types import Fact, PromptQueries, Query
from legibility.forward import predict
from legibility.interventions import Intervention, amplify, scale, set_to, suppress
from legibility.models import LoadedModel, Sites, SiteSpec, load_model

__all__ = [
    "METHODS",
    "AttributionConfig",
    "Fact",
    "Intervention",
    "LegibilityError",
    "LoadedModel",
    "PromptQueries",
    "Query",
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
