"""matplotlib is an optional dependency (the ``report`` extra): import it only when a figure is drawn."""

from __future__ import annotations

import warnings
from types import ModuleType

from legibility.errors import LegibilityError

INSTALL = "pip install 'legibility[report]'"


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or a LegibilityError saying how to get it."""
    try:
        import matplotlib
    except ImportError as e:
        raise LegibilityError(f"drawing figures needs matplotlib: {INSTALL}") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def available(figure: str) -> bool:
    """Whether figures can be drawn; if not, warn once per figure (results are written all the same)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn(f"matplotlib is not installed: skipped {figure} ({INSTALL} draws it)", stacklevel=3)
        return False
    return True
