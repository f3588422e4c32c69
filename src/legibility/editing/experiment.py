"""The reference editing experiment on PARAREL: locate knowledge neurons for known facts of one relation,
edit each fact and erase the relation, each against random neurons; results are written to ``out_dir``.

Knowledge neurons are located with the prompts in the relation's first wording only (e.g. "capital"), so
that prompts in the other wording (e.g. "capital city") measure synonymy. Known facts and attributions are
cached in ``out_dir`` under file names keyed by everything they depend on: the model (the sha256 of its
weights, config and tokenizer, and the dtype it runs in), the content of the PARAREL facts read, and the
settings (``known-<key>.json``,
``neurons-<key>.jsonl``). A rerun with the same inputs (e.g. other edit settings) reuses them; another model
or other settings get their own files and never read stale ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from legibility.editing.evaluate import (
    EditCase,
    EditEvaluator,
    EvalConfig,
    evaluate_erase,
    first_queries,
    summarize_edits,
)
from legibility.errors import LegibilityError
from legibility.facts.counterfacts import (
    INVERSE_RELATIONS,
    choose_new_objects,
    inverse_fact,
    pararel_wordings,
    split_wording,
)
from legibility.facts.pararel import load_pararel
from legibility.facts.render import render
from legibility.facts.split import PromptSplit
from legibility.facts.types import RenderedFact
from legibility.forward import predict
from legibility.metrics.text import SAMPLE_TEXT
from legibility.models.identity import identity
from legibility.models.loading import LoadedModel
from legibility.neurons import NeuronConfig
from legibility.store import run_lock, settings_key


@dataclass(frozen=True)
class ExperimentConfig:
    """Which facts the editing experiment uses."""

    relation: str = "P36"  # the relation whose facts are edited and which is erased
    n_facts: int = 15  # known facts whose neurons are located and which are edited
    held_out: int = 15  # further known facts of the relation, only to test the erase on unseen facts
    others: tuple[str, ...] = ("P37", "P103")  # other relations, for locality
    n_others: int = 10  # known facts per other relation
    neurons: NeuronConfig = field(default_factory=lambda: NeuronConfig(adaptive=True))
    method: str = "ig"  # attribution method
    eval: EvalConfig = field(default_factory=EvalConfig)
    # also edit with every knowledge neuron (no shared-neuron filter), since with few facts the paper's
    # filter can leave a fact with no neuron at all
    unfiltered: bool = True
    # locate and edit first the facts whose inverse the model knows (subject in its top k when asked about
    # the object), so that the symmetry test asks about facts the model holds in both directions
    symmetric_first: bool = True
    data_dir: str | None = None  # PARAREL folder (default: found automatically)


def _known(
    lm: LoadedModel,
    relations: list[str],
    limit: int,
    cfg: ExperimentConfig,
    out: Path,
    progress: bool,
    model: dict,
) -> list[RenderedFact]:
    """Known facts of ``relations`` (at most ``limit`` each), cached by id in ``out`` (the scan is slow)
    under a name keyed by the model, the facts' content, ``limit`` and the seed."""
    from legibility.pipeline import KnownConfig, select_known
    from legibility.run import facts_digest  # the runner's content hash of facts: a changed file changes it

    facts = load_pararel(cfg.data_dir, relations=relations)
    known_cfg = KnownConfig(limit=limit)
    key = settings_key(model, facts_digest(facts), relations, asdict(known_cfg), cfg.eval.seed)
    cache = out / f"known-{'-'.join(relations)}-{key}.json"
    if cache.exists():
        by_id = {f.id: f for f in facts}
        return [render(lm, by_id[i]) for i in json.loads(cache.read_text())]
    kept = select_known(lm, facts, known_cfg, seed=cfg.eval.seed, progress=progress).kept
    tmp = cache.with_name(f".{cache.name}.tmp")
    tmp.write_text(json.dumps([r.fact.id for r in kept]))
    tmp.replace(cache)
    return kept


def run_experiment(
    lm: LoadedModel, out_dir: str | Path, config: ExperimentConfig | None = None, progress: bool = True
) -> dict:
    """Run the experiment, write ``edits.jsonl``, ``erase.json`` and ``summary.json``; return the summary."""
    cfg = config or ExperimentConfig()
    with run_lock(out_dir) as lock:
        return _run_experiment(lm, lock.parent, cfg, progress)


def _run_experiment(lm: LoadedModel, out: Path, cfg: ExperimentConfig, progress: bool) -> dict:
    rel = cfg.relation
    ident = identity(lm)
    weights = ident["weights_sha256"]
    # what keys the caches: the model by content and the dtype it runs in (a bfloat16 run attributes
    # differently from a float32 one)
    model = {**ident, "dtype": lm.precision}
    known = _known(lm, [rel], cfg.n_facts + cfg.held_out, cfg, out, progress, model)
    wordings = pararel_wordings(rel, cfg.data_dir)
    inverse = INVERSE_RELATIONS.get(rel)
    inverse_templates = list(pararel_wordings(inverse, cfg.data_dir)) if inverse else []

    n_inverse_known = None
    if inverse and cfg.symmetric_first:
        flags = {}
        for r in known:
            f = inverse_fact(inverse_templates, r.fact.object, r.fact.subject, inverse)
            inv = render(lm, f, multi_token=True).prompts
            flags[r.fact.id] = bool(inv) and bool(
                (predict(lm, first_queries(inv)).rank < cfg.eval.top_k).any()
            )
        known = sorted(known, key=lambda r: not flags[r.fact.id])  # stable: keeps the sampled order otherwise
        n_inverse_known = sum(flags.values())

    located: list[RenderedFact] = []
    held_out: list[RenderedFact] = []
    splits: list[RenderedFact] = []
    for r in known:
        locate, synonyms = split_wording(r.fact, wordings)
        rl, rs = render(lm, locate), render(lm, synonyms)
        if len(located) < cfg.n_facts and len(rl.prompts) >= cfg.neurons.min_prompts:
            located.append(rl)
            splits.append(rs)
        else:
            held_out.append(r)
    if not located:
        raise LegibilityError(f"the model knows no fact of {rel} with enough prompts in one wording")

    # the runner's neuron stage, in a store keyed by the model, the method, the neuron settings and the
    # located prompts, so a changed data file or setting recomputes instead of reusing stale records
    from legibility.pipeline import find_neurons

    located_key = settings_key(
        model,
        cfg.method,
        asdict(cfg.neurons),
        [(r.fact.id, r.fact.object, [p.text for p in r.prompts]) for r in located],
    )
    # every located prompt chooses the neurons: the edit is judged on the other wordings (synonyms)
    records = find_neurons(
        lm,
        located,
        out / f"neurons-{located_key}",
        cfg.method,
        None,
        cfg.neurons,
        progress,
        split=PromptSplit(holdout=0.0),
    )
    neurons = [[tuple(n) for n in rec["neurons"]] for rec in records]

    news = choose_new_objects(lm, [r.fact for r in located], cfg.eval.seed)
    cases = []
    for r, syn, new, ns in zip(located, splits, news, neurons, strict=True):
        f = r.fact
        inv_new = inv_old = []
        if inverse:
            inv_new = render(
                lm, inverse_fact(inverse_templates, new, f.subject, inverse), multi_token=True
            ).prompts
            inv_old = render(
                lm, inverse_fact(inverse_templates, f.object, f.subject, inverse), multi_token=True
            ).prompts
        cases.append(EditCase(r, new, list(ns), syn.prompts, inv_new, inv_old))  # type: ignore[arg-type]

    others = _known(lm, list(cfg.others), cfg.n_others, cfg, out, progress, model) if cfg.others else []
    variants = {"paper": cfg.eval}
    if cfg.unfiltered:
        variants["unfiltered"] = replace(cfg.eval, edit=replace(cfg.eval.edit, max_share=1.0))
    records = []
    with (out / "edits.jsonl").open("w", encoding="utf-8") as sink:
        for variant, ecfg in variants.items():
            evaluator = EditEvaluator(lm, cases, others, neurons, SAMPLE_TEXT, ecfg)  # type: ignore[arg-type]
            for case in tqdm(cases, desc=f"edits ({variant})", disable=not progress, unit="fact"):
                for rec in evaluator.case(case):
                    rec["variant"] = variant
                    records.append(rec)
                    sink.write(json.dumps(rec) + "\n")
    erase = evaluate_erase(lm, neurons, located, held_out, others, SAMPLE_TEXT, cfg.eval)  # type: ignore[arg-type]
    (out / "erase.json").write_text(json.dumps(erase, indent=1))
    summary = {
        "model": lm.name,
        "model_sha256": weights,
        "relation": rel,
        "inverse": inverse,
        "config": asdict(cfg),
        "n_located": len(located),
        "n_held_out": len(held_out),
        "n_other_facts": len(others),
        "n_inverse_known": n_inverse_known,
        "neurons_per_fact": [len(n) for n in neurons],
        "edit": {
            v: summarize_edits([r for r in records if r["variant"] == v], cfg.eval.top_k) for v in variants
        },
        "erase": erase,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
