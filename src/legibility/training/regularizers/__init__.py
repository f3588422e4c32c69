"""One registry of training regularizers; importing this package registers all of them."""

from legibility.training.regularizers import locality, penalties, specific, suppressability  # noqa: F401
from legibility.training.regularizers.base import (
    REGULARIZERS,
    Regularizer,
    RegularizerConfig,
    Setup,
    StepContext,
    build_regularizers,
    canonical_regularizers,
    parse_regularizers,
    recording,
)

__all__ = [
    "REGULARIZERS",
    "Regularizer",
    "RegularizerConfig",
    "Setup",
    "StepContext",
    "build_regularizers",
    "canonical_regularizers",
    "parse_regularizers",
    "recording",
]
