from legibility.attribution import approximate, fast, reference  # noqa: F401  (register the methods)
from legibility.attribution.base import (
    METHODS,
    AttributionConfig,
    attribute,
    attribute_facts,
    attribute_prompts,
)

__all__ = ["METHODS", "AttributionConfig", "attribute", "attribute_facts", "attribute_prompts"]
