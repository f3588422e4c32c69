"""Concepts emerging during training: score every kept checkpoint of a training run.

For each ``<run>/checkpoints/step-*`` (weights read with safetensors into the run's final model
architecture): concept probes on the run's facts (relation and object labels, every layer, residual stream
and FFN sites, last token of the prompt up to the object; the number recorded is the test-fact accuracy at
the site and layer with the best validation accuracy, see :mod:`legibility.probes.concept`), top-1 fact accuracy over all templates (training
and held-out), and, unless switched off, suppressability and the rest of the scorecard through
:func:`legibility.training.experiment.score_model`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_model as load_weights

from legibility.errors import LegibilityError
from legibility.facts.render import render
from legibility.forward import predict
from legibility.metrics.table import info, names
from legibility.models.identity import identity_of, sha256_file
from legibility.models.loading import load_model
from legibility.probes.activations import extract
from legibility.probes.concept import ProbeSettings, probe_layers
from legibility.probes.data import encode_labels, pararel_examples
from legibility.probes.figures import checkpoints_figure
from legibility.probes.selection import fixed_layer
from legibility.store import atomic_write_json, check_settings, check_writable, run_lock
from legibility.training.config import RunConfig
from legibility.training.experiment import ScoreConfig, all_template_facts, score_model
from legibility.training.run_config import parse_run_config


@dataclass(frozen=True)
class CheckpointScoring:
    """How checkpoints are scored."""

    probe: ProbeSettings = field(default_factory=ProbeSettings)
    suppressability: bool = True  # run the scorecard (integrated gradients; the slow part)
    score_facts: int = 30  # known facts scored for suppressability
    every: int = 1  # score only checkpoints whose step is a multiple of this


def checkpoints_of(run_dir: Path) -> list[Path]:
    found = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "model.safetensors").exists())
    if not found:
        raise LegibilityError(
            f"{run_dir} has no checkpoints (checkpoints/step-*); train with train.keep_checkpoints > 1"
        )
    if not (run_dir / "model" / "config.json").exists():
        raise LegibilityError(f"{run_dir}/model is missing: score checkpoints of a finished training run")
    return found


def score_checkpoints(
    run_dir: str | Path, out_dir: str | Path, cfg: CheckpointScoring | None = None, device: str | None = None
) -> list[dict]:
    """One record per checkpoint (``step``, ``probe.<task>`` at the layer chosen on validation, per-layer accuracies,
    ``fact_accuracy``, scorecard metrics); finished checkpoints are read back on a rerun."""
    run, out = Path(run_dir), check_writable(out_dir)
    c = cfg or CheckpointScoring()
    found = checkpoints_of(run)
    try:
        run_cfg = parse_run_config(json.loads((run / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:
        raise LegibilityError(f"{run / 'config.json'} is missing or not readable JSON ({e})") from None
    # keyed by the training run's content (its config, data and final model), not only its path: a run
    # retrained into the same folder is scored again
    settings = {
        "kind": "checkpoints",
        "run": str(run.resolve()),
        **asdict(c),
        "run_config_sha256": sha256_file(run / "config.json"),
        **{f"model.{k}": v for k, v in (identity_of(str(run / "model")) or {}).items()},
    }
    with run_lock(out):
        check_settings(out, json.loads(json.dumps(settings)))
        return _score_checkpoints(run, out, c, found, run_cfg, device)


def _score_checkpoints(
    run: Path, out: Path, c: CheckpointScoring, found: list[Path], run_cfg: RunConfig, device: str | None
) -> list[dict]:
    facts = all_template_facts(run_cfg)
    lm = load_model(str(run / "model"), device=device)
    lm.add_special_tokens = False
    records = []
    for ckpt in found:
        step = int(ckpt.name.split("-")[1])
        if step % c.every:
            continue
        path = out / f"{ckpt.name}.json"
        weights = sha256_file(ckpt / "model.safetensors", cached=True)
        if path.exists():
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                rec = {}
            if rec.get("weights_sha256", weights) == weights:  # records from before the key: kept
                records.append(rec)
                continue
        load_weights(lm.model, str(ckpt / "model.safetensors"))
        rec = {"step": step, "weights_sha256": weights}
        for task in ("relation", "object"):
            ex = pararel_examples(facts, task)
            labels, _ = encode_labels(ex)
            feats = extract(lm, [e.text for e in ex])
            per_site, val = {}, {}
            for site, x in feats.items():
                rows = probe_layers(x, labels, [e.group for e in ex], [e.type for e in ex], c.probe)
                per_site[site] = [r["accuracy"].value for r in rows]
                val[site] = [r["validation"].value for r in rows]
                rec[f"probe.{task}.{site}.control"] = [r["control"].value for r in rows]
                rec[f"probe.{task}.{site}.validation"] = val[site]
            # the (site, layer) with the best validation accuracy; its test accuracy is the record's number
            site, layer = max(
                ((s, i) for s in val for i in range(len(val[s]))), key=lambda k: val[k[0]][k[1]]
            )
            rec[f"probe.{task}.layers"] = per_site
            rec[f"probe.{task}.chosen"] = f"{site}:{layer}"
            rec[f"probe.{task}"] = per_site[site][layer]
            rec[f"probe.{task}.control"] = rec[f"probe.{task}.{site}.control"][layer]
            fixed = fixed_layer(len(per_site["resid"]), c.probe.fixed_depth)
            rec[f"probe.{task}.fixed"] = per_site["resid"][fixed]
        rendered = [render(lm, f) for f in facts]
        queries = [q for r in rendered for p in r.prompts for q in p.queries]
        pred = predict(lm, queries)
        rec["fact_accuracy"] = float((pred.rank == 0).float().mean())
        if c.suppressability:
            tmp = out / ".model"
            if tmp.exists():
                shutil.rmtree(tmp)
            lm.model.save_pretrained(tmp)  # type: ignore[operator]
            lm.tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
            scored = score_model(tmp, facts, out / ckpt.name, ScoreConfig(facts=c.score_facts), device=device)
            rec["known_facts"] = scored["known_facts"]
            for k in (n for n in names("checkpoint") if info(n).source == "scorecard"):
                m = scored["metrics"].get(k)
                rec[k] = m["value"] if m else float("nan")
            shutil.rmtree(tmp)
        atomic_write_json(path, rec)
        records.append(rec)
    atomic_write_json(out / "checkpoints.json", records)
    return records


def compare_figure(runs: dict[str, list[dict]], path: Path) -> Path:
    return checkpoints_figure(runs, path, "Concepts, facts and suppressability over training")
