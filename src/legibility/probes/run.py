"""Probe runs: concept probes (``legibility probe``) and the truth study (``legibility probe-truth``, in
:mod:`legibility.probes.truth_study`).

A run directory holds ``run.json`` (every setting that changes a result; a rerun with other settings is
refused), ``features/`` (cached activations, safetensors per site and layer), ``results.json`` and figures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from legibility.errors import LegibilityError
from legibility.facts.pararel import load_pararel
from legibility.metrics.stats import Estimate
from legibility.models.loading import LoadedModel
from legibility.probes.activations import cached_features
from legibility.probes.concept import ProbeSettings, choose, majority_share, probe_layers
from legibility.probes.data import Example, encode_labels, load_jsonl_examples, pararel_examples
from legibility.probes.figures import accuracy_figure
from legibility.probes.keys import check_folds, check_lengths, data_key, load_probe_model, model_key
from legibility.probes.truth_study import TruthConfig, run_truth
from legibility.store import (
    atomic_write_json,
    check_files,
    check_settings,
    check_writable,
    clean_temp,
    run_lock,
)

__all__ = ["ConceptConfig", "TruthConfig", "concept_examples", "run_concept", "run_truth"]


def _est(e: Estimate) -> dict:
    return e.to_dict()


# ----------------------------------------------------------------------------------------- concept probes


@dataclass(frozen=True)
class ConceptConfig:
    """A concept-probe run."""

    model: str = "smollm2-135m"  # embedded name, local directory or HF id
    source: str = "pararel"  # "pararel" or a JSONL file of labelled texts
    task: str = "relation"  # PARAREL labels: "relation" or "object"
    relations: tuple[str, ...] = ("P17", "P19", "P36", "P37", "P101", "P103")  # PARAREL relations read
    facts: int = 20  # facts per relation
    position: str = "last"  # "last" token or last "subject" token
    sites: tuple[str, ...] = ("resid", "ffn")
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    dtype: str = "float32"  # the model's dtype (keyed: another dtype reads other activations)


def concept_examples(cfg: ConceptConfig) -> list[Example]:
    if cfg.source == "pararel":
        facts = load_pararel(relations=list(cfg.relations), limit=cfg.facts, seed=cfg.probe.seed)
        return pararel_examples(facts, cfg.task)
    return load_jsonl_examples(cfg.source)


def run_concept(
    cfg: ConceptConfig, out_dir: str | Path, lm: LoadedModel | None = None, device: str | None = None
) -> dict:
    """Probe every layer and site; writes run.json, features/, results.json, accuracy.png. The folder is
    held with :func:`legibility.store.run_lock` while it runs; ``device`` is where ``cfg.model`` is loaded
    (not keyed)."""
    out = check_writable(out_dir)
    check_files(out, ("run.json", "results.json", "accuracy.png"))
    model, lm = model_key(cfg.model, lm, device, cfg.dtype)
    settings = {"kind": "concept", **asdict(cfg), **model, **data_key(cfg.source, cfg.relations)}
    with run_lock(out):
        clean_temp(out, "features")
        check_settings(out, json.loads(json.dumps(settings)))
        return _run_concept(cfg, out, lm, device)


def _run_concept(cfg: ConceptConfig, out: Path, lm: LoadedModel | None, device: str | None) -> dict:
    examples = concept_examples(cfg)
    if not examples:
        raise LegibilityError("no labelled examples to probe (check --relations / --facts / the JSONL file)")
    labels, names = encode_labels(examples)
    if len(names) < 2:
        raise LegibilityError("probing needs at least two labels with enough examples")
    check_folds([e.group for e in examples], labels, names, cfg.probe.folds)
    lm = lm or load_probe_model(cfg.model, device, cfg.dtype)
    check_lengths(lm, [e.text for e in examples], "text", "shorten the texts of the --data file")
    feats = cached_features(
        lm,
        out / "features",
        [e.text for e in examples],
        [e.subject for e in examples],
        cfg.position,
        cfg.sites,
    )
    groups, types = [e.group for e in examples], [e.type or e.group for e in examples]
    per_site = {s: probe_layers(feats[s], labels, groups, types, cfg.probe) for s in cfg.sites}
    layers = {s: [{k: _est(v) for k, v in r.items()} for r in rows] for s, rows in per_site.items()}
    picked = {s: choose(rows, cfg.probe.fixed_depth) for s, rows in per_site.items()}
    headline = {
        s: {
            "chosen_layer": picked[s]["chosen"],
            "validation": layers[s][picked[s]["chosen"]]["validation"],
            **{k: layers[s][picked[s]["chosen"]][k] for k in ("accuracy", "control", "selectivity")},
            "fixed_layer": picked[s]["fixed"],
            "fixed": {k: layers[s][picked[s]["fixed"]][k] for k in ("accuracy", "control", "selectivity")},
        }
        for s in cfg.sites
    }
    results = {
        "kind": "concept",
        "settings": json.loads(json.dumps(asdict(cfg))),
        "n_examples": len(examples),
        "n_groups": len(set(groups)),
        "n_test_groups": layers[cfg.sites[0]][0]["accuracy"]["n"],
        "labels": names,
        "majority": majority_share(labels),
        "layers": layers,
        "headline": headline,
    }
    title = f"{cfg.model}: probing {cfg.task if cfg.source == 'pararel' else Path(cfg.source).name}"
    accuracy_figure(layers, headline, results["majority"], out / "accuracy.png", title)
    atomic_write_json(out / "results.json", results)
    return results
