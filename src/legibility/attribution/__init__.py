from legibility.attribution import (  # noqa: F401  (register the methods)
    approximate,
    contrastive,
    fast,
    reference,
    subject,
)
from legibility.attribution.base import (
    METHODS,
    AttributionConfig,
    attribute,
    attribute_facts,
    attribute_prompts,
)

__all__ = ["METHODS", "AttributionConfig", "attribute", "attribute_facts", "attribute_prompts"]
