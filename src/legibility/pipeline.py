"""The stages of the runner (:mod:`legibility.run`): known facts, knowledge neurons, effects, scorecard.

Every stage streams one JSON line per fact into the output directory, so a run killed at any point and
restarted with the same ``out_dir`` continues where it stopped without recomputing finished facts. Call
:func:`legibility.run.run` for a whole, keyed run; these functions are its parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from legibility.attribution import METHODS, AttributionConfig, attribute_prompts, prepare_facts
from legibility.facts.known import KnownConfig
from legibility.facts.render import render
from legibility.facts.split import PromptSplit
from legibility.facts.types import Fact, RenderedFact
from legibility.forward import predict
from legibility.metrics.effects import EffectConfig, EffectRunner
from legibility.metrics.scorecard import scorecard
from legibility.models.loading import LoadedModel
from legibility.neurons import NeuronConfig, knowledge_neurons
from legibility.sharding import ModelSpec, ShardConfig, map_facts, ray_runtime
from legibility.store import JsonlStore, atomic_write_json

__all__ = [
    "EffectStage",
    "FactGroup",
    "KnownConfig",
    "KnownStage",
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


def known_needed(n_prompts: int, min_share: float) -> int:
    """The fewest known prompts out of ``n_prompts`` whose share reaches ``min_share`` (n + 1: never)."""
    return next((k for k in range(n_prompts + 1) if k / n_prompts >= min_share), n_prompts + 1)


@dataclass(frozen=True)
class FactGroup:
    """Facts checked together (their prompts share batches): one item of the known-fact map."""

    id: str  # derived from the member fact ids (the key of the group's record)
    facts: tuple[RenderedFact, ...]

    @classmethod
    def of(cls, facts: Sequence[RenderedFact]) -> FactGroup:
        digest = hashlib.sha256("\n".join(r.fact.id for r in facts).encode()).hexdigest()[:16]
        return cls(f"group:{digest}", tuple(facts))


@dataclass(frozen=True)
class KnownStage:
    """Compute factory of the known-fact check: ``KnownStage(known)(lm)(group) -> record``, the record
    holding each fact's answer (``known``: fact id -> bool, ``asked``: fact id -> prompts asked).

    A fact is known when the target is within the model's top ``known.top_k`` on at least ``known.min_share``
    of its usable prompts (a multi-token prompt: on every target token). Prompts are asked in rounds: each
    undecided fact of the group adds as many of its next prompts as could still decide its answer, all of
    them go through the model in shared batches, and a fact stops once it is decided (the decision all its
    prompts would give). Plain data, so :func:`legibility.sharding.map_facts` can send it to workers.
    """

    known: KnownConfig = field(default_factory=KnownConfig)

    def __call__(self, lm: LoadedModel) -> Callable[[FactGroup], dict]:
        cfg = self.known

        def compute(group: FactGroup) -> dict:
            facts = group.facts
            need = [known_needed(len(r.prompts), cfg.min_share) for r in facts]
            hits, asked = [0] * len(facts), [0] * len(facts)

            def open_(i: int) -> bool:
                n = len(facts[i].prompts)
                return hits[i] < need[i] and asked[i] - hits[i] <= n - need[i] and asked[i] < n

            while pending := [i for i in range(len(facts)) if open_(i)]:
                chunks = []
                for i in pending:
                    n, misses = len(facts[i].prompts), asked[i] - hits[i]
                    take = min(need[i] - hits[i], n - need[i] + 1 - misses)
                    chunks.append((i, facts[i].prompts[asked[i] : asked[i] + take]))
                ranks = predict(lm, [q for _, chunk in chunks for p in chunk for q in p.queries]).rank
                j = 0
                for i, chunk in chunks:
                    for p in chunk:  # a multi-token prompt is known when every target token is
                        hits[i] += int(ranks[j : j + len(p.queries)].max()) < cfg.top_k
                        j += len(p.queries)
                    asked[i] += len(chunk)
            return {
                "fact_id": group.id,
                "known": {r.fact.id: hits[i] >= need[i] for i, r in enumerate(facts)},
                "asked": {r.fact.id: asked[i] for i, r in enumerate(facts)},
            }

        return compute


def select_known(
    lm: LoadedModel,
    facts: Sequence[Fact],
    known: KnownConfig | None = None,
    min_prompts: int = 2,
    multi_token: bool = False,
    seed: int = 0,
    progress: bool = True,
    check: Callable[[RenderedFact], None] | None = None,
    *,
    store: str | Path | None = None,
    model: ModelSpec | None = None,
    shard: ShardConfig | None = None,
    group: int = 128,
) -> FactSelection:
    """Render facts for the model and keep the ones it knows; report how many were dropped and why.

    ``check`` is called on each rendered fact before the model runs it (e.g. to refuse over-long prompts).
    The model's checks run as a map over facts (:func:`legibility.sharding.map_facts`): ``shard`` spreads
    them over workers that load ``model``, ``group`` facts per item (their prompts share batches, formed by
    length: the more facts per item, the less padding); ``store`` (a JSONL file) keeps each group's answers
    as they come, so a killed scan resumes. Facts are examined per relation in a seeded random order; with a
    ``limit``, the first ``limit`` known ones are kept and the facts after them are not examined (they are
    checked in chunks, so a few may be computed and stored without being counted).
    """
    cfg = known or KnownConfig()
    by_rel: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_rel[f.relation].append(f)
    dropped: Counter[str] = Counter()
    prompt_skips: Counter[str] = Counter()
    examined = 0
    pools = {}
    for rel, candidates in by_rel.items():
        pool = list(candidates)
        random.Random(f"{seed}|{rel}").shuffle(
            pool
        )  # a limit takes a random sample, not the file's first rows
        pools[rel] = pool if cfg.limit is None else pool[: cfg.limit * cfg.scan]
    total = sum(len(p) for p in pools.values())
    bar = tqdm(total=total, desc="known facts examined", disable=not progress, unit="fact")
    stage = KnownStage(cfg)
    n_kept = dict.fromkeys(pools, 0)
    kept_in: dict[str, list[RenderedFact]] = {rel: [] for rel in pools}
    start = dict.fromkeys(pools, 0)
    chunk = None if cfg.limit is None else max(cfg.limit, 16)
    with contextlib.ExitStack() as stack:
        if store is None:
            store = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "known.jsonl"
        answers = JsonlStore(store, required=("known",))
        if shard is not None and shard.name == "ray":  # one runtime for every round
            stack.enter_context(ray_runtime(shard.address))
        # Rounds: each relation still short of its limit contributes its next chunk of candidates (all of
        # them without a limit), and the model checks the round's facts in one map.
        while True:
            rels = [
                rel
                for rel, pool in pools.items()
                if start[rel] < len(pool) and (cfg.limit is None or n_kept[rel] < cfg.limit)
            ]
            if not rels:
                break
            rendered: dict[str, list[RenderedFact]] = {}
            for rel in rels:
                end = len(pools[rel]) if chunk is None else start[rel] + chunk
                rendered[rel] = [render(lm, f, multi_token) for f in pools[rel][start[rel] : end]]
                start[rel] += len(rendered[rel])
            usable = [
                r for rs in rendered.values() for r in rs if r.prompts and len(r.prompts) >= min_prompts
            ]
            if check is not None:
                for r in usable:
                    check(r)
            groups = [FactGroup.of(usable[i : i + group]) for i in range(0, len(usable), group)]
            records = map_facts(
                stage,
                groups,
                answers,
                lm=lm,
                model=model,
                shard=shard,
                desc="known-fact checks",
                progress=progress,
                unit="group",
            )
            answer = {fid: known for rec in records for fid, known in rec["known"].items()}
            for rel in rels:
                for r in rendered[rel]:
                    if cfg.limit is not None and n_kept[rel] >= cfg.limit:
                        break
                    examined += 1
                    bar.update(1)
                    prompt_skips.update(r.skipped)
                    if not r.prompts:
                        dropped[f"no usable prompt ({', '.join(sorted(r.skipped))})"] += 1
                    elif len(r.prompts) < min_prompts:
                        dropped[f"fewer than {min_prompts} usable prompts"] += 1
                    elif not answer[r.fact.id]:
                        dropped["not known by the model"] += 1
                    else:
                        kept_in[rel].append(r)
                        n_kept[rel] += 1
    kept = [r for rel in pools for r in kept_in[rel]]  # relation by relation, as examined
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
    facts = prepare_facts(lm, facts, method, attribution)  # what the method's registry entry needs
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
