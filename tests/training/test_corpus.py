"""Synthetic world, corpus sources, tokenizer, batches."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from train_helpers import tiny_cfg

from legibility import LegibilityError
from legibility.facts.synthetic import TEMPLATES, WorldConfig, make_world
from legibility.training.config import DataConfig, PararelSource, TextSource, TokenizerConfig
from legibility.training.corpus import build_corpus


def test_world_is_deterministic_and_sized():
    cfg = WorldConfig(n_subjects=50, n_relations=3, n_objects=7, held_out_templates=2, seed=4)
    a, b = make_world(cfg), make_world(cfg)
    assert a.facts == b.facts
    assert len(a.facts) == 150
    assert {f.relation for f in a.facts} == set(list(TEMPLATES)[:3])
    for rel in a.train_templates:
        assert len(a.train_templates[rel]) == 4 and len(a.held_out_templates[rel]) == 2
        assert len({f.object for f in a.facts if f.relation == rel}) <= 7
    assert make_world(WorldConfig(seed=5)).facts != make_world(WorldConfig(seed=4)).facts
    # a fact's object identifies it: names are unique across subjects and relations
    subjects = {f.subject for f in a.facts}
    assert not subjects & {f.object for f in a.facts}


def test_world_sentences_skip_held_out_templates_and_follow_zipf():
    world = make_world(WorldConfig(n_subjects=40, n_relations=2, zipf=1.0))
    sentences = world.sentences(4000)
    held_starts = {t.split("[X]")[0] for ts in world.held_out_templates.values() for t in ts}
    train_starts = {t.split("[X]")[0] for ts in world.train_templates.values() for t in ts}
    only_held = held_starts - train_starts
    assert only_held and not any(s.startswith(tuple(p for p in only_held if p)) for s in sentences)
    counts = Counter(
        next(subj for subj in s.split() if subj in {f.subject for f in world.facts}) for s in sentences
    )
    top, last = world.facts[0].subject, world.facts[-1].subject
    assert counts[top] > 10 * counts[last]  # rank 1 vs rank 40 with zipf 1
    assert sum(world.weights) == pytest.approx(1.0)


def test_world_rejects_bad_sizes():
    with pytest.raises(LegibilityError, match="n_relations must be in 1..8"):
        make_world(WorldConfig(n_relations=9))
    with pytest.raises(LegibilityError, match="held_out_templates"):
        make_world(WorldConfig(held_out_templates=6))


def test_corpus_streams_batches_and_eval_facts():
    corpus = build_corpus(tiny_cfg().data)
    tok = corpus.tokenizer
    assert corpus.train_ids.dtype == torch.long and corpus.val_ids.numel() > 0
    b1, b2 = corpus.batch(3, 4, 16, seed=0), corpus.batch(3, 4, 16, seed=0)
    assert b1.shape == (4, 17) and torch.equal(b1, b2)
    assert not torch.equal(b1, corpus.batch(4, 4, 16, seed=0))
    # word-level tokenizer: every object of the world is a single token
    for f in corpus.eval_facts:
        assert len(tok(" " + f.object, add_special_tokens=False)["input_ids"]) == 1
    eval_prompts = {p for f in corpus.eval_facts for p in f.prompts}
    train_prompts = {p for f in corpus.train_facts for p in f.prompts}
    assert eval_prompts and not eval_prompts & train_prompts


def test_pararel_and_text_sources(tmp_path):
    (tmp_path / "a.txt").write_text("zebra quokka line one\n\nzebra quokka line two\n", encoding="utf-8")
    data = DataConfig(
        world=None,
        pararel=PararelSource(relations=["P36"], limit=10, held_out_templates=2),
        text=TextSource(dir=str(tmp_path), share=0.5),
        n_sentences=200,
        tokenizer=TokenizerConfig(kind="bpe", vocab_size=400),
    )
    corpus = build_corpus(data)
    text = corpus.tokenizer.decode(corpus.train_ids[:2000].tolist())
    assert "quokka" in text
    assert len(corpus.eval_facts) == 10 and all(len(f.prompts) == 2 for f in corpus.eval_facts)
    assert all(
        set(f.prompts).isdisjoint(g.prompts)
        for f, g in zip(corpus.eval_facts, corpus.train_facts, strict=True)
    )


def test_text_source_errors(tmp_path):
    with pytest.raises(LegibilityError, match="is not a folder"):
        build_corpus(DataConfig(world=None, text=TextSource(dir=str(tmp_path / "missing"))))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(LegibilityError, match="not UTF-8"):
        build_corpus(DataConfig(world=None, text=TextSource(dir=str(tmp_path))))


def test_held_out_text_lines_never_reach_training(tmp_path):
    """data.text.val_lines holds out distinct lines (every copy of them) for the general-text loss."""
    import itertools

    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    lines = [" ".join(c) for c in itertools.permutations(words, 3)]  # 120 distinct lines, 6 words
    (tmp_path / "a.txt").write_text("\n".join(lines + lines[:30]) + "\n", encoding="utf-8")  # repeats
    data = DataConfig(
        world=WorldConfig(n_subjects=10, n_relations=2, n_objects=5),
        text=TextSource(dir=str(tmp_path), share=0.5, val_lines=0.25),
        n_sentences=400,
        tokenizer=TokenizerConfig(vocab_size=400),
    )
    corpus = build_corpus(data)
    tok = corpus.tokenizer

    def docs(ids):
        return {d.strip() for d in tok.decode(ids.tolist()).split("[EOS]") if d.strip()}

    held, trained = docs(corpus.text_val_ids), docs(corpus.train_ids) | docs(corpus.val_ids)
    assert len(held) == 30 and held <= set(lines)
    assert not held & trained and (set(lines) - held) & trained
    assert torch.equal(build_corpus(data).text_val_ids, corpus.text_val_ids)  # deterministic
    batches = corpus.text_val_batches(100, 4, 8)
    assert batches and all(b.shape[1] == 9 for b in batches)
    none = build_corpus(dataclasses.replace(data, text=TextSource(dir=str(tmp_path), val_lines=0.0)))
    assert none.text_val_ids is None and none.text_val_batches(4, 4, 8) == []
    with pytest.raises(LegibilityError, match="val_lines"):
        build_corpus(dataclasses.replace(data, text=TextSource(dir=str(tmp_path), val_lines=1.0)))
