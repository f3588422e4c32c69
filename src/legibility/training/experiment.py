"""Train -> score: compare training variants over seeds on the foundation's scorecard.

For each (variant, seed): train the run config (``train.seed`` and the world's seed stay as configured
unless ``vary_world`` is set; the seed changes initialization, batches and dropout), then score the final
model with the standard pipeline (known facts -> integrated-gradients knowledge neurons -> suppression
with random-neuron controls -> :func:`legibility.metrics.scorecard`) on the run's facts, prompted with
all their templates (training and held-out). Fact accuracy comes from the trainer's last evaluation.
``<out>/results.jsonl`` gets one line per run; finished runs are skipped on a rerun.

The facts are scored in two groups (``data.fact_split``), each its own scorecard run: the held-out facts,
which no objective saw, into ``<run>/score`` under the bare metric names (the claim), and the objective
facts into ``<run>/score_trained_facts`` under the same names with ``.trained_facts`` appended (in-sample).

    python -m legibility.training.experiment configs/world-gpt2.yaml configs/world-suppressability.yaml \
        --seeds 0 1 2 --out runs/experiment
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from legibility.attribution import AttributionConfig
from legibility.devices import device_name
from legibility.facts.types import Fact
from legibility.metrics.effects import EffectConfig
from legibility.metrics.independent import default_metrics
from legibility.metrics.table import TRAINED_FACTS, info, names
from legibility.models.loading import load_model
from legibility.neurons import NeuronConfig
from legibility.run import KnownConfig, RunSettings, run
from legibility.store import run_lock
from legibility.training.config import RunConfig
from legibility.training.corpus import build_corpus, split_facts
from legibility.training.run_config import load_run_config
from legibility.training.trainer import train


@dataclass(frozen=True)
class ScoreConfig:
    """How a trained model is scored."""

    facts: int = (
        40  # known facts scored per group (held-out, trained; per relation at most facts // relations)
    )
    ig_steps: int = 20  # integrated-gradients steps (paper: 20)
    threshold: float = 0.2  # coarse neuron threshold t
    share: float = 0.5  # refining share p
    independent: bool = True  # also the default independent metrics (computed by the same run)


def all_template_facts(cfg: RunConfig) -> list[Fact]:
    """The run's facts with every template (training ones first, then the held-out ones)."""
    corpus = build_corpus(cfg.data)
    return [
        Fact(a.subject, a.relation, a.object, a.prompts + b.prompts, a.id)
        for a, b in zip(corpus.train_facts, corpus.eval_facts, strict=True)
    ]


def fact_groups(cfg: RunConfig) -> dict[str, list[Fact]]:
    """Metric suffix -> facts with every template: ``""`` the held-out facts (no objective saw them),
    ``".trained_facts"`` the objective facts; each group in the corpus' fact order."""
    facts = all_template_facts(cfg)
    held = split_facts(facts, cfg.data.fact_split)  # the corpus' split: it depends on the facts only
    return {
        "": [f for f in facts if f.id in held],
        TRAINED_FACTS: [f for f in facts if f.id not in held],
    }


def score_dir(run_dir: str | Path, suffix: str) -> Path:
    """Where the scorecard run of one fact group lives: ``score`` (held-out facts), ``score_trained_facts``."""
    return Path(run_dir) / ("score" + suffix.replace(".", "_"))


def score_model(
    model_dir: str | Path,
    facts: Sequence[Fact],
    out_dir: str | Path,
    cfg: ScoreConfig,
    device: str | None = None,
    special_tokens: bool | None = False,
) -> dict:
    """The scorecard metrics of a saved model on ``facts``: a :func:`legibility.run.run` into out_dir, keyed
    by the score settings, the facts and the model's weights (a rerun resumes; changed inputs recompute).
    ``device`` (default ``"auto"``) is where the model is loaded, in float32. ``special_tokens``: whether
    prompts get the tokenizer's special tokens (False: the lab's word-level tokenizers have none; None: as
    :func:`legibility.load_model` decides for the architecture, e.g. for a finetuned pretrained model)."""
    lm = load_model(str(model_dir), device=device)
    if special_tokens is not None:
        lm.add_special_tokens = special_tokens
    n_rel = len({f.relation for f in facts})
    settings = RunSettings(
        model=str(model_dir),
        attribution=AttributionConfig(steps=cfg.ig_steps),
        neurons=NeuronConfig(threshold=cfg.threshold, share=cfg.share),
        known=KnownConfig(limit=max(cfg.facts // n_rel, 1)),
        effects=EffectConfig(),
        metrics=tuple(default_metrics()) if cfg.independent else (),
    )
    # A model retrained into the same directory is a new input: recompute its score instead of refusing.
    result = run(settings, out_dir, facts=facts, lm=lm, force=True, progress=False)
    return {"known_facts": len(result.facts), "metrics": result.scorecard["metrics"]}


def trial_metrics() -> list[str]:
    """The scorecard metrics a training run's record keeps (the metric table's ``trial`` view)."""
    return [k for k in names("trial") if info(k).source == "scorecard"]


def score_groups(
    model_dir: str | Path,
    cfg: RunConfig,
    run_dir: str | Path,
    score: ScoreConfig,
    device: str | None = None,
) -> dict:
    """Score held-out and objective facts apart (see the module doc): ``{"metrics": {name: estimate,
    name + ".trained_facts": estimate}, "known_facts": n, "known_facts.trained_facts": m}``."""
    metrics: dict = {}
    out: dict = {}
    for suffix, facts in fact_groups(cfg).items():
        scored = score_model(model_dir, facts, score_dir(run_dir, suffix), score, device)
        metrics.update({f"{k}{suffix}": v for k, v in scored["metrics"].items()})
        out[f"known_facts{suffix}"] = scored["known_facts"]
    return {"metrics": metrics, **out}


def _record(name: str, seed: int, run_dir: Path) -> dict:
    final = json.loads((run_dir / "model" / "final.json").read_text())
    known = json.loads((run_dir / "score" / "known.json").read_text())
    rec = {
        "variant": name,
        "seed": seed,
        "val_loss": final.get("val_loss"),
        "device": final.get("device"),  # where it trained (runs from before devices were recorded: None)
    }
    for suffix in ("", TRAINED_FACTS):
        card = json.loads((score_dir(run_dir, suffix) / "scorecard.json").read_text())["metrics"]
        rec[f"held_out_fact_accuracy{suffix}"] = final.get(f"fact_accuracy{suffix}")
        rec[f"known_facts{suffix}"] = known.get(f"known_facts{suffix}")
        rec.update({f"{k}{suffix}": card[k]["value"] if k in card else None for k in trial_metrics()})
    return rec


def run_experiment(
    configs: dict[str, RunConfig],
    seeds: Sequence[int],
    out_dir: str | Path,
    score: ScoreConfig | None = None,
    device: str | None = None,
) -> list[dict]:
    """Train and score every (variant, seed) not finished yet on ``device`` (default ``"auto"``); returns
    one record per run, also written to ``<out>/results.jsonl``. The folder is locked while it runs."""
    with run_lock(out_dir) as lock:
        return _run_experiment(configs, seeds, lock.parent, score, device)


def _run_experiment(
    configs: dict[str, RunConfig],
    seeds: Sequence[int],
    out: Path,
    score: ScoreConfig | None,
    device: str | None,
) -> list[dict]:
    records = []
    for seed in seeds:
        for name, base in configs.items():
            run_dir = out / f"{name}-seed{seed}"
            if not (run_dir / "score" / "known.json").exists():
                cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
                train(cfg, run_dir, progress=False, device=device)
                scored = score_groups(run_dir / "model", cfg, run_dir, score or ScoreConfig(), device)
                known = {k: v for k, v in scored.items() if k.startswith("known_facts")}
                (run_dir / "score" / "known.json").write_text(json.dumps(known))
            records.append(_record(name, seed, run_dir))
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def summarize(records: Sequence[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """variant -> metric -> (mean, standard deviation over seeds, number of seeds)."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    keys = ["val_loss"] + [
        f"{k}{suffix}"
        for suffix in ("", TRAINED_FACTS)
        for k in ("held_out_fact_accuracy", "known_facts", *trial_metrics())
    ]
    for variant in dict.fromkeys(r["variant"] for r in records):
        rows = [r for r in records if r["variant"] == variant]
        out[variant] = {}
        for k in keys:
            vals = [float(r[k]) for r in rows if r.get(k) is not None]
            if vals:
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                out[variant][k] = (statistics.fmean(vals), sd, len(vals))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="run configs; each file's stem names a variant")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", required=True)
    ap.add_argument("--facts", type=int, default=ScoreConfig.facts)
    ap.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    args = ap.parse_args(argv)
    configs = {Path(c).stem: load_run_config(c) for c in args.configs}
    records = run_experiment(configs, args.seeds, args.out, ScoreConfig(facts=args.facts), args.device)
    summary = summarize(records)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    for variant, metrics in summary.items():
        for k, (mean, sd, n) in metrics.items():
            print(f"{variant:28s} {k:24s} {mean:8.3f} +- {sd:.3f} (n={n})")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
