"""The stages of the runner (:mod:`legibility.run`): known facts, knowledge neurons, effects, scorecard.

Every stage streams one JSON line per fact into the output directory, so a run killed at any point and
restarted with the same ``out_dir`` continues where it stopped without recomputing finished facts. Call
:func:`legibility.run.run` for a whole, keyed run; these functions are its parts.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from legibility.attribution import METHODS, AttributionConfig, attribute_prompts
from legibility.attribution.contrastive import with_contrast
from legibility.facts.known import KnownConfig
from legibility.facts.render import render
from legibility.facts.split import PromptSplit
from legibility.facts.types import Fact, RenderedFact
from legibility.forward import predict
from legibility.metrics.effects import EffectConfig, EffectRunner
from legibility.metrics.scorecard import scorecard
from legibility.models.loading import LoadedModel
from legibility.neurons import NeuronConfig, knowledge_neurons
from legibility.sharding import ModelSpec, ShardConfig, map_facts
from legibility.store import JsonlStore, atomic_write_json

__all__ = [
    "EffectStage",
    "KnownConfig",
    "NeuronStage",
    "find_neurons",
    "measure_effects",
    "select_known",
    "write_scorecard",
]


NEURON_KEYS = ("fact_id", "relation", "neurons", "n_prompts")
EFFECT_KEYS = ("fact_id", "relation", "before", "own", "controls")


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
    check: Callable[[RenderedFact], None] | None = None,
) -> FactSelection:
    """Render facts for the model and keep the ones it knows; report how many were dropped and why.

    ``check`` is called on each rendered fact before the model runs it (e.g. to refuse over-long prompts).
    """
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
            if check is not None:
                check(r)
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


@dataclass(frozen=True)
class NeuronStage:
    """Compute factory of the knowledge-neuron stage: ``NeuronStage(...)(lm)(rendered_fact) -> record``.

    Plain data, so :func:`legibility.sharding.map_facts` can send it to workers that load their own model.
    """

    method: str = "ig"
    attribution: AttributionConfig | None = None
    neurons: NeuronConfig = field(default_factory=NeuronConfig)
    split: PromptSplit = field(default_factory=PromptSplit)  # only the selection prompts are attributed

    def __call__(self, lm: LoadedModel) -> Callable[[RenderedFact], dict]:
        # The fact's usable prompts were checked against min_prompts when it was selected; its selection
        # prompts (the ones refined over) may be fewer.
        ncfg = replace(self.neurons, min_prompts=1)

        def compute(r: RenderedFact) -> dict:
            selection, heldout = self.split.split(r)
            scores = attribute_prompts(
                lm, selection, self.method, self.attribution
            )  # [prompts, layers, neurons]
            kn = knowledge_neurons(r.fact.id, r.fact.relation, scores, ncfg)
            mean = scores.mean(0).flatten()
            top = torch.topk(mean, min(10, mean.numel()))
            return {
                "fact_id": r.fact.id,
                "relation": r.fact.relation,
                "subject": r.fact.subject,
                "object": r.fact.object,
                "prompts": [p.text for p in r.prompts],
                "selection_prompts": [p.text for p in selection],
                "heldout_prompts": [p.text for p in heldout],
                "n_prompts": len(r.prompts),
                "min_prompts": self.neurons.min_prompts,
                "neurons": [list(n) for n in kn.neurons],
                "share": kn.share,
                "coarse_sizes": [len(c) for c in kn.coarse],
                "top_mean_scores": [
                    [int(i) // lm.sites.n_neurons, int(i) % lm.sites.n_neurons, float(v)]
                    for v, i in zip(top.values, top.indices, strict=True)
                ],
            }

        return compute


@dataclass(frozen=True)
class EffectStage:
    """Compute factory of the effect stage; ``pool`` (all kept facts) supplies the control facts."""

    pool: tuple[RenderedFact, ...]
    neurons: dict[str, list]  # fact id -> its knowledge neurons as [layer, index]
    config: EffectConfig | None = None
    split: PromptSplit = field(default_factory=PromptSplit)  # effects are measured on held-out prompts
    seed: int = 0  # random neurons and control facts
    where: str = "answer"  # positions intervened on (the attribution method's entry says)

    def __call__(self, lm: LoadedModel) -> Callable[[RenderedFact], dict]:
        runner = EffectRunner(lm, self.pool, self.config, self.split, self.seed, self.where)
        return lambda r: runner.fact_effects(r, [tuple(n) for n in self.neurons[r.fact.id]])  # type: ignore[misc]


def find_neurons(
    lm: LoadedModel,
    facts: Sequence[RenderedFact],
    out_dir: str | Path,
    method: str = "ig",
    attribution: AttributionConfig | None = None,
    neurons: NeuronConfig | None = None,
    progress: bool = True,
    *,
    split: PromptSplit | None = None,
    model: ModelSpec | None = None,
    shard: ShardConfig | None = None,
) -> list[dict]:
    """Knowledge neurons of every fact (from its selection prompts), appended to ``out_dir/neurons.jsonl``
    as each fact finishes.

    ``shard`` spreads the facts over Ray workers that load ``model`` themselves (see :mod:`legibility.sharding`).
    """
    if METHODS[method].contrast:
        facts = with_contrast(facts)  # the relation's other objects
    stage = NeuronStage(method, attribution, neurons or NeuronConfig(), split or PromptSplit())
    store = JsonlStore(Path(out_dir) / "neurons.jsonl", required=NEURON_KEYS)
    return map_facts(
        stage, facts, store, lm=lm, model=model, shard=shard, desc="knowledge neurons", progress=progress
    )


def measure_effects(
    lm: LoadedModel,
    facts: Sequence[RenderedFact],
    neuron_records: Sequence[dict],
    out_dir: str | Path,
    config: EffectConfig | None = None,
    progress: bool = True,
    *,
    split: PromptSplit | None = None,
    seed: int = 0,
    method: str = "ig",
    model: ModelSpec | None = None,
    shard: ShardConfig | None = None,
) -> list[dict]:
    """Suppression/amplification effects with controls (on held-out prompts) for every fact that has
    knowledge neurons; ``method`` (the one that found them) says where they are intervened on."""
    by_id = {rec["fact_id"]: rec["neurons"] for rec in neuron_records}
    targets = [r for r in facts if by_id.get(r.fact.id)]
    stage = EffectStage(
        tuple(facts),
        {r.fact.id: by_id[r.fact.id] for r in targets},
        config,
        split or PromptSplit(),
        seed,
        METHODS[method].where,
    )
    store = JsonlStore(Path(out_dir) / "effects.jsonl", required=EFFECT_KEYS)
    return map_facts(
        stage, targets, store, lm=lm, model=model, shard=shard, desc="suppress/amplify", progress=progress
    )


def save_selection(out_dir: Path, selection: FactSelection) -> None:
    """facts.json: the kept facts' ids in their order (a resume restores exactly this order)."""
    payload = {"report": selection.report, "facts": [r.fact.id for r in selection.kept]}
    atomic_write_json(out_dir / "facts.json", payload)


def write_scorecard(
    out_dir: str | Path,
    neuron_records: Sequence[dict],
    effects: Sequence[dict] | None,
    settings: dict,
    extra: dict[str, dict] | None = None,
    seed: int = 0,
) -> dict:
    """scorecard.json: the suppression scorecard plus ``extra`` metrics (e.g. the independent ones);
    ``effects`` None for a run that measured none."""
    out = Path(out_dir)
    card = {"metrics": {**scorecard(neuron_records, effects, seed), **(extra or {})}, "settings": settings}
    atomic_write_json(out / "scorecard.json", card)
    return card
