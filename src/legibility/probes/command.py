"""CLI subcommands ``probe``, ``probe-truth`` and ``probe-checkpoints``: parse, call the library, print.

The main CLI registers them with :func:`add_parser` and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from legibility.arguments import number
from legibility.devices import add_device_args, device_name
from legibility.errors import LegibilityError
from legibility.store import atomic_write_json, check_files, check_writable, run_lock

COMMANDS = ("probe", "probe-truth", "probe-checkpoints")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _scales(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated finite steering scales."""
    scale = number(float, -1000.0, 1000.0)
    if text.strip().lower() == "none":
        return ()
    values = tuple(scale(t) for t in _csv(text))
    if not values:
        raise argparse.ArgumentTypeError("give at least one scale, e.g. 1,2,4, or none")
    return values


FACTS = number(int, 1, 10_000)  # facts per relation
SEED = number(int, 0, 2**32 - 1)


def _fmt(e: dict) -> str:
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def add_parser(subparsers) -> None:
    """Add the probe subcommands to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("probe", help="linear probes at every layer for a labelled concept")
    p.add_argument("--model", default="smollm2-135m", help="embedded model name, local directory or HF id")
    p.add_argument(
        "--data", default="pararel", help="'pararel' or a JSONL file of {text, label, group?, subject?}"
    )
    p.add_argument("--task", choices=("relation", "object"), default="relation", help="PARAREL label")
    p.add_argument("--relations", default="P17,P19,P36,P37,P101,P103", help="PARAREL relations")
    p.add_argument("--facts", type=FACTS, default=20, help="facts per relation")
    p.add_argument("--position", choices=("last", "subject"), default="last", help="token read")
    p.add_argument("--sites", default="resid,ffn", help="comma-separated: resid, ffn")
    p.add_argument(
        "--folds",
        type=number(int, 3, 100),
        default=3,
        help="k folds by fact/group (3 to 100): one of test facts, k-1 to choose the layer on by cross-validation",
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", required=True, help="run directory")
    add_device_args(p)

    p = subparsers.add_parser("probe-truth", help="truth probes, steering and the lying condition on PARAREL")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--relations", default="P17,P19,P36,P37,P101,P103,P1412,P30")
    p.add_argument("--held-out", default="P1412,P30", help="relations only tested on")
    p.add_argument(
        "--facts", type=number(int, 4, 10_000), default=20, help="facts kept per relation (at most)"
    )
    p.add_argument(
        "--scan",
        type=number(int, 4, 100_000),
        default=100,
        help="facts drawn per relation to find known ones in",
    )
    p.add_argument("--templates", type=number(int, 1, 100), default=2, help="templates per fact")
    p.add_argument(
        "--known",
        choices=("candidates", "top1", "all"),
        default="candidates",
        help="facts kept: the model ranks the true object first among the relation's objects (candidates), "
        "or over the whole vocabulary (top1), on at least half of the templates; or all facts",
    )
    p.add_argument(
        "--false-objects",
        choices=("balanced", "uniform"),
        default="balanced",
        help="balanced: every object is claimed as often falsely as truly (its identity carries no label); "
        "uniform: one false object drawn uniformly from the relation's others (the original construction)",
    )
    p.add_argument("--iid", action="store_true", help="also the covariance-corrected mass-mean probe")
    p.add_argument("--ccs-restarts", type=number(int, 1, 1000), default=5)
    p.add_argument(
        "--scales",
        type=_scales,
        default=(1.0, 2.0, 4.0),
        help="comma-separated steering scales (multiples of the class-mean difference; default 1,2,4); "
        "'none' skips steering",
    )
    p.add_argument(
        "--shots",
        type=number(int, 0, 64),
        default=4,
        help="statements in the few-shot contexts (0 to 64); 0 skips the lying condition",
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", required=True)
    add_device_args(p)

    p = subparsers.add_parser("probe-checkpoints", help="score a training run's checkpoints against the step")
    p.add_argument("runs", nargs="+", help="training run directories (legibility train --out)")
    p.add_argument("--no-suppressability", action="store_true", help="skip the scorecard (fast)")
    p.add_argument("--score-facts", type=number(int, 1, 1_000_000), default=30)
    p.add_argument(
        "--every", type=number(int, 1, 10**9), default=1, help="score only steps that are multiples of this"
    )
    p.add_argument("--out", required=True, help="output directory (one subfolder per run)")
    p.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="where checkpoints are read and scored: auto, cpu, cuda, cuda:N or mps (not keyed; float32)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the parsed probe subcommand; returns the exit code."""
    import torch

    from legibility.probes.concept import ProbeSettings
    from legibility.probes.run import ConceptConfig, TruthConfig, run_concept, run_truth
    from legibility.probes.truth import TruthSettings
    from legibility.report.probes import write_probe_report

    if args.command in ("probe", "probe-truth"):
        from legibility.run import check_model_name

        check_model_name(args.model)
    if args.command == "probe":
        sites = _csv(args.sites)
        if not sites or set(sites) - {"resid", "ffn"}:
            raise LegibilityError("--sites takes resid, ffn or both, comma-separated")
        cfg = ConceptConfig(
            model=args.model,
            source=args.data,
            task=args.task,
            relations=_csv(args.relations),
            facts=args.facts,
            position=args.position,
            sites=sites,
            probe=ProbeSettings(folds=args.folds, seed=args.seed),
            dtype=args.dtype,
        )
        res = run_concept(cfg, args.out, device=args.device)
        for site, h in res["headline"].items():
            print(  # noqa: T201
                f"{site}: layer {h['chosen_layer']} (chosen on validation): test accuracy "
                f"{_fmt(h['accuracy'])}, control {_fmt(h['control'])}, selectivity {_fmt(h['selectivity'])}; "
                f"fixed layer {h['fixed_layer']}: accuracy {_fmt(h['fixed']['accuracy'])}"
            )
    elif args.command == "probe-truth":
        cfg_t = TruthConfig(
            model=args.model,
            relations=_csv(args.relations),
            held_out=_csv(args.held_out),
            facts=args.facts,
            scan=args.scan,
            templates=args.templates,
            known=args.known,
            false_objects=args.false_objects,
            truth=TruthSettings(iid=args.iid, ccs_restarts=args.ccs_restarts, seed=args.seed),
            steer_scales=args.scales,
            shots=args.shots,
            dtype=args.dtype,
        )
        res = run_truth(cfg_t, args.out, device=args.device)
        print(f"pairs: {json.dumps(res['n_pairs'])}")  # noqa: T201
        for method, h in res["headline"].items():
            print(  # noqa: T201
                f"{method}: layer {h['chosen_layer']} (chosen on validation): held-out facts "
                f"{_fmt(h['held_out_facts']['pair'])}, held-out relations {_fmt(h['held_out_relations']['pair'])}"
                f"; fixed layer {h['fixed_layer']}: {_fmt(h['fixed']['held_out_facts']['pair'])}, "
                f"{_fmt(h['fixed']['held_out_relations']['pair'])}"
            )
    else:
        from legibility.probes.checkpoints import CheckpointScoring, compare_figure, score_checkpoints

        torch.set_num_threads(1)
        out = check_writable(args.out)
        check_files(out, ("results.json", "checkpoints.png"))
        names = [Path(r).resolve().name for r in args.runs]
        if len(set(names)) < len(names):
            raise LegibilityError(
                f"two training runs share a folder name ({', '.join(names)}); their results would share "
                "one subfolder of --out: rename one"
            )
        with run_lock(out):
            runs = {}
            for run_dir, name in zip(args.runs, names, strict=True):
                runs[name] = score_checkpoints(
                    run_dir,
                    out / name,
                    CheckpointScoring(
                        suppressability=not args.no_suppressability,
                        score_facts=args.score_facts,
                        every=args.every,
                    ),
                    device=args.device,
                )
            compare_figure(runs, out / "checkpoints.png")
            atomic_write_json(out / "results.json", {"kind": "checkpoints", "runs": runs})
    page = write_probe_report(args.out)
    print(f"results in {args.out}; report {page}")  # noqa: T201
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="legibility-probe")
    sub = ap.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
