"""Plain IG against the attribution methods that look for specific neurons, on SmolLM2-135M + PARAREL.

    PYTHONPATH=src python bench/specificity.py --out runs/specificity
    PYTHONPATH=src python bench/specificity.py --model RUN/model --config RUN.yaml --out runs/spec-trained

(``--model``/``--config``: a model trained by ``legibility train`` and its config, scored on its own facts
with every template, as the sweeps score.)

Each method is one keyed, resumable run of the runner (:func:`legibility.run.run`) into ``OUT/METHOD``: the
same known facts, neurons from each fact's selection prompts, effects on its held-out prompts with the four
collateral tiers, the v2 scorecard. Where the neurons are suppressed (the answer position, or every position
for ``ig-subject``) is the method's registry entry's. Prints a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from legibility.attribution import AttributionConfig
from legibility.metrics.effects import EffectConfig
from legibility.run import FactSource, KnownConfig, RunSettings, run

METHODS = ("ig", "ig-contrastive", "ig-subject")
ROWS = (
    "specific_suppressability",
    "suppressability",
    "specific_suppressability.in_sample",
    "suppression.own",
    "collateral.same_relation",
    "collateral.same_object",
    "collateral.same_subject",
    "collateral.other_relation",
    "neurons.facts_with_any",
    "neurons.per_fact",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relations", default="P36,P37,P103,P1412,P30,P17")
    ap.add_argument("--limit", type=int, default=3, help="known facts per relation")
    ap.add_argument("--steps", type=int, default=10, help="IG path points (the same for every method)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="runs/specificity")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--config", default=None, help="training run config of --model (its facts are used)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    methods = args.methods.split(",")
    source, facts, lm = None, None, None
    if args.config:
        from legibility.models.loading import load_model
        from legibility.training.experiment import all_template_facts
        from legibility.training.run_config import load_run_config

        lm = load_model(args.model)
        lm.add_special_tokens = False  # the trained word-level tokenizer, as the sweeps score it
        facts = all_template_facts(load_run_config(args.config))
    else:
        source = FactSource(relations=tuple(args.relations.split(",")))
    for method in methods:
        settings = RunSettings(
            model=args.model,
            method=method,
            attribution=AttributionConfig(steps=args.steps),
            known=KnownConfig(limit=args.limit),
            effects=EffectConfig(),
            metrics=(),
        )
        run(settings, out / method, source=source, facts=facts, lm=lm)
    print(f"| metric | {' | '.join(methods)} |\n|---|{'---|' * len(methods)}")
    cards = {m: json.loads((out / m / "scorecard.json").read_text())["metrics"] for m in methods}
    for row in ROWS:
        cells = []
        for m in methods:
            e = cards[m].get(row)
            cells.append(
                "-" if e is None else f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] (n={e['n']})"
            )
        print(f"| {row} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
