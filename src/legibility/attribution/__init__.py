from legibility.attribution import (  # noqa: F401  (register the methods)
    approximate,
    contrastive,
    fast,
    patching,
    reference,
    relevance,
    subject,
)
from legibility.attribution.base import (
    METHODS,
    AttributionConfig,
    attribute,
    attribute_facts,
    attribute_prompts,
    prepare_facts,
)

__all__ = [
    "METHODS",
    "AttributionConfig",
    "attribute",
    "attribute_facts",
    "attribute_prompts",
    "prepare_facts",
]
