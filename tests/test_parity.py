"""Parity with EleutherAI's ``knowledge-neurons`` package (0.0.2, dev extra), on a tiny *trained* GPT-2 and BERT.

With the EleutherAI options (``site="eleuther"``, ``quadrature="endpoints"``) our scores, knowledge neurons
and suppression/amplification effects equal the package's; the paper-faithful default differs from it only
where docs/parity.md says, and each such difference is pinned here. Tolerances are absolute (scores here
reach ~0.3, probabilities are <= 1); measured differences are listed in docs/parity.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from helpers import tiny_config, tiny_facts
from legibility import (
    AttributionConfig,
    Fact,
    LoadedModel,
    PromptQueries,
    Query,
    amplify,
    attribute,
    attribute_prompts,
    load_model,
    predict,
    render,
    suppress,
)
from legibility.forward import answer_activations
from legibility.interventions import group_by_layer
from legibility.neurons import NeuronConfig, knowledge_neurons
from trained import cached, gpt2_tokenizer, single_thread

knowledge_neurons_pkg = pytest.importorskip(
    "knowledge_neurons", reason="parity tests need the dev extra knowledge-neurons==0.0.2"
)
KnowledgeNeurons = knowledge_neurons_pkg.KnowledgeNeurons

STEPS = 20
PKG_BATCH = 10  # the package's batch size (must divide STEPS); it does not change the numbers
ATOL = 1e-6  # absolute tolerance on scores and probabilities
RTOL_OF_MAX = 1e-5  # and score differences stay below this fraction of the prompt's largest |score|
ELEUTHER = AttributionConfig(steps=STEPS, quadrature="endpoints")
PAPER = AttributionConfig(steps=STEPS)  # left Riemann sum, alpha_i = i/m
FAMILIES = {"gpt2": "gpt", "bert": "bert"}  # our family -> the package's model_type
FACT_INDICES = (0, 5)  # tiny_facts(): capital of germany (3 prompts), language of france (2 prompts)


@dataclass
class Parity:
    family: str
    model: nn.Module
    kn: Any  # the package's KnowledgeNeurons on the same model
    eleuther: LoadedModel  # site="eleuther"
    paper: LoadedModel  # site="ffn", the default
    facts: list[Fact]

    def prompts(self, fact: Fact) -> list[PromptQueries]:
        rendered = render(self.eleuther, fact)
        assert not rendered.skipped, rendered.skipped
        return rendered.prompts

    def all_prompts(self) -> list[tuple[Fact, PromptQueries]]:
        return [(f, pq) for f in self.facts for pq in self.prompts(f)]

    def package_scores(self, text: str, target: str) -> torch.Tensor:
        return self.kn.get_scores(text, target, batch_size=PKG_BATCH, steps=STEPS, pbar=False)


def _memoize_scores(kn) -> None:
    """The package recomputes a prompt's scores in every call (get_coarse_neurons, get_refined_neurons);
    its computation is deterministic, so we keep its first answer per prompt to keep the tests fast."""
    original, memo = kn.get_scores, {}

    def get_scores(prompt, ground_truth, batch_size=10, steps=20, pbar=True):
        key = (prompt, ground_truth, batch_size, steps)
        if key not in memo:
            memo[key] = original(prompt, ground_truth, batch_size=batch_size, steps=steps, pbar=False)
        return memo[key]

    kn.get_scores = get_scores


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def trained_root(pytestconfig, tmp_path_factory):
    cache = getattr(pytestconfig, "cache", None)  # absent under -p no:cacheprovider: train every session
    return cache.mkdir("legibility-trained") if cache else tmp_path_factory.mktemp("legibility-trained")


@pytest.fixture(scope="module", params=list(FAMILIES))
def parity(request, trained_root) -> Parity:
    family = request.param
    model, tok = cached(family, trained_root)
    kn = KnowledgeNeurons(model, tok, model_type=FAMILIES[family], device="cpu")
    _memoize_scores(kn)
    eleuther = load_model(model, tok, site="eleuther")
    paper = load_model(model, tok)
    facts = [tiny_facts()[i] for i in FACT_INDICES]
    return Parity(family, model, kn, eleuther, paper, facts)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_trained_models_know_their_facts(parity):
    queries = [q for _, pq in parity.all_prompts() for q in pq.queries]
    pred = predict(parity.paper, queries)
    assert bool((pred.rank == 0).all()), pred.rank
    assert pred.prob.min().item() > 0.5


def test_package_reads_the_same_query(parity):
    for fact, pq in parity.all_prompts():
        (q,) = pq.queries
        encoded, mask_idx, target = parity.kn._prepare_inputs(pq.text, fact.object)
        assert encoded["input_ids"][0].tolist() == list(q.input_ids)
        n = len(q.input_ids)
        assert mask_idx % n == q.answer_pos  # the package's -1 = our last position for GPT-2
        # The package encodes a GPT target with tokenizer.encode (a list), a BERT one with convert_tokens_to_ids.
        assert target == ([q.target_id] if parity.family == "gpt2" else q.target_id)


@pytest.mark.parametrize("method", ["ig", "ig-reference"])
def test_scores_match_package(parity, method):
    for fact, pq in parity.all_prompts():
        ref = parity.package_scores(pq.text, fact.object)
        ours = attribute(parity.eleuther, pq.queries, method, ELEUTHER)[0]
        assert ours.shape == ref.shape
        top = ref.abs().max().item()
        assert top > 1e-4, "scores too small for the comparison to mean anything"
        d = _max_diff(ours, ref)
        assert d <= ATOL, (pq.text, d)
        assert d <= RTOL_OF_MAX * top, (pq.text, d, top)


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_knowledge_neurons_match_package(parity, share):
    # t = 0.2 is the paper's coarse threshold (the package's default adaptive threshold is 0.3).
    t, found = 0.2, 0
    for fact in parity.facts:
        prompts = parity.prompts(fact)
        texts = [pq.text for pq in prompts]
        scores = attribute_prompts(parity.eleuther, prompts, "ig", ELEUTHER)
        ours = knowledge_neurons(fact.id, fact.relation, scores, NeuronConfig(threshold=t, share=share))
        for text, coarse in zip(texts, ours.coarse, strict=True):
            theirs = parity.kn.get_coarse_neurons(
                text, fact.object, batch_size=PKG_BATCH, steps=STEPS, adaptive_threshold=t, pbar=False
            )
            assert sorted(map(tuple, theirs)) == sorted(coarse)
        refined = parity.kn.get_refined_neurons(
            texts,
            fact.object,
            p=share,
            batch_size=PKG_BATCH,
            steps=STEPS,
            coarse_adaptive_threshold=t,
            quiet=True,
        )
        assert sorted(map(tuple, refined)) == ours.neurons
        found += len(ours.neurons)
    assert found, "empty sets only would make the comparison vacuous"


def _top_neurons(scores: torch.Tensor, per_layer: int = 5) -> list[tuple[int, int]]:
    """The ``per_layer`` highest-scoring neurons of every layer (so patches span several layers; fewer
    barely move the trained BERT's ~0.99 probabilities)."""
    return [
        (layer, int(i)) for layer in range(scores.shape[0]) for i in scores[layer].topk(per_layer).indices
    ]


def _our_probs(lm: LoadedModel, pq: PromptQueries, op, neurons) -> tuple[float, float]:
    before = predict(lm, pq.queries).prob[0].item()
    with op(lm, group_by_layer(neurons)):
        after = predict(lm, pq.queries).prob[0].item()
    return before, after


def test_suppress_and_amplify_match_package(parity):
    for fact, pq in parity.all_prompts():
        neurons = _top_neurons(parity.package_scores(pq.text, fact.object))
        for ours_op, theirs_op in (
            (suppress, parity.kn.suppress_knowledge),
            (amplify, parity.kn.enhance_knowledge),
        ):
            res, _ = theirs_op(pq.text, fact.object, [list(n) for n in neurons], quiet=True)
            before, after = _our_probs(parity.eleuther, pq, ours_op, neurons)
            assert abs(before - res["before"]["gt_prob"]) <= ATOL
            assert abs(after - res["after"]["gt_prob"]) <= ATOL, (pq.text, ours_op.__name__)
            assert abs(after - before) > 1e-4, "the intervention should change p(target)"


# ---- where the paper-faithful default differs from the package, each difference pinned ----


def test_quadrature_grids():
    """The package integrates over linspace(0, 1, m) (alpha = i/(m-1), both end points); the paper's left
    Riemann sum uses alpha = i/m, i = 0..m-1 (no alpha = 1). Both weight every point by 1/m."""
    package_grid = KnowledgeNeurons.scaled_input(torch.ones(1, 1), steps=STEPS)[:, 0]
    torch.testing.assert_close(ELEUTHER.alphas(), package_grid, atol=0, rtol=0)
    assert package_grid[-1].item() == 1.0
    left = PAPER.alphas()
    torch.testing.assert_close(left, torch.arange(STEPS) / STEPS, atol=0, rtol=0)
    assert left[0].item() == 0.0 and left[-1].item() == pytest.approx(1 - 1 / STEPS)
    torch.testing.assert_close(PAPER.weights(), ELEUTHER.weights(), atol=0, rtol=0)


def _differs(a: torch.Tensor, b: torch.Tensor, frac: float = 0.01) -> bool:
    """a and b differ by more than ``frac`` of b's largest |score| somewhere."""
    return _max_diff(a, b) > frac * b.abs().max().item()


def test_default_differs_from_package_only_where_documented(parity):
    queries = [pq.queries[0] for _, pq in parity.all_prompts()]
    paper_acts = answer_activations(parity.paper, queries)
    eleuther_acts = answer_activations(parity.eleuther, queries)
    if parity.family == "bert":
        # BERT: the same neurons (output of `intermediate` = input of output.dense) ...
        torch.testing.assert_close(paper_acts, eleuther_acts, atol=0, rtol=0)
    else:
        # GPT-2: the package reads c_fc's output, before the GELU; the paper's neuron is after it.
        act = parity.model.transformer.h[0].mlp.act  # type: ignore[union-attr]
        torch.testing.assert_close(paper_acts, act(eleuther_acts), atol=ATOL, rtol=0)
        assert _max_diff(paper_acts, eleuther_acts) > 0.1
    for fact, pq in parity.all_prompts():
        ref = parity.package_scores(pq.text, fact.object)
        default = attribute(parity.paper, pq.queries, "ig", PAPER)[0]
        paper_site_package_grid = attribute(parity.paper, pq.queries, "ig", ELEUTHER)[0]
        package_site_left = attribute(parity.eleuther, pq.queries, "ig", PAPER)[0]
        assert _differs(default, ref), pq.text
        assert _differs(package_site_left, ref), pq.text  # the quadrature alone changes the scores
        if parity.family == "bert":
            # ... so with the package's alpha grid the default site gives the package's scores.
            assert _max_diff(paper_site_package_grid, ref) <= ATOL, pq.text
        else:
            assert _differs(paper_site_package_grid, ref), pq.text  # the site alone changes them too


def test_interventions_at_default_site(parity):
    """BERT: same site, same effects. GPT-2: zeroing before or after the GELU is the same (GELU(0) = 0), but
    doubling is not (GELU(2z) != 2 GELU(z)), so only amplification differs from the package."""
    fact = parity.facts[0]
    pq = parity.prompts(fact)[0]
    neurons = _top_neurons(parity.package_scores(pq.text, fact.object))
    theirs = {}
    for name, fn in (("suppress", parity.kn.suppress_knowledge), ("amplify", parity.kn.enhance_knowledge)):
        res, _ = fn(pq.text, fact.object, [list(n) for n in neurons], quiet=True)
        theirs[name] = res["after"]["gt_prob"]
    _, suppressed = _our_probs(parity.paper, pq, suppress, neurons)
    _, amplified = _our_probs(parity.paper, pq, amplify, neurons)
    assert abs(suppressed - theirs["suppress"]) <= ATOL
    if parity.family == "bert":
        assert abs(amplified - theirs["amplify"]) <= ATOL
    else:
        assert abs(amplified - theirs["amplify"]) > 1e-4


def test_package_does_not_put_the_model_in_eval_mode():
    """The package runs the model in whatever mode it is given (dropout active in training mode);
    load_model always switches to eval mode."""
    import transformers as tr

    model = tr.GPT2LMHeadModel(tiny_config("gpt2"))
    assert model.training
    KnowledgeNeurons(model, gpt2_tokenizer(), model_type="gpt", device="cpu")
    assert model.training
    load_model(model, gpt2_tokenizer())
    assert not model.training


@pytest.mark.parametrize("parity", ["gpt2"], indirect=True)  # the package's multi-token path is GPT-only
def test_multi_token_targets_greedy_vs_teacher_forced(parity):
    """For a multi-token target the package conditions target token j on the model's *greedy* continuation;
    we condition on the gold tokens (teacher forcing). Both average scores over target tokens and multiply
    probabilities, so they agree exactly when the greedy continuation is the gold one."""
    lm, prompt = parity.eleuther, "the capital of germany is [Y]"
    for obj, greedy_is_gold in (("berlin .", True), ("paris .", False)):
        (pq,) = render(lm, Fact("germany", "P36", obj, (prompt,)), multi_token=True).prompts
        gold = [q.target_id for q in pq.queries]
        assert len(gold) == 2
        # The package appends tokenizer.decode(argmax) to the prompt *string*; a trailing space keeps the
        # word-level tokenizer's words apart ("... is " + "berlin") without changing the prompt's tokens.
        text = pq.text + " "
        ref = parity.package_scores(text, obj)
        gt_prob, _, _, greedy = parity.kn._generate(text, obj)
        assert (greedy == gold) is greedy_is_gold
        # The package's numbers are ours on the greedy context ...
        prefix = list(pq.queries[0].input_ids)
        greedy_queries = [
            Query(tuple(prefix + greedy[:j]), len(prefix) + j - 1, t) for j, t in enumerate(gold)
        ]
        greedy_pq = PromptQueries(pq.text, tuple(greedy_queries))
        assert _max_diff(attribute_prompts(lm, [greedy_pq], "ig", ELEUTHER)[0], ref) <= ATOL
        assert abs(math.prod(predict(lm, greedy_queries).prob.tolist()) - gt_prob) <= ATOL
        # ... and our teacher-forced ones equal them only when the greedy continuation is the gold one.
        ours = attribute_prompts(lm, [pq], "ig", ELEUTHER)[0]  # mean over target tokens, as the package
        ours_prob = math.prod(predict(lm, pq.queries).prob.tolist())
        if greedy_is_gold:
            assert _max_diff(ours, ref) <= ATOL
            assert abs(ours_prob - gt_prob) <= ATOL
        else:
            # The second token's activations are computed over "paris" (ours) or "berlin" (package). (Its
            # probability, p(. | ... paris) vs p(. | ... berlin), may by chance be close: not asserted.)
            assert _differs(ours, ref, frac=0.05)
