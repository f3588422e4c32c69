"""Attribution methods: the fast engine equals the reference on every family; approximate methods are close."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import FAMILIES, MASKED, tiny_facts, tiny_lm
from legibility.attribution import (
    METHODS,
    AttributionConfig,
    attribute,
    attribute_facts,
    attribute_prompts,
    engine,
)
from legibility.errors import LegibilityError
from legibility.facts.render import render
from legibility.facts.types import PromptQueries, Query
from legibility.forward import answer_logits, make_batch
from legibility.models import sites

CFG = AttributionConfig(steps=5, batch_size=16)


def queries_of(lm, n: int = 2) -> list[Query]:
    return [p.queries[0] for f in tiny_facts()[:n] for p in render(lm, f).prompts][:n]


def multi_token(lm) -> PromptQueries:
    """A two-token target (teacher-forced): the second query's input holds the gold first token."""
    ids = lm.encode("the capital of germany is")
    a, b = lm.encode("berlin")[-1], lm.encode("city")[-1]
    return PromptQueries("x", (Query(tuple(ids), len(ids) - 1, a), Query((*ids, a), len(ids), b)))


def assert_close(fast: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    scale = ref.abs().max()
    assert scale > 0, "reference scores are all zero: the comparison would prove nothing"
    assert (fast - ref).abs().max() <= rel * scale, float((fast - ref).abs().max() / scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_tail_matches_hf_forward(family):
    """The per-family tail and the block-by-block replay reproduce the plain HF logits (no replacement)."""
    lm = tiny_lm(family)
    tail = engine.tail_for(lm)
    assert tail is not None
    for q in queries_of(lm, 2):
        run = engine.clean_run(lm, q)
        n = lm.sites.n_layers
        layers = list(range(n))
        with torch.no_grad():
            logits = engine.rows_logits(
                lm, tail, run, layers, run.acts[0]
            )  # row l "replaces" layer l by itself
            expected = answer_logits(lm, make_batch(lm, [q]))
        torch.testing.assert_close(logits, expected.expand(n, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_equals_reference(family):
    lm = tiny_lm(family)
    qs = queries_of(lm, 2)
    assert_close(attribute(lm, qs, "ig", CFG), attribute(lm, qs, "ig-reference", CFG))


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - MASKED))
def test_fast_equals_reference_multi_token(family):
    lm = tiny_lm(family)
    prompt = multi_token(lm)
    fast = attribute_prompts(lm, [prompt], "ig", CFG)
    assert_close(fast, attribute_prompts(lm, [prompt], "ig-reference", CFG))
    # the second token's query differs from the first (the gold prefix is in its input)
    per_token = attribute(lm, list(prompt.queries), "ig", CFG)
    assert not torch.allclose(per_token[0], per_token[1])


def test_fast_handles_eleuther_sites_and_endpoints():
    lm = tiny_lm("gpt2", site="eleuther")  # GPT-2 pre-activation: the output of mlp.c_fc
    cfg = dataclasses.replace(CFG, quadrature="endpoints")
    qs = queries_of(lm, 2)
    assert_close(attribute(lm, qs, "ig", cfg), attribute(lm, qs, "ig-reference", cfg))


def test_fast_chunking_does_not_change_scores():
    lm = tiny_lm("llama")
    qs = queries_of(lm, 1)
    small = attribute(lm, qs, "ig", dataclasses.replace(CFG, max_rows=3))  # chunks split layers
    big = attribute(lm, qs, "ig", dataclasses.replace(CFG, max_rows=1000))
    assert_close(small, big, rel=1e-6)


def test_generic_fallback_for_unknown_family(monkeypatch):
    lm = tiny_lm("qwen2")
    qs = queries_of(lm, 1)
    ref = attribute(lm, qs, "ig-reference", CFG)
    # the engine may not run the family: the generic whole-model path runs
    monkeypatch.setitem(sites.FAMILIES, "qwen2", dataclasses.replace(sites.FAMILIES["qwen2"], engine=False))
    assert engine.tail_for(lm) is None
    assert_close(attribute(lm, qs, "ig", CFG), ref)


def test_fast_leaves_parameters_trainable():
    lm = tiny_lm("llama")
    attribute(lm, queries_of(lm, 1), "ig", CFG)
    assert all(p.requires_grad for p in lm.model.parameters())


def test_registry_labels_and_errors():
    assert METHODS["ig"].exact and METHODS["ig-reference"].exact
    for name in ("ig-gauss", "grad-x-act", "ig-prefilter"):
        assert not METHODS[name].exact
    with pytest.raises(LegibilityError, match="available"):
        attribute(tiny_lm("llama"), queries_of(tiny_lm("llama"), 1), "nope")
    with pytest.raises(LegibilityError, match="no queries"):
        attribute(tiny_lm("llama"), [], "ig")


def test_gauss_legendre_weights_integrate_polynomials():
    cfg = AttributionConfig(steps=4, quadrature="gauss-legendre")
    x, w = cfg.alphas(), cfg.weights()
    assert x.min() > 0 and x.max() < 1
    for k in range(8):  # n nodes integrate degree <= 2n - 1 exactly: int_0^1 x^k = 1 / (k + 1)
        assert abs(float((w * x**k).sum()) - 1 / (k + 1)) < 1e-6


def test_gauss_method_close_to_ig_with_many_nodes():
    lm = tiny_lm("llama")
    qs = queries_of(lm, 1)
    fine = attribute(lm, qs, "ig", AttributionConfig(steps=200, batch_size=200))  # near the integral
    gauss = attribute(lm, qs, "ig-gauss", AttributionConfig(nodes=8))
    assert (gauss - fine).abs().max() < 0.02 * fine.abs().max()


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_grad_x_act_is_ig_with_one_point_at_alpha_one(family):
    lm = tiny_lm(family)
    qs = queries_of(lm, 2)
    # steps=1 "endpoints" is linspace(0, 1, 1) = [0]; build alpha = 1 through the engine directly instead
    from legibility.attribution.fast import layer_path_gradients

    gxa = attribute(lm, qs, "grad-x-act", CFG)
    for qi, q in enumerate(qs):
        acts, grads = layer_path_gradients(lm, q, range(lm.sites.n_layers), torch.ones(1), 64)
        assert_close(gxa[qi], acts * grads[:, 0])


def test_prefilter_gives_exact_ig_on_candidate_layers():
    lm = tiny_lm("llama")
    qs = queries_of(lm, 1)
    exact = attribute(lm, qs, "ig", CFG)[0]
    pre = attribute(lm, qs, "ig-prefilter", dataclasses.replace(CFG, candidates=3))[0]
    kept = pre.abs().sum(1) > 0
    assert 0 < kept.sum() < lm.sites.n_layers or kept.all()
    assert_close(pre[kept], exact[kept])
    assert (pre[~kept] == 0).all()


def all_queries(lm) -> list[Query]:
    """Every first-token query of the tiny facts: 24 prompts of 4 to 6 tokens (8 for masked LMs)."""
    return [p.queries[0] for f in tiny_facts() for p in render(lm, f).prompts]


@pytest.mark.parametrize("family", FAMILIES)
def test_pack_replay_matches_hf_forward(family):
    """A pack of queries of different lengths: row r of query q replays query q's own clean logits."""
    lm = tiny_lm(family)
    qs = all_queries(lm)[::2]
    assert len({len(q.input_ids) for q in qs}) > 1, "the pack must mix prompt lengths"
    pack = engine.clean_pack(lm, [q for q in qs if engine.is_cached(lm, q) == engine.is_cached(lm, qs[0])])
    n, nq = lm.sites.n_layers, len(pack.queries)
    layers = [layer for layer in range(n) for _ in range(nq)]
    row_query = torch.arange(nq).repeat(n)
    with torch.no_grad():
        logits = engine.rows_logits(
            lm, engine.tail_for(lm), pack, layers, pack.acts[row_query, layers], row_query
        )
        expected = answer_logits(lm, make_batch(lm, pack.queries))
    torch.testing.assert_close(logits, expected[row_query], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_equals_reference_across_prompts(family):
    """Many prompts of different lengths in one call, chunks that mix queries and split layers."""
    lm = tiny_lm(family)
    qs = all_queries(lm)[:7]
    packed = attribute(lm, qs, "ig", dataclasses.replace(CFG, max_rows=7, pack_queries=4))
    assert_close(packed, attribute(lm, qs, "ig-reference", CFG))
    assert_close(attribute(lm, qs, "ig-per-query", CFG), packed)


def test_rows_start_at_the_site_where_the_family_allows():
    assert engine.skips_to_site(tiny_lm("llama"), engine.tail_for(tiny_lm("llama")))
    assert engine.skips_to_site(tiny_lm("gpt2"), engine.tail_for(tiny_lm("gpt2")))
    assert engine.skips_to_site(tiny_lm("gemma2"), engine.tail_for(tiny_lm("gemma2")))
    assert not engine.skips_to_site(tiny_lm("bert"), engine.tail_for(tiny_lm("bert")))
    eleuther = tiny_lm("gpt2", site="eleuther")  # the site is not the output projection's input
    assert not engine.skips_to_site(eleuther, engine.tail_for(eleuther))
    lm = tiny_lm("llama")
    qs = queries_of(lm, 2)
    skipped = attribute(lm, qs, "ig", CFG)
    assert_close(skipped, attribute(lm, qs, "ig", dataclasses.replace(CFG, skip_to_site=False)))


def test_chunk_size_follows_memory_and_cap(monkeypatch):
    lm = tiny_lm("llama")
    pack = engine.clean_pack(lm, queries_of(lm, 1))
    per_row = engine.row_bytes(lm, pack.width, cached=True)
    monkeypatch.setattr(engine, "free_memory", lambda device: 10 * per_row)
    assert engine.chunk_rows(lm, pack, None) == 5  # half of free memory
    assert engine.chunk_rows(lm, pack, 3) == 3
    monkeypatch.setattr(engine, "free_memory", lambda device: 0)
    assert engine.chunk_rows(lm, pack, None) == 1


def test_reduced_precision_methods_are_labelled_approximate():
    lm = tiny_lm("llama")
    qs = queries_of(lm, 2)
    assert not METHODS["ig-bf16"].exact and not METHODS["ig-tf32"].exact
    exact = attribute(lm, qs, "ig", CFG)
    assert_close(attribute(lm, qs, "ig-tf32", CFG), exact, rel=1e-4)  # CPU: TF32 does not exist
    bf16 = attribute(lm, qs, "ig-bf16", CFG)
    err = float((bf16 - exact).abs().max() / exact.abs().max())
    assert 0 < err < 0.2, err  # close, but not equal: bfloat16 keeps 8 bits of mantissa


def test_attribute_facts_splits_one_packed_call_per_fact():
    lm = tiny_lm("llama")
    facts = [render(lm, f).prompts for f in tiny_facts()[:3]]
    got = attribute_facts(lm, facts, "ig", CFG)
    assert [g.shape[0] for g in got] == [len(p) for p in facts]
    for g, prompts in zip(got, facts, strict=True):
        assert_close(g, attribute_prompts(lm, prompts, "ig", CFG))
    with pytest.raises(LegibilityError, match="no prompts"):
        attribute_facts(lm, [[]])


def test_out_of_memory_halves_the_chunk_and_keeps_the_scores(monkeypatch):
    lm = tiny_lm("llama")
    qs = queries_of(lm, 2)
    expected = attribute(lm, qs, "ig", CFG)
    real = engine.rows_logits
    sizes = []

    def tight(lm, tail, pack, layers, points, row_query=None):
        sizes.append(len(layers))
        if len(layers) > 4:
            raise torch.cuda.OutOfMemoryError("planted")
        return real(lm, tail, pack, layers, points, row_query)

    monkeypatch.setattr(engine, "rows_logits", tight)
    assert_close(attribute(lm, qs, "ig", dataclasses.replace(CFG, max_rows=16)), expected, rel=1e-6)
    assert sizes[0] == 16 and max(s for s in sizes if s <= 4) == 4
