"""The known-fact scan as a map over facts (sharded, resumable, early exit) selects exactly what the
driver-only scan selected."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import asdict

import pytest

from helpers import tiny_facts, tiny_lm
from legibility.facts.render import render
from legibility.facts.types import Fact
from legibility.forward import predict
from legibility.pipeline import FactGroup, KnownConfig, KnownStage, known_needed, select_known


def many_facts() -> list[Fact]:
    """The tiny facts plus wrong ones (other objects of the relation): a mix the model knows and not."""
    facts = list(tiny_facts())
    by_rel = defaultdict(list)
    for f in tiny_facts():
        by_rel[f.relation].append(f)
    for fs in by_rel.values():
        objects = [f.object for f in fs]
        for f in fs:
            for o in objects:
                if o != f.object:
                    facts.append(Fact(f.subject, f.relation, o, f.prompts))
    return facts


def driver_only_select_known(lm, facts, cfg, min_prompts, seed):
    """The scan as it was before it became a map (every prompt asked, one fact after another)."""
    by_rel = defaultdict(list)
    for f in facts:
        by_rel[f.relation].append(f)
    dropped, prompt_skips, kept, examined = Counter(), Counter(), [], 0
    for rel, candidates in by_rel.items():
        pool = list(candidates)
        random.Random(f"{seed}|{rel}").shuffle(pool)
        pool = pool if cfg.limit is None else pool[: cfg.limit * cfg.scan]
        n_kept = 0
        for fact in pool:
            if cfg.limit is not None and n_kept >= cfg.limit:
                break
            examined += 1
            r = render(lm, fact)
            prompt_skips.update(r.skipped)
            if not r.prompts:
                dropped[f"no usable prompt ({', '.join(sorted(r.skipped))})"] += 1
                continue
            if len(r.prompts) < min_prompts:
                dropped[f"fewer than {min_prompts} usable prompts"] += 1
                continue
            ranks = predict(lm, [p.queries[0] for p in r.prompts]).rank
            if float((ranks < cfg.top_k).float().mean()) < cfg.min_share:
                dropped["not known by the model"] += 1
                continue
            kept.append(r)
            n_kept += 1
    report = {
        "facts_in": len(facts),
        "examined": examined,
        "kept": len(kept),
        "dropped": dict(dropped),
        "prompts_skipped": dict(prompt_skips),
        "kept_by_relation": dict(Counter(r.fact.relation for r in kept)),
        "known": asdict(cfg),
    }
    return [r.fact.id for r in kept], report


# (a tiny random model ranks targets near chance: top-8/12 of 35 tokens gives a mix of known and not)
CONFIGS = [
    (KnownConfig(top_k=8, min_share=0.5), 2),
    (KnownConfig(top_k=12, min_share=0.6), 2),
    (KnownConfig(top_k=12, min_share=0.5, limit=2, scan=3), 2),
    (KnownConfig(top_k=12, min_share=1.0, limit=1), 3),
    (KnownConfig(top_k=2, min_share=0.0), 1),
]


@pytest.mark.parametrize(("cfg", "min_prompts"), CONFIGS)
def test_scan_selects_what_the_driver_only_scan_selected(cfg, min_prompts, tmp_path):
    lm = tiny_lm("llama")
    facts = many_facts()
    ids, report = driver_only_select_known(lm, facts, cfg, min_prompts, seed=3)
    sel = select_known(lm, facts, cfg, min_prompts, seed=3, progress=False, store=tmp_path / "k.jsonl")
    assert [r.fact.id for r in sel.kept] == ids
    assert sel.report == report
    assert 0 < len(ids) < len(facts) or cfg.min_share == 0.0  # a real mix, not all or nothing


def test_known_check_stops_once_decided_with_the_decision_of_all_prompts():
    """Facts checked together in shared batches, each asked only until its answer is decided."""
    lm = tiny_lm("llama")
    facts = [render(lm, f) for f in many_facts()]
    rec = KnownStage(KnownConfig(top_k=8, min_share=0.5))(lm)(FactGroup.of(facts))
    assert rec["fact_id"] == FactGroup.of(facts).id != FactGroup.of(facts[1:]).id
    asked_fewer, decisions = 0, Counter()
    for r in facts:
        ranks = predict(lm, [p.queries[0] for p in r.prompts]).rank
        full = (ranks < 8).sum().item() >= known_needed(len(r.prompts), 0.5)
        assert rec["known"][r.fact.id] == full
        asked_fewer += rec["asked"][r.fact.id] < len(r.prompts)
        decisions[full] += 1
    assert asked_fewer > 0 and decisions[True] and decisions[False]  # early exits, both answers
    assert known_needed(3, 0.5) == 2 and known_needed(4, 0.5) == 2 and known_needed(2, 1.0) == 2
    assert known_needed(5, 0.0) == 0


def test_scan_killed_midway_resumes_from_its_store(tmp_path, monkeypatch):
    lm = tiny_lm("llama")
    facts = many_facts()
    cfg = KnownConfig(top_k=8, min_share=0.5)
    store = tmp_path / "known.jsonl"
    real = KnownStage.__call__
    done: list[str] = []

    def dies_after_two_groups(self, lm):
        compute = real(self, lm)

        def run(group):
            if len(done) == 2:
                raise KeyboardInterrupt  # as a kill: nothing after the second group is written
            done.append(group.id)
            return compute(group)

        return run

    monkeypatch.setattr(KnownStage, "__call__", dies_after_two_groups)
    with pytest.raises(KeyboardInterrupt):
        select_known(lm, facts, cfg, seed=1, progress=False, store=store, group=4)
    assert len(store.read_text().splitlines()) == 2
    asked: list[str] = []

    def counting(self, lm):
        compute = real(self, lm)
        return lambda group: (asked.append(group.id), compute(group))[1]

    monkeypatch.setattr(KnownStage, "__call__", counting)
    resumed = select_known(lm, facts, cfg, seed=1, progress=False, store=store, group=4)
    usable = [f for f in facts if len(render(lm, f).prompts) >= 2]
    assert len(asked) == -(-len(usable) // 4) - 2 and not set(asked) & set(done)  # only the rest
    monkeypatch.setattr(KnownStage, "__call__", real)
    fresh = select_known(lm, facts, cfg, seed=1, progress=False, store=tmp_path / "fresh.jsonl", group=5)
    assert [r.fact.id for r in resumed.kept] == [r.fact.id for r in fresh.kept]
    assert resumed.report == fresh.report and resumed.kept
