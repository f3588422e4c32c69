"""The fact split: held-out facts never reach an objective, and every scorecard reports them apart."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_cfg

from legibility import LegibilityError
from legibility.facts.render import render
from legibility.facts.types import Fact
from legibility.training.config import FactSplit
from legibility.training.corpus import build_corpus, split_facts
from legibility.training.experiment import all_template_facts, fact_groups
from legibility.training.regularizers import StepContext
from legibility.training.trainer import Trainer


def _facts(per_relation: dict[str, int]) -> list[Fact]:
    return [Fact(f"s{i}", rel, f"o{i}", ("[X] is [Y]",)) for rel, n in per_relation.items() for i in range(n)]


def test_split_holds_out_its_share_of_each_relation_and_ignores_fact_order():
    facts = _facts({"A": 10, "B": 7, "C": 2, "D": 1})
    held = split_facts(facts, FactSplit(held_out=0.3, seed=1))
    count = {rel: sum(f.id in held for f in facts if f.relation == rel) for rel in "ABCD"}
    # round(0.3 n), at least one held out, at least one left to the objectives when a relation has two
    assert count == {"A": 3, "B": 2, "C": 1, "D": 1}
    shuffled = facts[:]
    random.Random(0).shuffle(shuffled)
    assert split_facts(shuffled, FactSplit(held_out=0.3, seed=1)) == held
    assert split_facts(facts, FactSplit(held_out=0.3, seed=2)) != held  # the seed chooses
    with pytest.raises(LegibilityError, match=r"data.fact_split.held_out must be in \(0, 1\), got 1.0"):
        split_facts(facts, FactSplit(held_out=1.0))


def test_corpus_and_scoring_groups_partition_the_facts_the_same_way():
    cfg = tiny_cfg()
    corpus = build_corpus(cfg.data)
    ids = {f.id for f in corpus.train_facts}
    objective = {f.id for f in corpus.objective_facts}
    assert corpus.held_out_ids and objective and not objective & corpus.held_out_ids
    assert objective | corpus.held_out_ids == ids
    held_eval, trained_eval = corpus.eval_split()
    assert {f.id for f in held_eval} == corpus.held_out_ids and {f.id for f in trained_eval} == objective
    groups = fact_groups(cfg)
    assert {f.id for f in groups[""]} == corpus.held_out_ids
    assert {f.id for f in groups[".trained_facts"]} == objective
    assert sorted(f.id for g in groups.values() for f in g) == sorted(f.id for f in all_template_facts(cfg))


@pytest.mark.parametrize(
    "name,extra",
    [("suppressability", {}), ("specific_suppressability", {"collateral": 1.0, "control": True})],
)
def test_no_held_out_fact_ever_reaches_an_objective(tmp_path, name, extra):
    """Every sequence an objective runs through the model, over many steps, is a prompt of an objective fact
    and never one of any held-out fact's prompts (training or held-out templates)."""
    cfg = tiny_cfg(regularizers=[{"name": name, "facts_per_step": 12, **extra}])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fact_split=FactSplit(held_out=0.5)))
    trainer = Trainer(cfg, tmp_path, progress=False, device="cpu")
    corpus = trainer.corpus

    def prompts(facts: list[Fact]) -> set[tuple[int, ...]]:
        return {q.input_ids for f in facts for pq in render(trainer.lm, f).prompts for q in pq.queries}

    everything = {f.id: f for f in corpus.train_facts}
    every_template = [
        Fact(f.subject, f.relation, f.object, everything[f.id].prompts + f.prompts, f.id)
        for f in corpus.eval_facts
    ]
    held = prompts([f for f in every_template if f.id in corpus.held_out_ids])
    allowed = prompts(corpus.objective_facts)
    assert held and allowed and not held & allowed
    pad = trainer.corpus.tokenizer.pad_token_id  # type: ignore[attr-defined]
    seen: list[tuple[int, ...]] = []

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.extend(tuple(t for t in row.tolist() if t != pad) for row in ids)

    (reg,) = trainer.regularizers
    handle = trainer.model.get_input_embeddings().register_forward_pre_hook(record, with_kwargs=True)
    try:
        for step in range(10):
            ctx = StepContext(trainer.model, trainer.sites, step, 10, torch.zeros(1, 2, dtype=torch.long))
            reg.penalty(ctx)
    finally:
        handle.remove()
    assert len(seen) >= 10 * 12  # not vacuous: every step ran its prompts
    assert not [s for s in seen if s in held]
    assert all(s in allowed for s in seen)


def test_objective_without_objective_facts_says_what_to_do(tmp_path):
    cfg = tiny_cfg(regularizers=[{"name": "suppressability"}])
    world = dataclasses.replace(cfg.data.world, n_subjects=1)  # one fact per relation: all held out
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, world=world, n_sentences=50))
    with pytest.raises(LegibilityError, match="no objective facts: data.fact_split holds out every fact"):
        Trainer(cfg, tmp_path, progress=False, device="cpu")


def test_trainer_reports_held_out_and_trained_fact_accuracy_apart(tmp_path):
    trainer = Trainer(tiny_cfg(), tmp_path, progress=False, device="cpu")
    held_eval, trained_eval = trainer.corpus.eval_split()
    assert len(trainer.eval_queries[""]) > 0 and len(trainer.eval_queries[".trained_facts"]) > 0
    n_held = sum(len(render(trainer.lm, f).prompts) for f in held_eval)
    assert len(trainer.eval_queries[""]) == n_held  # every held-out fact (< eval_facts of them), no other
    out = trainer.evaluate()
    assert {"fact_accuracy", "fact_p", "fact_accuracy.trained_facts", "fact_p.trained_facts"} <= set(out)


def test_score_groups_scores_each_group_apart_under_its_own_names(tmp_path, monkeypatch):
    """Held-out facts land in <run>/score under the bare metric names, the objective's facts in
    <run>/score_trained_facts under names ending in .trained_facts; each scorecard run sees one group only."""
    import legibility.training.experiment as experiment

    calls: dict[str, list[str]] = {}

    def fake_score(model_dir, facts, out_dir, cfg, device=None):
        calls[Path(out_dir).name] = [f.id for f in facts]
        value = {"value": float(len(facts))}
        return {"known_facts": len(facts) - 1, "metrics": {"suppressability": value, "x@P1": value}}

    monkeypatch.setattr(experiment, "score_model", fake_score)
    cfg = tiny_cfg()
    out = experiment.score_groups("unused", cfg, tmp_path, experiment.ScoreConfig())
    corpus = build_corpus(cfg.data)
    held, trained = sorted(corpus.held_out_ids), sorted(f.id for f in corpus.objective_facts)
    assert {k: sorted(v) for k, v in calls.items()} == {"score": held, "score_trained_facts": trained}
    assert out["metrics"] == {
        "suppressability": {"value": len(held)},
        "x@P1": {"value": len(held)},
        "suppressability.trained_facts": {"value": len(trained)},
        "x@P1.trained_facts": {"value": len(trained)},
    }
    assert (out["known_facts"], out["known_facts.trained_facts"]) == (len(held) - 1, len(trained) - 1)
