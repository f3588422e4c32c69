"""Sweep configs: which training runs to make (variants x grid or random samples x seeds) and how to run them.

```yaml
name: regularizers
base: world-gpt2.yaml            # a run config (path relative to this file) or an inline mapping
variants:                        # named override sets (dotted keys into the run config)
  none: {}
  dropout: {regularizers: [{name: ffn_dropout, p: 0.1}]}
grid: {train.lr: [0.001, 0.003]} # crossed with every variant
random: {n: 4, space: {model.builtin_dropout: {uniform: [0.0, 0.3]}}}   # instead of grid
seeds: [0, 1, 2]
score: {facts: 20, ig_steps: 20}
executor: {name: local, workers: 1}   # or {name: ray, address: auto}; device: cuda (not in trial ids)
```
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legibility.errors import LegibilityError
from legibility.sharding import EXECUTORS, ExecutorConfig

KEYS = {"name", "kind", "base", "variants", "grid", "random", "seeds", "score", "executor"}
# what a trial does: train a small model from scratch, or finetune a pretrained one (legibility finetune)
KINDS = ("train", "finetune")
DISTRIBUTIONS = {"uniform", "log_uniform", "choice", "int_uniform"}
# variant names become folder names and figure labels: no path separators, no "..", no $...$ mathtext
VARIANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_TRIALS = 100_000  # trials of one sweep (each is a training run)


@dataclass(frozen=True)
class Trial:
    """One training run of a sweep: a named variant with overrides, trained with one seed."""

    id: str  # stable: variant, seed and a hash of the full resolved trial config (run config + score)
    variant: str
    seed: int
    overrides: dict[str, Any]  # dotted key -> value, applied to the base run config
    run_config: dict  # the base config with overrides and seed applied (validated)
    kind: str = "train"  # "train" (a RunConfig) or "finetune" (a FinetuneConfig)


@dataclass
class SweepConfig:
    name: str
    base: dict  # the base run config mapping
    trials: list[Trial]
    score: dict = field(default_factory=dict)  # legibility.training.experiment.ScoreConfig fields
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    kind: str = "train"  # every trial's kind


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    if not isinstance(key, str) or not key:
        raise LegibilityError(f"override key {key!r}: give a dotted key of the run config, e.g. train.lr")
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise LegibilityError(f"override {key!r}: {p!r} is not a section of the run config")
        node = node[p]
    node[parts[-1]] = value


def _sample(spec: Any, key: str, rng: random.Random) -> Any:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise LegibilityError(
            f"random.space.{key}: give one of {sorted(DISTRIBUTIONS)}, e.g. {{uniform: [0, 1]}}"
        )
    ((kind, args),) = spec.items()
    where = f"random.space.{key}.{kind}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise LegibilityError(f"{where}: give a non-empty list of values, e.g. {{choice: [0.1, 0.2]}}")
        return rng.choice(list(args))
    if (
        not isinstance(args, list)
        or len(args) != 2
        or not all(isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a) for a in args)
        or args[0] > args[1]
    ):
        raise LegibilityError(f"{where}: give two finite numbers [low, high] with low <= high, got {args!r}")
    lo, hi = args
    if kind == "log_uniform" and lo <= 0:
        raise LegibilityError(f"{where}: the bounds of a log-uniform range must be > 0, got {args!r}")
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "int_uniform":
        return rng.randint(int(lo), int(hi))
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def check_variant_name(name: Any) -> str:
    """``name`` when it is safe as a folder name and a figure label, else a one-line LegibilityError."""
    if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name) or ".." in name or name.startswith("."):
        raise LegibilityError(
            f"variant name {name!r} is not allowed; use 1-64 of the characters A-Z a-z 0-9 . _ - "
            "(no path separators, no '..', not starting with '.')"
        )
    return name


# renamed run-config fields are hashed under their old names, so a rename alone never moves a trial id
ID_NAMES = {("model", "builtin_dropout"): "dropout"}


def _id_form(resolved: dict) -> dict:
    out = copy.deepcopy(resolved)
    run = out.get("run")
    for (section, new), old in ID_NAMES.items():
        node = run.get(section) if isinstance(run, dict) else None
        if isinstance(node, dict) and new in node:
            node[old] = node.pop(new)
    return out


def trial_id(variant: str, resolved: dict, seed: int) -> str:
    """``<variant>-<hash>-s<seed>``; the hash covers the full resolved trial config (base, overrides, seed,
    score settings, defaults filled in, and the content digests of the data files it reads), so changing any
    of them gives a new trial instead of a stale row. Renamed fields are hashed under their old names
    (``ID_NAMES``): renaming changes no result."""
    text = json.dumps(_id_form(resolved), sort_keys=True, default=str)
    return f"{variant}-{hashlib.sha256(text.encode()).hexdigest()[:12]}-s{seed}"


def _check_executor(ex: Any) -> ExecutorConfig:
    if not isinstance(ex, dict) or set(ex) - {"name", "workers", "address", "device"}:
        raise LegibilityError("'executor' takes name (local|ray), workers, address, device")
    name = ex.get("name", "local")
    if name not in EXECUTORS:
        raise LegibilityError(
            f"executor.name = {name!r} is not allowed; choose one of {', '.join(EXECUTORS.names())}"
        )
    workers = ex.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise LegibilityError(f"executor.workers = {workers!r} is not allowed; give an integer >= 1")
    address = ex.get("address")
    if address is not None and not isinstance(address, str):
        raise LegibilityError(f"executor.address = {address!r} is not allowed; give a string or null")
    device = ex.get("device")
    if device is not None:
        from argparse import ArgumentTypeError

        from legibility.devices import device_name

        try:
            device = device_name(str(device))
        except ArgumentTypeError as e:
            raise LegibilityError(f"executor.device: {e}") from e
    return ExecutorConfig(name=name, address=address, workers=workers, device=device)


def _check_score(score: Any) -> dict:
    """The score section with defaults filled in (validated field by field)."""
    from legibility.training.config import check_range, from_dict
    from legibility.training.experiment import ScoreConfig

    sc = from_dict(ScoreConfig, score, "score")
    from legibility.run import MAX_STEPS

    check_range("score.facts", sc.facts, 1, 1_000_000, True, True)
    check_range("score.ig_steps", sc.ig_steps, 1, MAX_STEPS, True, True)
    check_range("score.threshold", sc.threshold, 0.0, 1.0, False, False)
    check_range("score.share", sc.share, 0.0, 1.0, False, True)
    return dataclasses.asdict(sc)


def _path_fields(kind: str) -> tuple[tuple[str, ...], ...]:
    """Fields of a trial's resolved config that name data files whose content digests key the trial: the
    trainer's own list (the trainer resumes a run whose data moved by the same rule)."""
    from legibility.training.finetune import Finetuner
    from legibility.training.trainer import Trainer

    fields = {"train": Trainer.DATA_PATHS, "finetune": Finetuner.DATA_PATHS}[kind]
    return tuple(tuple(f.split(".")) for f in fields)


def _without_paths(resolved: dict, fields: tuple[tuple[str, ...], ...]) -> dict:
    out = copy.deepcopy(resolved)
    for path in fields:
        node: Any = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = None
    return out


def parse_sweep(data: dict, base_dir: str | os.PathLike = ".") -> SweepConfig:
    """Validate a sweep mapping; every trial's run config is validated now, not when it starts."""
    from legibility.training.corpus import data_digests
    from legibility.training.run_config import parse_run_config, read_yaml
    from legibility.training.trainer import portable_digests

    if not isinstance(data, dict):
        raise LegibilityError("a sweep config is a mapping with keys " + ", ".join(sorted(KEYS)))
    unknown = set(data) - KEYS
    if unknown:
        raise LegibilityError(f"unknown sweep key(s) {sorted(unknown)}; allowed: {sorted(KEYS)}")
    base = data.get("base")
    if isinstance(base, str):
        base = read_yaml(Path(base_dir) / base, "sweep base config")
    if not isinstance(base, dict):
        raise LegibilityError("sweep 'base' must be a run config mapping or the path of one")
    if "grid" in data and "random" in data:
        raise LegibilityError("give either 'grid' or 'random', not both")
    variants = data.get("variants") or {"base": {}}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise LegibilityError("'variants' maps a name to a mapping of dotted-key overrides")
    for vname in variants:
        check_variant_name(vname)
    kind = data.get("kind", "train")
    if kind not in KINDS:
        raise LegibilityError(f"sweep kind {kind!r} is not allowed; choose one of {', '.join(KINDS)}")
    parse: Any = parse_run_config
    digest_inputs: Any = lambda run_cfg: data_digests(run_cfg.data)  # noqa: E731
    if kind == "finetune":
        from legibility.training.finetune import input_digests, parse_finetune_config

        parse, digest_inputs = parse_finetune_config, input_digests
    score = _check_score(data.get("score") or {})
    executor = _check_executor(data.get("executor") or {})
    points: list[dict] = [{}]
    if data.get("grid"):
        grid = data["grid"]
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise LegibilityError("'grid' maps dotted keys to non-empty lists of values")
        points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    elif data.get("random"):
        spec = data["random"]
        n, space = (spec.get("n"), spec.get("space")) if isinstance(spec, dict) else (None, None)
        if not isinstance(n, int) or not 1 <= n <= MAX_TRIALS or not isinstance(space, dict):
            raise LegibilityError(
                f"'random' needs n (1 to {MAX_TRIALS}) and space (dotted key -> distribution)"
            )
        seed = spec.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LegibilityError(f"random.seed = {seed!r} is not allowed; give an integer")
        rng = random.Random(seed)
        points = [{k: _sample(v, k, rng) for k, v in space.items()} for _ in range(n)]
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise LegibilityError("'seeds' must be a non-empty list of integers")
    n_trials = len(variants) * len(points) * len(seeds)
    if n_trials > MAX_TRIALS:
        raise LegibilityError(
            f"the sweep has {n_trials} trials (variants x grid points x seeds), more than {MAX_TRIALS}; "
            "split it into several sweeps"
        )
    trials = []
    digests: dict[str, dict[str, str]] = {}  # data section -> the content digests of its files
    for (vname, vover), point, seed in itertools.product(variants.items(), points, seeds):
        overrides = {**vover, **point}
        cfg = copy.deepcopy(base)
        for k, v in overrides.items():
            set_dotted(cfg, k, v)
        set_dotted(cfg, "train.seed", seed)
        try:
            run_cfg = parse(copy.deepcopy(cfg))
            resolved = dataclasses.asdict(run_cfg)
            reads = ("data",) if kind == "train" else ("model", "facts", "text")
            data_key = json.dumps({k: resolved[k] for k in reads}, sort_keys=True, default=str)
            if data_key not in digests:
                digests[data_key] = digest_inputs(run_cfg)
        except LegibilityError as e:
            raise LegibilityError(f"variant {vname!r} with {overrides}: {e}") from e
        # the content of the files the data reads (text folder, PARAREL; a finetune's base weights too) is part
        # of the trial: a rewritten text file gives new trials, not the old ones back (synthetic data alone
        # adds nothing, so the ids of such sweeps are unchanged)
        inputs = {"inputs": portable_digests(digests[data_key])} if digests[data_key] else {}
        # with the files' content in the id, where they lie is not: a relative and an absolute path to the
        # same data (or data moved) give the same trial
        keyed = _without_paths(resolved, _path_fields(kind)) if inputs else resolved
        hashed = {"run": keyed, "score": score, **inputs, **({"kind": kind} if kind != "train" else {})}
        tid = trial_id(vname, hashed, seed)
        trials.append(Trial(tid, vname, seed, overrides, cfg, kind))
    return SweepConfig(str(data.get("name", "sweep")), base, trials, score, executor, kind)


def load_sweep(path: str | os.PathLike) -> SweepConfig:
    from legibility.training.run_config import read_yaml

    return parse_sweep(read_yaml(path, "sweep config", "configs/sweeps/"), Path(path).parent)
