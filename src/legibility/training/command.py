"""`legibility train CONFIG.yaml --out DIR`: the CLI layer over :func:`legibility.training.train`.

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
    return p


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
