"""Read a run config from YAML (or a dict) into a validated :class:`RunConfig`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from legibility.errors import LegibilityError
from legibility.training.config import ModelConfig, RunConfig, check_run, from_dict
from legibility.training.model import TRAINABLE
from legibility.training.regularizers import canonical_regularizers, parse_regularizers


def parse_run_config(data: dict) -> RunConfig:
    """Validate a mapping (the YAML document) into a RunConfig; errors name the offending key. Old names
    (``model.dropout``, the ``dropout`` regularizer) load with a FutureWarning under their new names."""
    cfg = from_dict(RunConfig, data, "config")
    if cfg.model.family not in TRAINABLE:
        raise LegibilityError(
            f"config.model.family: {cfg.model.family!r} is not a trainable family; choose one of "
            f"{', '.join(TRAINABLE.names())}"
        )
    parse_regularizers(cfg.regularizers)  # validate names and fields now, not at the first step
    cfg = dataclasses.replace(cfg, regularizers=canonical_regularizers(cfg.regularizers))
    check_run(cfg)
    return cfg


def upgrade_resolved(resolved: dict) -> dict:
    """A resolved config mapping (a run's ``config.json``) with old field names under their new ones, so a
    run written before a rename compares equal to the same config written after it."""
    out = json.loads(json.dumps(resolved))
    model = out.get("model")
    if isinstance(model, dict):
        for old, (new, _) in ModelConfig.RENAMED.items():
            if old in model and new not in model:
                model[new] = model.pop(old)
    if isinstance(out.get("regularizers"), list):
        out["regularizers"] = canonical_regularizers(out["regularizers"])
    return out


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
