"""The main job: facts -> known facts -> knowledge neurons -> effects -> scorecard, resumable on disk.

Every stage streams one JSON line per fact into the output directory, so a run killed at any point and
restarted with the same ``out_dir`` continues where it stopped without recomputing finished facts.

Files: ``run.json`` (settings), ``facts.json`` (which facts were kept and why the others were dropped),
``neurons.jsonl``, ``effects.jsonl``, ``scorecard.json``, ``layers.png``, ``suppression.png``.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from legibility.attribution import AttributionConfig, attribute_prompts
from legibility.attribution.contrastive import with_contrast
from legibility.errors import LegibilityError
from legibility.facts.render import render
from legibility.facts.types import Fact, RenderedFact
from legibility.forward import predict
from legibility.metrics.effects import EffectConfig, EffectRunner
from legibility.metrics.scorecard import scorecard
from legibility.models.loading import LoadedModel
from legibility.neurons import NeuronConfig, knowledge_neurons
from legibility.store import JsonlStore, check_settings


@dataclass(frozen=True)
class KnownConfig:
    """Which facts count as known by the model (only those are attributed)."""

    top_k: int = 1  # the target must be within the model's top k predictions ...
    min_share: float = 0.5  # ... on at least this share of the fact's usable prompts
    limit: int | None = None  # keep at most this many known facts per relation (None: all)
    scan: int = 20  # with a limit, examine at most limit * scan candidate facts per relation


@dataclass
class FactSelection:
    kept: list[RenderedFact]
    report: dict = field(default_factory=dict)


def select_known(
    lm: LoadedModel,
    facts: Sequence[Fact],
    known: KnownConfig | None = None,
    min_prompts: int = 2,
    multi_token: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> FactSelection:
    """Render facts for the model and keep the ones it knows; report how many were dropped and why."""
    cfg = known or KnownConfig()
    by_rel: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_rel[f.relation].append(f)
    dropped: Counter[str] = Counter()
    prompt_skips: Counter[str] = Counter()
    kept: list[RenderedFact] = []
    examined = 0
    pools = {}
    for rel, candidates in by_rel.items():
        pool = list(candidates)
        random.Random(f"{seed}|{rel}").shuffle(
            pool
        )  # a limit takes a random sample, not the file's first rows
        pools[rel] = pool if cfg.limit is None else pool[: cfg.limit * cfg.scan]
    total = sum(len(p) for p in pools.values())
    bar = tqdm(total=total, desc="checking which facts the model knows", disable=not progress, unit="fact")
    for candidates in pools.values():
        n_kept = 0
        for fact in candidates:
            if cfg.limit is not None and n_kept >= cfg.limit:
                break
            examined += 1
            bar.update(1)
            r = render(lm, fact, multi_token)
            prompt_skips.update(r.skipped)
            if not r.prompts:
                dropped[f"no usable prompt ({', '.join(sorted(r.skipped))})"] += 1
                continue
            if len(r.prompts) < min_prompts:
                dropped[f"fewer than {min_prompts} usable prompts"] += 1
                continue
            flat = [q for p in r.prompts for q in p.queries]
            ranks = predict(lm, flat).rank
            worst, i = [], 0
            for p in r.prompts:  # a multi-token prompt is known when every target token is
                worst.append(int(ranks[i : i + len(p.queries)].max()))
                i += len(p.queries)
            share = sum(w < cfg.top_k for w in worst) / len(worst)
            if share < cfg.min_share:
                dropped["not known by the model"] += 1
                continue
            kept.append(r)
            n_kept += 1
    bar.close()
    report = {
        "facts_in": len(facts),
        "examined": examined,
        "kept": len(kept),
        "dropped": dict(dropped),
        "prompts_skipped": dict(prompt_skips),
        "kept_by_relation": dict(Counter(r.fact.relation for r in kept)),
        "known": asdict(cfg),
    }
    return FactSelection(kept, report)


def find_neurons(
    lm: LoadedModel,
    facts: Sequence[RenderedFact],
    out_dir: str | Path,
    method: str = "ig",
    attribution: AttributionConfig | None = None,
    neurons: NeuronConfig | None = None,
    progress: bool = True,
) -> list[dict]:
    """Knowledge neurons of every fact, appended to ``out_dir/neurons.jsonl`` as each fact finishes."""
    ncfg = neurons or NeuronConfig()
    facts = with_contrast(facts)  # the relation's other objects, for contrastive attribution

    def compute(r: RenderedFact) -> dict:
        scores = attribute_prompts(lm, r.prompts, method, attribution)  # [prompts, layers, neurons]
        kn = knowledge_neurons(r.fact.id, r.fact.relation, scores, ncfg)
        mean = scores.mean(0).flatten()
        top = torch.topk(mean, min(10, mean.numel()))
        return {
            "fact_id": r.fact.id,
            "relation": r.fact.relation,
            "subject": r.fact.subject,
            "object": r.fact.object,
            "prompts": [p.text for p in r.prompts],
            "n_prompts": len(r.prompts),
            "min_prompts": ncfg.min_prompts,
            "neurons": [list(n) for n in kn.neurons],
            "share": kn.share,
            "coarse_sizes": [len(c) for c in kn.coarse],
            "top_mean_scores": [
                [int(i) // lm.sites.n_neurons, int(i) % lm.sites.n_neurons, float(v)]
                for v, i in zip(top.values, top.indices, strict=True)
            ],
        }

    return _stream(Path(out_dir) / "neurons.jsonl", facts, compute, "knowledge neurons", progress)


def measure_effects(
    lm: LoadedModel,
    facts: Sequence[RenderedFact],
    neuron_records: Sequence[dict],
    out_dir: str | Path,
    config: EffectConfig | None = None,
    progress: bool = True,
) -> list[dict]:
    """Suppression/amplification effects with controls for every fact that has knowledge neurons."""
    by_id = {rec["fact_id"]: rec for rec in neuron_records}
    targets = [r for r in facts if by_id.get(r.fact.id, {}).get("neurons")]
    runner = EffectRunner(lm, facts, config)

    def compute(r: RenderedFact) -> dict:
        return runner.fact_effects(r, [tuple(n) for n in by_id[r.fact.id]["neurons"]])  # type: ignore[misc]

    return _stream(Path(out_dir) / "effects.jsonl", targets, compute, "suppress/amplify", progress)


def _stream(
    path: Path,
    facts: Sequence[RenderedFact],
    compute: Callable[[RenderedFact], dict],
    desc: str,
    progress: bool,
) -> list[dict]:
    """Records of ``facts`` in ``path``, computing and appending (one line each) only those not there yet."""
    store = JsonlStore(path)
    todo = [r for r in facts if r.fact.id not in store]
    with tqdm(
        total=len(facts), initial=len(facts) - len(todo), desc=desc, disable=not progress, unit="fact"
    ) as bar:
        for r in todo:
            store.append(compute(r))
            bar.update(1)
    return [store.records[r.fact.id] for r in facts]


def save_selection(out_dir: Path, selection: FactSelection) -> None:
    payload = {"report": selection.report, "facts": [r.fact.id for r in selection.kept]}
    tmp = out_dir / "facts.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out_dir / "facts.json")


def write_scorecard(
    out_dir: str | Path,
    neuron_records: Sequence[dict],
    effects: Sequence[dict],
    settings: dict,
    extra: dict[str, dict] | None = None,
) -> dict:
    """scorecard.json: the suppression scorecard plus ``extra`` metrics (e.g. the independent ones)."""
    out = Path(out_dir)
    card = {"metrics": {**scorecard(neuron_records, effects), **(extra or {})}, "settings": settings}

    tmp = out / "scorecard.json.tmp"
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False))
    tmp.replace(out / "scorecard.json")
    return card


def prepare_run(out_dir: str | Path, settings: dict) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LegibilityError(f"--out {out} is a file; give a directory")
    check_settings(out, settings)
    return out
