"""`legibility train CONFIG.yaml --out DIR` and `legibility finetune [CONFIG.yaml] --out DIR`: the CLI layer
over :func:`legibility.training.train` and :func:`legibility.training.finetune.run_finetune`.

The owner's ``cli.py`` calls :func:`add_parser` with its subparsers and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
import json

from legibility.devices import device_name
from legibility.store import check_writable
from legibility.training.run_config import load_run_config
from legibility.training.trainer import train


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "train",
        help="train a small LM (synthetic facts, PARAREL, text) with interpretability regularizers",
        description="Train the run described by CONFIG.yaml (see configs/ for examples). Rerunning with the "
        "same --out resumes from its latest checkpoint; the final model is written to OUT/model.",
    )
    p.add_argument("config", help="YAML run config (model, data, train, regularizers)")
    p.add_argument("--out", required=True, help="output folder; rerunning with the same one resumes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto (CUDA when available), cpu, cuda, cuda:N or mps; not part of the run config, so a run "
        "may resume on another device (default: %(default)s)",
    )
    p.set_defaults(run=run)
    add_finetune_parser(subparsers)
    return p


def add_finetune_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand; returns its parser."""
    p = subparsers.add_parser(
        "finetune",
        help="continue training a pretrained model with the lab's objectives; measure its cost and score it",
        description="Finetune the model of CONFIG.yaml (default: the embedded SmolLM2-135M with the "
        "defaults of legibility.training.finetune.FinetuneConfig; see configs/finetune/) on general text "
        "with its regularizers, then measure the cost on held-out text and score held-out facts. Rerunning "
        "with the same --out resumes; the tuned model is written to OUT/model.",
    )
    p.add_argument("config", nargs="?", help="YAML finetune config (default: all defaults)")
    p.add_argument("--out", required=True, help="output folder; rerunning with the same one resumes")
    p.add_argument("--model", help="the model to finetune (overrides the config's model)")
    p.add_argument("--facts", type=int, default=24, help="known facts scored per fact group (default: 24)")
    p.add_argument("--ig-steps", type=int, default=20, help="integrated-gradients steps when scoring (20)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(run=run_finetune_command)
    return p


def run_finetune_command(args: argparse.Namespace) -> int:
    """Validate, finetune (or resume), measure, score; print the result as JSON."""
    from legibility.training.experiment import ScoreConfig
    from legibility.training.finetune import parse_finetune_config
    from legibility.training.finetune import run_finetune as finetune
    from legibility.training.run_config import read_yaml

    data = read_yaml(args.config) if args.config else {}
    if args.model:
        data = {**data, "model": args.model}
    cfg = parse_finetune_config(data)
    if args.facts < 1 or args.ig_steps < 1:
        from legibility.errors import LegibilityError

        raise LegibilityError("--facts and --ig-steps must be >= 1")
    score = ScoreConfig(facts=args.facts, ig_steps=args.ig_steps)
    result = finetune(cfg, args.out, score, device=args.device, progress=not args.quiet)
    print(json.dumps(result["train"], indent=2))
    for name in ("specific_suppressability", "suppressability"):
        for suffix in ("", ".trained_facts", ".heldout_relations"):
            m = result["metrics"].get(name + suffix)
            if m:
                print(f"{name + suffix:45s} {m['value']:.3f}")
    print(f"tuned model saved to {args.out}/model (legibility score --model {args.out}/model)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Validate the config, train (or resume), print the final metrics as JSON; returns the exit code."""
    check_writable(args.out)
    cfg = load_run_config(args.config)
    final = train(cfg, args.out, progress=not args.quiet, device=args.device)
    print(json.dumps(final, indent=2))
    print(f"model saved to {args.out}/model (load it with legibility.load_model)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m legibility.training.command``) until cli.py wires `train` in."""
    import sys

    from legibility.errors import LegibilityError

    parser = argparse.ArgumentParser(prog="legibility")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except LegibilityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
