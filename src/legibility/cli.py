"""Command line: a thin layer over the library. `legibility --help` lists the commands.

It parses and checks the arguments (every number against its range), checks the input files and the
model name, all before torch is imported, then calls the library (:func:`legibility.run.run`) and prints.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from legibility.arguments import number
from legibility.devices import add_device_args, device_name
from legibility.errors import LegibilityError
from legibility.run import MAX_CONTROLS, MAX_STEPS

# Commands whose parsers need no other package: parsing them imports nothing heavy.
LIGHT_COMMANDS = {"neurons", "score", "sweep", "report", "results", "methods", "metrics", "download-pararel"}


class _Parser(argparse.ArgumentParser):
    """An argument error is one line (the usage is one `--help` away)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


_number = number
POSITIVE = number(int, 1)
NON_NEGATIVE = number(int, 0)
# Upper bounds of the numbers that size memory or work: a typo (an extra zero or three) is refused at parse
# time instead of being allocated. Generous for real use; see docs/reliability.md.
MAX_WORKERS = 1024
SEED = number(int, 0, 2**32 - 1)


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
    p.add_argument(
        "--limit", type=number(int, 1, 10**6), default=None, help="at most this many known facts per relation"
    )
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
        "--steps",
        type=number(int, 1, MAX_STEPS),
        default=20,
        help=f"integrated-gradients steps m, 1 to {MAX_STEPS} (default: %(default)s)",
    )
    p.add_argument(
        "--threshold",
        type=_number(float, 0.0, 1.0, open_low=True, open_high=True),
        default=0.2,
        help="coarse threshold t in (0, 1) (default: %(default)s)",
    )
    p.add_argument(
        "--share",
        type=_number(float, 0.0, 1.0, open_high=True),
        default=0.5,
        help="refining share p in [0, 1) (default: %(default)s)",
    )
    p.add_argument("--adaptive", action="store_true", help="adapt p per fact to keep 2-5 neurons")
    p.add_argument(
        "--min-prompts",
        type=number(int, 1, 1000),
        default=2,
        help="minimum usable prompts per fact (default: %(default)s)",
    )
    p.add_argument("--multi-token", action="store_true", help="allow multi-token targets (gold continuation)")
    p.add_argument(
        "--known-top-k",
        type=number(int, 1, 10**7),
        default=1,
        help="a fact is known if its target is in the top k ...",
    )
    p.add_argument(
        "--known-share",
        type=_number(float, 0.0, 1.0),
        default=0.5,
        help="... for at least this share of its prompts",
    )
    p.add_argument(
        "--holdout",
        type=_number(float, 0.0, 1.0, open_high=True),
        default=0.5,
        help="share of each fact's prompts held out from choosing its neurons; effects are measured on them "
        "(0: choose and measure on every prompt, the paper's in-sample protocol; default %(default)s)",
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--force",
        action="store_true",
        help="--out holds a run with other settings or inputs: recompute it from scratch",
    )
    p.add_argument(
        "--ray-address", default=None, help="shard facts on Ray ('auto', 'ray://host:10001', 'local')"
    )
    p.add_argument(
        "--workers",
        type=number(int, 1, MAX_WORKERS),
        default=None,
        help="with --ray-address: Ray workers (default: one per GPU, else per CPU); without: processes on this "
        "machine, each loading the model (default: this process)",
    )
    add_device_args(p)


def build_parser(light: bool = False) -> argparse.ArgumentParser:
    """The CLI's parser; ``light`` leaves out the commands whose parsers import torch (train, editing)."""
    parser = _Parser(prog="legibility", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("neurons", help="find the knowledge neurons of known facts")
    _fact_args(p)
    p = sub.add_parser(
        "score", help="knowledge neurons + suppression/amplification with controls -> scorecard"
    )
    _fact_args(p)
    p.add_argument(
        "--controls",
        type=number(int, 0, MAX_CONTROLS),
        default=3,
        help="control facts per collateral tier (same relation, same object, same subject, other relation) "
        "that each fact's neurons are tested on",
    )
    p.add_argument(
        "--metrics",
        default="default",
        help="independent metrics to add to the scorecard: comma-separated names, 'default' (the cheap ones "
        "marked so in `legibility metrics`), 'all' or 'none' (default: %(default)s)",
    )
    if not light:
        from legibility.training import command as train_command

        train_command.add_parser(sub)
        from legibility.editing import command as editing_command

        editing_command.add_parsers(sub)
        from legibility import interop_command

        interop_command.add_parser(sub)
        from legibility.probes import command as probe_command

        probe_command.add_parser(sub)
    p = sub.add_parser("sweep", help="train and score many models (grid/random over configs and seeds)")
    p.add_argument("config", help="sweep YAML (see configs/sweeps/)")
    p.add_argument(
        "--out", required=True, help="sweep directory; rerunning with the same one skips finished trials"
    )
    p.add_argument(
        "--workers",
        type=number(int, 1, MAX_WORKERS),
        default=None,
        help="parallel trials: local processes, or Ray workers with --ray-address",
    )
    p.add_argument("--ray-address", default=None, help="run on Ray ('auto', 'ray://host:10001', or 'local')")
    p.add_argument(
        "--device",
        type=device_name,
        default=None,
        help="where trials train and are scored: auto, cpu, cuda, cuda:N or mps (default: the sweep's "
        "executor.device, else auto); not part of the trial ids",
    )
    p.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser(
        "report",
        help="HTML report of a sweep directory (frontier, metric agreement, trial cards) "
        "or of a `score` directory (scorecard, figures, neuron cards)",
    )
    p.add_argument("dir", help="sweep or score directory")
    p.add_argument(
        "--baseline",
        default=None,
        help="sweeps: the variant every other is compared with, paired by grid point and seed, in study.md "
        "(default: 'none' when the sweep has it)",
    )
    p.add_argument(
        "--hypotheses",
        default=None,
        help="sweeps: a study plan (YAML: hypotheses, width, goal, alpha) checked in study.md, e.g. "
        "configs/sweeps/study-hypotheses.yaml (default: hypotheses.yaml in the sweep directory, if any)",
    )
    p.add_argument(
        "--cards",
        type=number(int, 0, 1000),
        default=3,
        help="score directories: facts whose neurons get cards",
    )

    p = sub.add_parser("results", help="query a sweep's results store with SQL (tables: trials, trials_flat)")
    p.add_argument("dir", help="sweep directory")
    p.add_argument(
        "--sql",
        default="SELECT variant, seed, status, suppressability, fact_accuracy, val_loss FROM trials_flat",
    )
    p = sub.add_parser("methods", help="list attribution methods")
    p = sub.add_parser(
        "metrics", help="list the scorecard's and the independent metrics with their definitions"
    )
    p = sub.add_parser("download-pararel", help="fetch PARAREL from upstream into the cache (needs network)")
    p.add_argument("--to", default=None, help="target folder (default: the cache)")
    return parser


def run_job(args: argparse.Namespace, score: bool) -> int:
    """`neurons` / `score`: check everything cheap first (no torch yet), then run and print."""
    from legibility.run import FactSource, check_model_name, check_writable, load_inputs

    check_writable(args.out)
    relations = tuple(r.strip() for r in args.relations.split(",") if r.strip()) if args.relations else None
    inputs = load_inputs(FactSource(args.facts, relations, args.data_dir))
    check_model_name(args.model)
    from legibility.sharding import shard_config

    shard = shard_config(args.ray_address, args.workers)
    metric_names = _metric_names(args) if score else []

    from legibility.attribution import AttributionConfig
    from legibility.metrics.effects import EffectConfig
    from legibility.neurons import NeuronConfig
    from legibility.run import KnownConfig, RunSettings, run

    settings = RunSettings(
        model=args.model,
        site=args.site,
        method=args.method,
        attribution=AttributionConfig(steps=args.steps),
        neurons=NeuronConfig(
            threshold=args.threshold, share=args.share, min_prompts=args.min_prompts, adaptive=args.adaptive
        ),
        known=KnownConfig(top_k=args.known_top_k, min_share=args.known_share, limit=args.limit),
        effects=EffectConfig(controls=args.controls) if score else None,
        metrics=tuple(metric_names),
        multi_token=args.multi_token,
        seed=args.seed,
        dtype=args.dtype,
        holdout=args.holdout,
    )
    result = run(
        settings,
        args.out,
        source=inputs,
        force=args.force,
        progress=not args.no_progress,
        shard=shard,
        device=args.device,
        log=print,
    )
    if not result.facts:
        raise LegibilityError(
            "the model knows none of the selected facts; try other --relations, a larger --limit, "
            "or a looser --known-top-k/--known-share"
        )
    from legibility.report.figures import draw_run_figures

    draw_run_figures(
        result.out_dir, result.neuron_records, result.scorecard["metrics"], result.n_layers, args.model
    )
    _print_card(result.scorecard["metrics"])
    print(
        f"\nresults in {result.out_dir}/: neurons.jsonl, scorecard.json, layers.png"
        + (", effects.jsonl, suppression.png" if score else "")
    )
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:

    from legibility.sweeps import load_sweep, run_sweep

    cfg = load_sweep(args.config)
    from legibility.sharding import executor_config

    cfg.executor = executor_config(args.ray_address, args.workers, args.device, base=cfg.executor)
    counts = run_sweep(cfg, args.out, retry_failed=args.retry_failed, progress=not args.no_progress)
    print(f"sweep {cfg.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print(f"results in {args.out}/results.duckdb; `legibility report {args.out}` draws the frontier")
    return 0 if not counts.get("failed") else 1


def _metric_names(args: argparse.Namespace) -> list[str]:
    """Parse and check --metrics before any expensive work."""
    from legibility.metrics.independent import INDEPENDENT, default_metrics

    raw = [n.strip() for n in args.metrics.split(",") if n.strip()]
    if raw in ([], ["none"]):
        return []
    if raw == ["all"]:
        return INDEPENDENT.names()
    if raw == ["default"]:
        return default_metrics()
    for name in raw:
        INDEPENDENT[name]  # unknown name: LegibilityError listing the known ones
    return raw


def _print_card(metrics: dict[str, dict]) -> None:
    from legibility.metrics.table import names

    print(f"\n{'metric':34s} {'value':>9s}  {'95% CI':>21s}  {'n':>5s}")
    for k in [*names("card"), *sorted(k for k in metrics if k.startswith("independent."))]:
        if k in metrics:
            m = metrics[k]
            if not m["n"]:  # e.g. no kept subject has facts in two relations: not measurable, not 0
                print(f"{k:34s} {'not available':>33s}  {m['n']:5d}")
                continue
            print(f"{k:34s} {m['value']:9.3f}  [{m['ci_low']:8.3f}, {m['ci_high']:8.3f}]  {m['n']:5d}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(light=command in LIGHT_COMMANDS).parse_args(argv)
    except SystemExit as e:  # argument errors (one line) and --help
        return e.code if isinstance(e.code, int) else 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line each, like the errors
        return _dispatch(args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=file or sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command in ("neurons", "score"):
            return run_job(args, score=args.command == "score")
        if args.command in ("train", "finetune"):
            return args.run(args)
        if args.command in ("probe", "probe-truth", "probe-checkpoints"):
            from legibility.probes import command as probe_command

            return probe_command.run(args)
        if getattr(args, "editing_command", None):
            from legibility.editing import command as editing_command

            return editing_command.run(args)

        if args.command == "sweep":
            return run_sweep_command(args)
        from legibility import interop_command

        if args.command in interop_command.COMMANDS:
            return interop_command.run(args)
        if args.command == "report":
            page = _report(Path(args.dir), args.cards, args.baseline, args.hypotheses)
            print(f"report: {page}")
            return 0
        if args.command == "results":
            from legibility.sweeps.results import ResultsStore

            db = Path(args.dir) / "results.duckdb"
            if not db.exists():
                raise LegibilityError(f"{args.dir} has no results.duckdb")
            with ResultsStore(db, read_only=True) as store:
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
            from legibility.metrics.table import info as metric_info
            from legibility.metrics.table import names

            print("Scorecard (the card's entries; `scorecard.json` holds more, see docs/metrics.md):\n")
            for name in names("card"):
                entry = metric_info(name)
                print(f"{name} ({entry.direction} is more interpretable)\n  {entry.definition}\n")
            print("Independent metrics (--metrics):\n")
            for name in INDEPENDENT:
                spec = INDEPENDENT[name]
                default = ", computed by default" if spec.default else ""
                print(
                    f"{name} ({spec.direction} is more interpretable; CI over {spec.unit}{default})\n"
                    f"  {spec.definition}\n"
                )
            return 0
        if args.command == "methods":
            from legibility.attribution import METHODS

            for name in METHODS:
                method = METHODS[name]
                print(f"{name:16s} {'exact' if method.exact else 'approximate':12s} {method.description}")
            return 0
        if args.command == "download-pararel":
            from legibility.facts.pararel import download_pararel

            print(f"PARAREL in {download_pararel(args.to)}")
            return 0
    except LegibilityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from legibility.store import is_disk_error

        if not is_disk_error(e):
            raise
        print(f"error: {e.filename or ''}: {e.strerror}; free space or choose another --out", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 1


def _report(path: Path, cards: int, baseline: str | None = None, hypotheses: str | None = None) -> Path:
    """A sweep directory gets the sweep report; anything else must be a finished run."""
    if not path.is_dir():  # before the heavy imports
        raise LegibilityError(
            f"{path} is not a directory; give a `score`, `neurons` or `sweep` output folder"
        )
    from legibility.store import run_lock

    if (path / "results.duckdb").exists() or (path / "sweep.yaml").exists():
        from legibility.report.html import write_report
        from legibility.report.study import load_plan

        plan_file = Path(hypotheses) if hypotheses else path / "hypotheses.yaml"
        plan = load_plan(plan_file) if hypotheses or plan_file.exists() else None
        with run_lock(path):  # not while a sweep writes its store
            return write_report(path, baseline=baseline, plan=plan)
    probe = _probe_kind(path)
    if probe is not None:
        from legibility.report.probes import write_probe_report

        if not (path / "results.json").exists():
            raise LegibilityError(
                f"{path} holds an unfinished {probe} probe run (no results.json yet); rerun its probe command "
                "to finish it"
            )
        with run_lock(path):
            return write_probe_report(path)
    from legibility.report.run_report import write_run_report

    with run_lock(path):  # not while a run writes its files
        if cards:
            from legibility.editing.memory import write_run_cards

            write_run_cards(path, cards)
        return write_run_report(path)


def _probe_kind(path: Path) -> str | None:
    """``concept``, ``truth`` or ``checkpoints`` when ``path`` is a probe command's folder, else None."""
    import json

    for name in ("run.json", "results.json"):
        try:
            kind = json.loads((path / name).read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            continue
        if kind in ("concept", "truth", "checkpoints"):
            return str(kind)
    return None


if __name__ == "__main__":
    sys.exit(main())
