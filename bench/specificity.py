"""Plain IG against the two attribution methods that look for specific neurons, on SmolLM2-135M + PARAREL.

    PYTHONPATH=src python bench/specificity.py --out runs/specificity
    PYTHONPATH=src python bench/specificity.py --model RUN/model --config RUN.yaml --out runs/spec-trained

(``--model``/``--config``: a model trained by ``legibility train`` and its config, scored on its own facts
with every template, as the sweeps score.)

For each method: knowledge neurons of the same known facts (paper thresholds), then suppression effects with
the three control tiers and the scorecard. Subject-token neurons are suppressed at every position
(``EffectConfig(where="all")``); answer-position methods at the answer position (paper protocol). Writes
``OUT/METHOD.json`` (the scorecard) as each method finishes and prints a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from legibility import load_model, load_pararel
from legibility.attribution import AttributionConfig, attribute_prompts
from legibility.attribution.contrastive import with_contrast
from legibility.metrics.effects import EffectConfig, EffectRunner
from legibility.metrics.scorecard import effect_metrics, neuron_metrics
from legibility.neurons import knowledge_neurons
from legibility.pipeline import KnownConfig, select_known

METHODS = {"ig": "answer", "ig-contrastive": "answer", "ig-subject": "all"}
ROWS = (
    "specific_suppressability",
    "suppressability",
    "suppression.own",
    "suppression.same_relation",
    "suppression.same_subject",
    "suppression.other_relation",
    "neurons.per_fact",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relations", default="P36,P37,P103,P1412,P30,P17")
    ap.add_argument("--limit", type=int, default=3, help="known facts per relation")
    ap.add_argument("--prompts", type=int, default=4, help="paraphrases per fact")
    ap.add_argument("--steps", type=int, default=10, help="IG path points (the same for every method)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="runs/specificity")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--config", default=None, help="training run config of --model (its facts are used)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    if args.config:
        from legibility.training.experiment import all_template_facts
        from legibility.training.run_config import load_run_config

        lm.add_special_tokens = False  # the trained word-level tokenizer, as the sweeps score it
        facts = all_template_facts(load_run_config(args.config))
    else:
        facts = load_pararel(None, args.relations.split(","), None)
    kept = select_known(lm, facts, KnownConfig(limit=args.limit), progress=False).kept
    for r in kept:
        del r.prompts[args.prompts :]
    kept = with_contrast(kept)
    cfg = AttributionConfig(steps=args.steps)
    for method in args.methods.split(","):
        path = out / f"{method}.json"
        if path.exists():
            continue
        tic = time.perf_counter()
        runner = EffectRunner(lm, kept, EffectConfig(where=METHODS[method]))
        records, effects = [], []
        for r in kept:
            scores = attribute_prompts(lm, r.prompts, method, cfg)
            kn = knowledge_neurons(r.fact.id, r.fact.relation, scores)
            records.append(
                {
                    "relation": r.fact.relation,
                    "neurons": kn.neurons,
                    "n_prompts": len(r.prompts),
                    "min_prompts": 2,
                }
            )
            if kn.neurons:
                effects.append(runner.fact_effects(r, kn.neurons))
        card = {k: v.to_dict() for k, v in {**neuron_metrics(records), **effect_metrics(effects)}.items()}
        card["seconds"] = time.perf_counter() - tic
        card["facts"] = len(kept)
        path.write_text(json.dumps(card, indent=1))
    print(f"| metric | {' | '.join(METHODS)} |\n|---|{'---|' * len(METHODS)}")
    cards = {m: json.loads((out / f"{m}.json").read_text()) for m in METHODS if (out / f"{m}.json").exists()}
    for row in ROWS:
        cells = []
        for m in METHODS:
            e = cards.get(m, {}).get(row)
            cells.append(
                "-" if e is None else f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] (n={e['n']})"
            )
        print(f"| {row} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
