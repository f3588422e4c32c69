"""Argument types shared by every command: numbers within a range, checked when the command line is parsed
(before any work), so that a typo is a one-line error instead of a traceback or an hour of computing."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(
    kind: type,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` within [low, high] (or the open ends asked for)."""

    def parse(text: str):
        try:
            value = kind(text)
            if not math.isfinite(value):
                raise ValueError(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        lo_ok = low is None or (value > low if open_low else value >= low)
        hi_ok = high is None or (value < high if open_high else value <= high)
        if not (lo_ok and hi_ok):
            lo = "" if low is None else ("(" if open_low else "[") + f"{low}"
            hi = "" if high is None else f"{high}" + (")" if open_high else "]")
            where = (
                f"in {lo}, {hi}"
                if low is not None and high is not None
                else (
                    f"{'>' if open_low else '>='} {low}"
                    if low is not None
                    else f"{'<' if open_high else '<='} {high}"
                )
            )
            raise argparse.ArgumentTypeError(f"must be {where}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse
