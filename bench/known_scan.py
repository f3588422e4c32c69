"""The known-fact scan before and after length batching, side by side on the same PARAREL facts (issue 21).

    PYTHONPATH=src python bench/known_scan.py --facts 600 --rounds 2

The scan (:class:`legibility.pipeline.KnownStage`) asks each fact's prompts in rounds and sends a group's
prompts through :func:`legibility.forward.predict`. Two ways of running it on one sample of facts
(``--facts``, seeded, every relation; one torch thread, as each of ``--workers``-many processes runs it):

* ``before``: groups of 32 facts, each round's queries batched in the order they come (64 per batch), as
  the scan ran until this change;
* ``after``: groups of 128 facts, each round's queries batched by length (:func:`legibility.forward.length_batches`).

The two alternate ``--rounds`` times (before, after, before, ...) so that a load change on the machine hits
both; the table gives each round's facts per second and the ratio, and counts facts whose answer differs
between the two (float rounding could flip a tie; it should be none).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

import torch

from legibility import load_model, load_pararel
from legibility import pipeline as pipeline_module
from legibility.facts.render import render
from legibility.facts.types import Query
from legibility.forward import Prediction, predict
from legibility.pipeline import FactGroup, KnownStage


def predict_in_order(lm, queries: Sequence[Query], batch_size: int = 64) -> Prediction:
    """The scan's forward before length batching: consecutive slices of ``batch_size`` queries."""
    parts = [predict(lm, queries[i : i + batch_size], batch_size) for i in range(0, len(queries), batch_size)]
    return Prediction(*(torch.cat([getattr(p, f) for p in parts]) for f in ("prob", "rank", "top")))


def scan(lm, rendered, group: int, in_order: bool) -> tuple[float, dict[str, bool]]:
    stage = KnownStage()(lm)
    pipeline_module.predict = predict_in_order if in_order else predict  # the name KnownStage calls
    try:
        t0 = time.perf_counter()
        known: dict[str, bool] = {}
        for i in range(0, len(rendered), group):
            known.update(stage(FactGroup.of(rendered[i : i + group]))["known"])
        return time.perf_counter() - t0, known
    finally:
        pipeline_module.predict = predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--facts", type=int, default=600, help="PARAREL facts sampled over all relations")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = load_model("smollm2-135m", device="cpu")
    facts = load_pararel(args.data_dir)
    random.Random(args.seed).shuffle(facts)
    rendered = []
    for f in facts:
        r = render(lm, f, False)
        if len(r.prompts) >= 2:  # the scan's min_prompts
            rendered.append(r)
        if len(rendered) == args.facts:
            break
    print(f"{len(rendered)} facts with >= 2 usable prompts; one torch thread")
    print("| round | before (facts/s) | after (facts/s) | after / before | answers that differ |")
    print("|---|---|---|---|---|")
    for k in range(args.rounds):
        t_before, before = scan(lm, rendered, 32, True)
        t_after, after = scan(lm, rendered, 128, False)
        differ = sum(before[i] != after[i] for i in before)
        n = len(rendered)
        print(f"| {k + 1} | {n / t_before:.2f} | {n / t_after:.2f} | {t_before / t_after:.2f} | {differ} |")
    print(f"known: {sum(after.values())} of {len(after)}")


if __name__ == "__main__":
    main()
