"""Train -> score: compare training variants over seeds on the foundation's scorecard.

For each (variant, seed): train the run config (``train.seed`` and the world's seed stay as configured
unless ``vary_world`` is set; the seed changes initialization, batches and dropout), then score the final
model with the standard pipeline (known facts -> integrated-gradients knowledge neurons -> suppression
with random-neuron controls -> :func:`legibility.metrics.scorecard`) on the world's facts, prompted with
all their templates (training and held-out). Held-out fact accuracy comes from the trainer's last
evaluation. ``<out>/results.jsonl`` gets one line per run; finished runs are skipped on a rerun.

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
from legibility.metrics.table import info, names
from legibility.models.loading import load_model
from legibility.neurons import NeuronConfig
from legibility.run import KnownConfig, RunSettings, run
from legibility.training.config import RunConfig
from legibility.training.corpus import build_corpus
from legibility.training.run_config import load_run_config
from legibility.training.trainer import train


@dataclass(frozen=True)
class ScoreConfig:
    """How a trained model is scored."""

    facts: int = 40  # known facts scored (per relation at most facts // relations)
    ig_steps: int = 20  # integrated-gradients steps (paper: 20)
    threshold: float = 0.2  # coarse neuron threshold t
    share: float = 0.5  # refining share p


def all_template_facts(cfg: RunConfig) -> list[Fact]:
    """The run's facts with every template (training ones first, then the held-out ones)."""
    corpus = build_corpus(cfg.data)
    return [
        Fact(a.subject, a.relation, a.object, a.prompts + b.prompts, a.id)
        for a, b in zip(corpus.train_facts, corpus.eval_facts, strict=True)
    ]


def score_model(
    model_dir: str | Path,
    facts: Sequence[Fact],
    out_dir: str | Path,
    cfg: ScoreConfig,
    device: str | None = None,
) -> dict:
    """The scorecard metrics of a saved model on ``facts``: a :func:`legibility.run.run` into out_dir, keyed
    by the score settings, the facts and the model's weights (a rerun resumes; changed inputs recompute).
    ``device`` (default ``"auto"``) is where the model is loaded, in float32."""
    lm = load_model(str(model_dir), device=device)
    lm.add_special_tokens = False  # the trained word-level tokenizer has no special tokens to add
    n_rel = len({f.relation for f in facts})
    settings = RunSettings(
        model=str(model_dir),
        attribution=AttributionConfig(steps=cfg.ig_steps),
        neurons=NeuronConfig(threshold=cfg.threshold, share=cfg.share),
        known=KnownConfig(limit=max(cfg.facts // n_rel, 1)),
        effects=EffectConfig(),
    )
    # A model retrained into the same directory is a new input: recompute its score instead of refusing.
    result = run(settings, out_dir, facts=facts, lm=lm, force=True, progress=False)
    return {"known_facts": len(result.facts), "metrics": result.scorecard["metrics"]}


def trial_metrics() -> list[str]:
    """The scorecard metrics a training run's record keeps (the metric table's ``trial`` view)."""
    return [k for k in names("trial") if info(k).source == "scorecard"]


def _record(name: str, seed: int, run_dir: Path) -> dict:
    final = json.loads((run_dir / "model" / "final.json").read_text())
    card = json.loads((run_dir / "score" / "scorecard.json").read_text())["metrics"]
    known = json.loads((run_dir / "score" / "known.json").read_text())["known_facts"]
    rec = {
        "variant": name,
        "seed": seed,
        "val_loss": final.get("val_loss"),
        "held_out_fact_accuracy": final.get("fact_accuracy"),
        "known_facts": known,
        "device": final.get("device"),  # where it trained (runs from before devices were recorded: None)
    }
    rec.update(
        {k: card[k]["value"] if k in card else None for k in names("trial") if info(k).source == "scorecard"}
    )
    return rec


def run_experiment(
    configs: dict[str, RunConfig],
    seeds: Sequence[int],
    out_dir: str | Path,
    score: ScoreConfig | None = None,
    device: str | None = None,
) -> list[dict]:
    """Train and score every (variant, seed) not finished yet on ``device`` (default ``"auto"``); returns
    one record per run, also written to ``<out>/results.jsonl``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in seeds:
        for name, base in configs.items():
            run_dir = out / f"{name}-seed{seed}"
            if not (run_dir / "score" / "known.json").exists():
                cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
                train(cfg, run_dir, progress=False, device=device)
                scored = score_model(
                    run_dir / "model",
                    all_template_facts(cfg),
                    run_dir / "score",
                    score or ScoreConfig(),
                    device,
                )
                (run_dir / "score" / "known.json").write_text(
                    json.dumps({"known_facts": scored["known_facts"]})
                )
            records.append(_record(name, seed, run_dir))
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def summarize(records: Sequence[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """variant -> metric -> (mean, standard deviation over seeds, number of seeds)."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    keys = ["val_loss", "held_out_fact_accuracy", "known_facts", *trial_metrics()]
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
