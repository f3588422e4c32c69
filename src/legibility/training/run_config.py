"""Read a run config from YAML (or a dict) into a validated :class:`RunConfig`."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from legibility.errors import LegibilityError
from legibility.training.config import RunConfig, check_run, from_dict
from legibility.training.regularizers import parse_regularizers


def parse_run_config(data: dict) -> RunConfig:
    """Validate a mapping (the YAML document) into a RunConfig; errors name the offending key."""
    cfg = from_dict(RunConfig, data, "config")
    parse_regularizers(cfg.regularizers)  # validate names and fields now, not at the first step
    check_run(cfg)
    return cfg


def read_yaml(path: str | os.PathLike, what: str = "config file", examples: str = "configs/") -> dict:
    """The mapping in a YAML file ({} for an empty one), with clear errors for a missing or broken file."""
    p = Path(path)
    if not p.is_file():
        raise LegibilityError(f"{what} {p} does not exist; see {examples} for examples")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise LegibilityError(
            f"{p} is not UTF-8 text ({e.reason} at byte {e.start}); give a YAML file"
        ) from e
    except yaml.YAMLError as e:
        raise LegibilityError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from e
    except OSError as e:
        raise LegibilityError(f"cannot read {what} {p}: {e.strerror}") from e
    return data or {}


def load_run_config(path: str | os.PathLike) -> RunConfig:
    return parse_run_config(read_yaml(path))
