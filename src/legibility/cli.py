"""Command line: a thin layer over the library. `legibility --help` lists the commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from legibility.errors import LegibilityError
from legibility.metrics.scorecard import HEADLINE

# Cheap independent metrics computed by default (no extra attribution runs).
DEFAULT_METRICS = "concentration,overlap,sparsity,polysemanticity"


def _fact_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="embedded name, local directory or HF id (default: %(default)s)",
    )
    p.add_argument(
        "--site",
        default="ffn",
        choices=["ffn", "eleuther"],
        help="neuron sites (eleuther: GPT-2 pre-activation)",
    )
    p.add_argument(
        "--relations", default=None, help="comma-separated PARAREL relations, e.g. P36,P103 (default: all)"
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many known facts per relation")
    p.add_argument("--facts", default=None, help="JSONL file of your own facts instead of PARAREL")
    p.add_argument(
        "--data-dir",
        default=None,
        help="PARAREL folder (default: $LEGIBILITY_PARAREL or ../shared/data/pararel)",
    )
    p.add_argument("--out", required=True, help="output directory; rerunning with the same one resumes")
    p.add_argument(
        "--method", default="ig", help="attribution method (default: %(default)s; see `legibility methods`)"
    )
    p.add_argument(
        "--steps", type=int, default=20, help="integrated-gradients steps m (default: %(default)s)"
    )
    p.add_argument("--threshold", type=float, default=0.2, help="coarse threshold t (default: %(default)s)")
    p.add_argument("--share", type=float, default=0.5, help="refining share p (default: %(default)s)")
    p.add_argument("--adaptive", action="store_true", help="adapt p per fact to keep 2-5 neurons")
    p.add_argument(
        "--min-prompts", type=int, default=2, help="minimum usable prompts per fact (default: %(default)s)"
    )
    p.add_argument("--multi-token", action="store_true", help="allow multi-token targets (gold continuation)")
    p.add_argument(
        "--known-top-k", type=int, default=1, help="a fact is known if its target is in the top k ..."
    )
    p.add_argument(
        "--known-share", type=float, default=0.5, help="... for at least this share of its prompts"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="legibility", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("neurons", help="find the knowledge neurons of known facts")
    _fact_args(p)
    p = sub.add_parser(
        "score", help="knowledge neurons + suppression/amplification with controls -> scorecard"
    )
    _fact_args(p)
    p.add_argument(
        "--n-same", type=int, default=3, help="same-relation facts each fact's neurons are tested on"
    )
    p.add_argument(
        "--n-other", type=int, default=3, help="other-relation facts each fact's neurons are tested on"
    )
    p.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help="independent metrics to add to the scorecard: comma-separated names, 'all' or 'none' "
        "(default: %(default)s; see `legibility metrics`)",
    )
    from legibility.training import command as train_command

    train_command.add_parser(sub)
    from legibility.editing import command as editing_command

    editing_command.add_parsers(sub)
    from legibility.probes import command as probe_command

    probe_command.add_parser(sub)
    p = sub.add_parser("sweep", help="train and score many models (grid/random over configs and seeds)")
    p.add_argument("config", help="sweep YAML (see configs/sweeps/)")
    p.add_argument(
        "--out", required=True, help="sweep directory; rerunning with the same one skips finished trials"
    )
    p.add_argument("--workers", type=int, default=None, help="local executor: parallel processes")
    p.add_argument("--ray-address", default=None, help="run on Ray ('auto', 'ray://host:10001', or 'local')")
    p.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser(
        "report",
        help="HTML report of a sweep directory (frontier, metric agreement, trial cards) "
        "or of a `score` directory (scorecard, figures, neuron cards)",
    )
    p.add_argument("dir", help="sweep or score directory")
    p.add_argument("--cards", type=int, default=3, help="score directories: facts whose neurons get cards")

    p = sub.add_parser("results", help="query a sweep's results store with SQL (tables: trials, trials_flat)")
    p.add_argument("dir", help="sweep directory")
    p.add_argument(
        "--sql",
        default="SELECT variant, seed, status, suppressability, fact_accuracy, val_loss FROM trials_flat",
    )
    p = sub.add_parser("methods", help="list attribution methods")
    p = sub.add_parser("metrics", help="list the independent metrics with their definitions")
    p = sub.add_parser("download-pararel", help="fetch PARAREL from upstream into the cache (needs network)")
    p.add_argument("--to", default=None, help="target folder (default: the cache)")
    return parser


def _load_facts(args: argparse.Namespace):
    from legibility.facts.jsonl import load_jsonl_facts
    from legibility.facts.pararel import load_pararel

    if args.facts:
        return load_jsonl_facts(args.facts)
    relations = [r.strip() for r in args.relations.split(",") if r.strip()] if args.relations else None
    return load_pararel(args.data_dir, relations)


def _check_user_facts(lm, facts, multi_token: bool) -> None:
    """User facts must be usable as given: say which one is not, rather than silently dropping it."""
    from legibility.facts.render import MULTI_TOKEN, render

    for f in facts:
        r = render(lm, f, multi_token)
        if not r.prompts:
            if MULTI_TOKEN in r.skipped:
                raise LegibilityError(
                    f"fact {f.id!r}: target {f.object!r} is not a single token for this model; "
                    "pass --multi-token or choose a single-token object"
                )
            raise LegibilityError(f"fact {f.id!r}: no prompt is usable ({', '.join(r.skipped)})")


def _validate(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise LegibilityError("--limit must be >= 1")
    if args.steps < 1:
        raise LegibilityError("--steps must be >= 1")
    if not 0.0 <= args.share < 1.0:
        raise LegibilityError("--share must be in [0, 1)")
    if not 0.0 < args.threshold < 1.0:
        raise LegibilityError("--threshold must be in (0, 1)")
    if args.min_prompts < 1:
        raise LegibilityError("--min-prompts must be >= 1")


def run_job(args: argparse.Namespace, score: bool) -> int:
    from legibility import pipeline
    from legibility.attribution import METHODS, AttributionConfig
    from legibility.facts.render import render
    from legibility.metrics.effects import EffectConfig
    from legibility.models.loading import load_model
    from legibility.neurons import NeuronConfig
    from legibility.report.figures import layers_figure, suppression_figure

    _validate(args)
    METHODS[args.method]  # unknown method: clear error before any work
    metric_names = _metric_names(args) if score else []
    facts = _load_facts(args)
    lm = load_model(args.model, site=args.site)
    if args.facts:
        _check_user_facts(lm, facts, args.multi_token)
    settings = {
        k: getattr(args, k, None)
        for k in (
            "model",
            "site",
            "relations",
            "limit",
            "facts",
            "method",
            "steps",
            "threshold",
            "share",
            "adaptive",
            "min_prompts",
            "multi_token",
            "known_top_k",
            "known_share",
            "seed",
        )
    }
    out = pipeline.prepare_run(args.out, settings)
    progress = not args.no_progress
    known = pipeline.KnownConfig(top_k=args.known_top_k, min_share=args.known_share, limit=args.limit)
    facts_json = out / "facts.json"
    if facts_json.exists():  # resume: the same selection, without re-running the model over candidates
        kept_ids = set(json.loads(facts_json.read_text())["facts"])
        kept = [render(lm, f, args.multi_token) for f in facts if f.id in kept_ids]
        report = json.loads(facts_json.read_text())["report"]
    else:
        selection = pipeline.select_known(
            lm, facts, known, args.min_prompts, args.multi_token, args.seed, progress
        )
        pipeline.save_selection(out, selection)
        kept, report = selection.kept, selection.report
    print(f"facts: {report['kept']} known of {report['examined']} examined; dropped: {report['dropped']}")
    if not kept:
        raise LegibilityError(
            "the model knows none of the selected facts; try other --relations, a larger --limit, "
            "or a looser --known-top-k/--known-share"
        )
    ncfg = NeuronConfig(
        threshold=args.threshold, share=args.share, min_prompts=args.min_prompts, adaptive=args.adaptive
    )
    acfg = AttributionConfig(steps=args.steps)
    records = pipeline.find_neurons(lm, kept, out, args.method, acfg, ncfg, progress)
    layers_figure(
        records,
        lm.sites.n_layers,
        out / "layers.png",
        f"{args.model}: layer distribution of knowledge neurons",
    )
    effects: list[dict] = []
    if score:
        ecfg = EffectConfig(n_same=args.n_same, n_other=args.n_other, seed=args.seed)
        effects = pipeline.measure_effects(lm, kept, records, out, ecfg, progress)
    extra = {}
    if metric_names:
        from legibility.metrics.independent import compute_metrics
        from legibility.metrics.spec import MetricContext

        ctx = MetricContext(lm=lm, facts=kept, neuron_records=records, effects=effects, seed=args.seed)
        extra = {k: v.to_dict() for k, v in compute_metrics(metric_names, ctx).items()}
    card = pipeline.write_scorecard(out, records, effects, settings, extra)
    if score:
        suppression_figure(
            card["metrics"], out / "suppression.png", f"{args.model}: knowledge neuron interventions"
        )
    _print_card(card["metrics"])
    print(
        f"\nresults in {out}/: neurons.jsonl, scorecard.json, layers.png"
        + (", effects.jsonl, suppression.png" if score else "")
    )
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
    import dataclasses

    from legibility.sweeps import load_sweep, run_sweep

    cfg = load_sweep(args.config)
    if args.ray_address:
        address = None if args.ray_address == "local" else args.ray_address
        cfg.executor = dataclasses.replace(cfg.executor, name="ray", address=address)
    if args.workers:
        cfg.executor = dataclasses.replace(cfg.executor, workers=args.workers)
    counts = run_sweep(cfg, args.out, retry_failed=args.retry_failed, progress=not args.no_progress)
    print(f"sweep {cfg.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print(f"results in {args.out}/results.duckdb; `legibility report {args.out}` draws the frontier")
    return 0 if not counts.get("failed") else 1


def _metric_names(args: argparse.Namespace) -> list[str]:
    """Parse and check --metrics before any expensive work."""
    from legibility.metrics.independent import INDEPENDENT

    raw = [n.strip() for n in args.metrics.split(",") if n.strip()]
    if raw in ([], ["none"]):
        return []
    if raw == ["all"]:
        return INDEPENDENT.names()
    for name in raw:
        INDEPENDENT[name]  # unknown name: LegibilityError listing the known ones
    return raw


def _print_card(metrics: dict[str, dict]) -> None:
    print(f"\n{'metric':34s} {'value':>9s}  {'95% CI':>21s}  {'n':>5s}")
    for k in [*HEADLINE, *sorted(k for k in metrics if k.startswith("independent."))]:
        if k in metrics:
            m = metrics[k]
            print(f"{k:34s} {m['value']:9.3f}  [{m['ci_low']:8.3f}, {m['ci_high']:8.3f}]  {m['n']:5d}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("neurons", "score"):
            return run_job(args, score=args.command == "score")
        if args.command == "train":
            return args.run(args)
        if args.command in ("probe", "probe-truth", "probe-checkpoints"):
            from legibility.probes import command as probe_command

            return probe_command.run(args)
        if getattr(args, "editing_command", None):
            from legibility.editing import command as editing_command

            return editing_command.run(args)

        if args.command == "sweep":
            return run_sweep_command(args)
        if args.command == "report":
            from legibility.report.html import write_report
            from legibility.report.run_report import write_run_report

            is_run = (Path(args.dir) / "scorecard.json").exists()
            page = write_run_report(args.dir, args.cards) if is_run else write_report(args.dir)
            print(f"report: {page}")
            return 0
        if args.command == "results":
            from legibility.sweeps.results import ResultsStore

            db = Path(args.dir) / "results.duckdb"
            if not db.exists():
                raise LegibilityError(f"{args.dir} has no results.duckdb")
            with ResultsStore(db) as store:
                cols, rows = store.query(args.sql)
            print("\t".join(cols))
            for row in rows:
                print(
                    "\t".join(
                        "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row
                    )
                )
            return 0
        if args.command == "metrics":
            from legibility.metrics.independent import INDEPENDENT

            for name in INDEPENDENT:
                spec = INDEPENDENT[name]
                print(
                    f"{name} ({spec.direction} is more interpretable; CI over {spec.unit})\n  {spec.definition}\n"
                )
            return 0
        if args.command == "methods":
            from legibility.attribution import METHODS

            for name in METHODS:
                info = METHODS[name]
                print(f"{name:16s} {'exact' if info.exact else 'approximate':12s} {info.description}")
            return 0
        if args.command == "download-pararel":
            from legibility.facts.pararel import download_pararel

            print(f"PARAREL in {download_pararel(args.to)}")
            return 0
    except LegibilityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
