"""Fact edits, relation erases and neuron cards on tiny random models of every family."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from helpers import FAMILIES, tiny_facts, tiny_lm
from legibility import LegibilityError, load_model, render
from legibility.editing import (
    EditCase,
    EditConfig,
    EditEvaluator,
    EraseConfig,
    NeuronCard,
    edit_neurons,
    evaluate_erase,
    fact_edit,
    neuron_card,
    random_like,
    relation_erase,
    shared_neurons,
    top_shared,
    value_edit,
)
from legibility.editing.collateral import collateral
from legibility.editing.command import _parse_neuron, add_parsers
from legibility.editing.evaluate import summarize_edits
from legibility.editing.memory import Context, TokenScore, card_text, serving_sign
from legibility.facts.counterfacts import object_token, split_wording
from legibility.facts.types import Query
from legibility.forward import predict
from legibility.metrics.perplexity import perplexity
from legibility.models.identity import identity
from legibility.report.cards import card_html
from legibility.report.editing import collateral_markdown, summary_markdown
from legibility.store import settings_key

# Written out per family, independently of the code under test: where the word embedding, the
# unembedding and each layer's FFN output projection live, and whether neurons index its rows or columns.
WORD_EMBEDDING = {
    "gpt2": "transformer.wte",
    "gpt_neox": "gpt_neox.embed_in",
    "llama": "model.embed_tokens",
    "mistral": "model.embed_tokens",
    "qwen2": "model.embed_tokens",
    "gemma": "model.embed_tokens",
    "gemma2": "model.embed_tokens",
    "bert": "bert.embeddings.word_embeddings",
    "roberta": "roberta.embeddings.word_embeddings",
}
UNEMBEDDING = {"gpt_neox": "lm_head", "bert": "cls.predictions.decoder", "roberta": "lm_head.decoder"}
FFN_OUT = {
    "gpt2": ("transformer.h.{}.mlp.c_proj", "row"),
    "gpt_neox": ("gpt_neox.layers.{}.mlp.dense_4h_to_h", "col"),
    "bert": ("bert.encoder.layer.{}.output.dense", "col"),
    "roberta": ("roberta.encoder.layer.{}.output.dense", "col"),
}
NEURONS = [(0, 3), (2, 7), (2, 40)]


def _get(obj, path: str):
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _ffn(lm, family: str, layer: int) -> tuple[torch.Tensor, str]:
    path, axis = FFN_OUT.get(family, ("model.layers.{}.mlp.down_proj", "col"))
    return _get(lm.model, path.format(layer)).weight, axis


def _value(lm, family: str, layer: int, index: int) -> torch.Tensor:
    weight, axis = _ffn(lm, family, layer)
    return weight[index] if axis == "row" else weight[:, index]


def _snapshot(lm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_changes_exactly_the_value_vectors_and_undoes_bit_exactly(family):
    lm = tiny_lm(family)
    fact = tiny_facts()[0]  # germany -> berlin
    before = _snapshot(lm)
    cfg = EditConfig(lambda_old=1.5, lambda_new=6.0)
    edit = fact_edit(lm, fact, "paris", NEURONS, config=cfg)
    assert edit.neurons == tuple(NEURONS)
    vocab = lm.tokenizer.get_vocab()
    old_id, new_id = vocab["berlin"], vocab["paris"]  # word-level tokenizer: no leading-space variants
    word = _get(lm.model, WORD_EMBEDDING[family]).weight.detach()
    expected = -1.5 * word[old_id] + 6.0 * word[new_id]
    with edit.applied(lm):
        for layer in range(3):
            weight, axis = _ffn(lm, family, layer)
            old_w = before[next(k for k, v in lm.model.named_parameters() if v is weight)]
            for i in range(lm.sites.n_neurons):
                now = weight[i] if axis == "row" else weight[:, i]
                was = old_w[i] if axis == "row" else old_w[:, i]
                if (layer, i) in NEURONS:
                    torch.testing.assert_close(now - was, expected, rtol=0, atol=1e-5)
                    assert not torch.equal(now, was)
                else:
                    assert torch.equal(now, was)
        edited = {k for k, v in lm.model.state_dict().items() if not torch.equal(v, before[k])}
        # only FFN output projections of layers 0 and 2 changed: embeddings (tied or not) are untouched
        assert len(edited) == 2, edited
        assert torch.equal(
            _get(lm.model, WORD_EMBEDDING[family]).weight,
            before[next(iter(k for k in before if WORD_EMBEDDING[family] in k))],
        )
    after = lm.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_tied_embedding_is_untouched_and_copy_leaves_original():
    lm = tiny_lm("gpt2")
    emb = lm.model.get_input_embeddings().weight
    assert emb.data_ptr() == lm.model.get_output_embeddings().weight.data_ptr()  # tied
    before = _snapshot(lm)
    edit = fact_edit(lm, tiny_facts()[0], "paris", NEURONS)
    copy = edit.copy(lm)
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())
    assert torch.equal(copy.model.get_input_embeddings().weight, emb)
    assert not torch.equal(_value(copy, "gpt2", 2, 7), _value(lm, "gpt2", 2, 7))
    assert copy.sites.modules[0] is not lm.sites.modules[0]


def test_undo_happens_even_when_the_block_raises():
    lm = tiny_lm("llama")
    before = _snapshot(lm)
    with pytest.raises(RuntimeError), fact_edit(lm, tiny_facts()[0], "paris", NEURONS).applied(lm):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())


def test_output_embedding_option_uses_unembedding_rows_in_untied_models():
    lm = tiny_lm("gpt_neox")
    fact = tiny_facts()[0]
    old_id, new_id = object_token(lm, fact, "berlin"), object_token(lm, fact, "paris")
    unembed = _get(lm.model, UNEMBEDDING["gpt_neox"]).weight.detach()
    assert not torch.equal(unembed, _get(lm.model, WORD_EMBEDDING["gpt_neox"]).weight)  # untied
    edit = value_edit(lm, NEURONS, old_id, new_id, EditConfig(embedding="output"))
    torch.testing.assert_close(edit.vector, -unembed[old_id] + 8.0 * unembed[new_id])


def test_edit_moves_probability_toward_new_object():
    lm = tiny_lm("llama")
    fact = tiny_facts()[0]
    q = render(lm, fact).prompts[0].queries[0]
    new_id = object_token(lm, fact, "paris")
    ids = torch.tensor([q.input_ids])
    with torch.no_grad(), lm.sites.record([2]) as store:
        p0 = lm.model(input_ids=ids).logits[0, -1].softmax(-1)[new_id]
    # last-layer neurons firing positively at the answer: their value vectors add straight to the logits
    firing = [(2, int(i)) for i in torch.nonzero(store[2][0, q.answer_pos] > 0).flatten()]
    assert firing
    cfg = EditConfig(lambda_new=50.0, embedding="output")
    with torch.no_grad(), fact_edit(lm, fact, "paris", firing, config=cfg).applied(lm):
        p1 = lm.model(input_ids=ids).logits[0, -1].softmax(-1)[new_id]
    assert p1 > p0 + 0.1


def test_shared_neurons_are_excluded():
    sets = [[(0, 1), (1, 2)], [(0, 1)], [(0, 1), (2, 3)], [(1, 2)]] + [[]] * 6  # 10 facts
    assert shared_neurons(sets, 0.1) == {(0, 1), (1, 2)}  # in 3 and 2 facts (> 1)
    assert edit_neurons([(0, 1), (2, 3)], sets, 0.1) == [(2, 3)]
    assert edit_neurons([(0, 1), (2, 3)], None, 0.1) == [(0, 1), (2, 3)]
    assert shared_neurons(sets, 0.25) == {(0, 1)}


def test_same_first_token_is_refused_and_eleuther_site_too():
    lm = tiny_lm("llama")
    with pytest.raises(LegibilityError, match="same token"):
        fact_edit(lm, tiny_facts()[0], "berlin", NEURONS)
    with pytest.raises(LegibilityError, match="site='ffn'"):
        fact_edit(tiny_lm("gpt2", site="eleuther"), tiny_facts()[0], "paris", NEURONS)
    before = _snapshot(lm)
    with (
        pytest.raises(LegibilityError, match="out of range"),
        value_edit(lm, [(0, 1), (1, 999)], 5, 6).applied(lm),
    ):
        pass
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())  # nothing half-written


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_erase_sets_top_shared_value_vectors(family):
    lm = tiny_lm(family)
    sets = [[(0, 1), (1, 2)], [(0, 1), (2, 3)], [(0, 1), (1, 2)]]
    assert top_shared(sets, 2) == [((0, 1), 3), ((1, 2), 2)]
    with relation_erase(lm, sets, EraseConfig(top=2)).applied(lm):
        assert torch.count_nonzero(_value(lm, family, 0, 1)) == 0
        assert torch.count_nonzero(_value(lm, family, 1, 2)) == 0
        assert torch.count_nonzero(_value(lm, family, 2, 3)) > 0
    assert torch.count_nonzero(_value(lm, family, 0, 1)) > 0
    unk = lm.tokenizer.unk_token_id
    with relation_erase(lm, sets, EraseConfig(top=1, mode="unk")).applied(lm):
        assert torch.equal(_value(lm, family, 0, 1), _get(lm.model, WORD_EMBEDDING[family]).weight[unk])
    with pytest.raises(LegibilityError, match="nothing to erase"):
        relation_erase(lm, [[], []])


def test_random_control_keeps_layers_and_avoids_given_neurons():
    g = torch.Generator().manual_seed(0)
    neurons = [(0, 1), (0, 2), (2, 5)]
    out = random_like(neurons, 8, g, avoid=[(0, 3)])
    assert [layer for layer, _ in out] == [0, 0, 2]
    assert not set(out) & {*neurons, (0, 3)}
    assert len(set(out)) == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_neuron_card_top_tokens_are_a_plain_unembedding_matmul(family):
    lm = tiny_lm(family)
    prompts = [p for f in tiny_facts() for p in render(lm, f).prompts]
    card = neuron_card(lm, 1, 5, prompts)
    head = lm.model.get_output_embeddings().weight.detach()
    logits = card.sign * (head @ _value(lm, family, 1, 5).detach())
    assert [t.id for t in card.promoted] == torch.topk(logits, 10).indices.tolist()
    assert [t.id for t in card.suppressed] == torch.topk(-logits, 10).indices.tolist()
    assert card.contexts and card.n_contexts > len(card.contexts)
    acts = [card.sign * c.activation for c in card.contexts]
    assert acts == sorted(acts, reverse=True)
    assert 0.0 <= card.agreement <= 1.0 and 0.0 <= card.agreement_chance <= 1.0
    assert "promotes" in card_text(card)


def test_neuron_card_activations_match_a_recorded_forward():
    lm = tiny_lm("llama")
    prompts = render(lm, tiny_facts()[0]).prompts
    card = neuron_card(lm, 2, 11, prompts, text="")
    with torch.no_grad(), lm.sites.record([2]) as store:
        q = prompts[0].queries[0]
        lm.model(input_ids=torch.tensor([q.input_ids]))
    expected = float(store[2][0, q.answer_pos, 11])
    assert any(abs(c.activation - expected) < 1e-5 for c in card.contexts)
    assert {c.source for c in card.contexts} == {"facts"}


def test_card_html_escapes():
    card = NeuronCard(
        "m<b>",
        1,
        2,
        1.0,
        [TokenScore("<script>", 1, 2.0)],
        [TokenScore("&", 2, -1.0)],
        [Context("a <i>b</i>", 0.5, "</td>", "text", True)],
        0.5,
        0.1,
        10,
    )
    out = card_html(card)
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "<i>" not in out and "&lt;/td&gt;" in out and "&amp;" in out
    import dataclasses
    import json

    assert card_html(json.loads(json.dumps(dataclasses.asdict(card)))) == out  # as read from cards.json


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_evaluator_records_both_arms_with_bounded_metrics(family):
    lm = tiny_lm(family)
    rendered = [render(lm, f) for f in tiny_facts()]
    case = EditCase(rendered[0], "paris", [(0, 1), (1, 2)], rendered[1].prompts, rendered[2].prompts)
    text = "the capital of germany is berlin .\nthe city is located in italy ."
    cases = [case, EditCase(rendered[1], "rome", [(2, 4)])]
    records = EditEvaluator(lm, cases, rendered[4:], text=text).run()
    assert [r["arm"] for r in records] == ["kn", "random", "kn", "random"]
    for r in records:
        for key in ("success@1", "success@5", "locality_same", "locality_other", "synonymy@1", "symmetry@1"):
            if key in r and r[key] is not None:
                assert 0.0 <= r[key] <= 1.0, (key, r[key])
        assert r["success@1"] <= r["success@5"]
    assert records[0]["neurons"] != records[1]["neurons"]
    assert [n[0] for n in records[1]["neurons"]] == [0, 1]
    erase = evaluate_erase(lm, [[(0, 1), (1, 2)], [(0, 1)]], rendered[:4], [], rendered[4:], text=text)
    assert [r["arm"] for r in erase] == ["kn", "random"]
    assert erase[0]["located_acc_before"] == erase[1]["located_acc_before"]


@pytest.mark.parametrize("family", ["gpt2", "roberta"])
def test_perplexity_rises_when_every_value_vector_is_destroyed(family):
    lm = tiny_lm(family)
    text = "the capital of germany is berlin .\nthe language of france is french ."
    base = perplexity(lm, text)
    everything = [(layer, i) for layer in range(3) for i in range(lm.sites.n_neurons)]
    with value_edit(lm, everything, 5, 6, EditConfig(lambda_old=0.0, lambda_new=40.0)).applied(lm):
        assert perplexity(lm, text) != pytest.approx(base, rel=1e-3)
    assert perplexity(lm, text) == pytest.approx(base, rel=1e-6)


def test_split_wording_by_lemma_and_alternating():
    fact = tiny_facts()[0]
    lemmas = {
        "the capital of [X] is [Y] .": "capital",
        "[X] capital city is [Y] .": "capital-city",
        "the capital city of [X] is [Y]": "capital-city",
    }
    first, rest = split_wording(fact, lemmas)
    assert first.prompts == (fact.prompts[0],) and rest.prompts == fact.prompts[1:]
    first, rest = split_wording(fact, None)
    assert first.prompts == fact.prompts[0::2] and rest.prompts == fact.prompts[1::2]


def test_command_parsers():
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["neuron", "smollm2-135m", "17:1043"])
    assert args.editing_command == "neuron" and _parse_neuron(args.neuron) == (17, 1043)
    args = parser.parse_args(["edit", "--fact", "France|P36|Paris", "--new", "Lyon"])
    assert args.editing_command == "edit" and args.lambda_new == 8.0
    with pytest.raises(LegibilityError, match="LAYER:INDEX"):
        _parse_neuron("17")


def test_batched_perplexity_matches_line_by_line():
    lm = tiny_lm("gpt2")
    text = "the capital of germany is berlin .\nthe city .\nspain is a country in the language of spanish"
    nll, n = 0.0, 0
    with torch.no_grad():
        for line in text.splitlines():
            ids = torch.tensor([lm.encode(line)])
            logits = lm.model(input_ids=ids).logits[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            n += ids.shape[1] - 1
    assert perplexity(lm, text) == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_summaries_average_per_arm_and_render_markdown():
    records = [
        {"arm": "kn", "n_neurons": 2, "success@1": 1.0, "ppl_change": 0.5, "variant": "paper"},
        {"arm": "kn", "n_neurons": 1, "success@1": 0.0, "ppl_change": 100.0, "variant": "paper"},
        {"arm": "random", "n_neurons": 2, "success@1": 0.0, "ppl_change": 0.0, "variant": "paper"},
        {"arm": "kn", "n_neurons": 0, "variant": "paper"},
    ]
    summary = summarize_edits(records)
    assert summary["success@1"] == {"kn": 0.5, "random": 0.0}
    assert summary["ppl_change_median"]["kn"] == 100.0
    assert summary["nll_change"]["kn"] == pytest.approx((math.log(1.5) + math.log(101.0)) / 2)
    assert summary["facts_without_neurons"]["kn"] == 1.0
    table = summary_markdown(
        {"edit": {"paper": summary}, "erase": [{"arm": "kn", "x": 1.0}, {"arm": "random", "x": 2.0}]}
    )
    assert "| success@1 | 0.500 | 0.000 |" in table and "| x | 1.000 | 2.000 |" in table


def test_edit_and_neuron_commands_on_a_saved_tiny_model(tmp_path, capsys):
    from legibility.editing.command import main

    lm = tiny_lm("llama")
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    html_file = tmp_path / "card.html"
    assert main(["neuron", str(model_dir), "1:3", "--relations", "", "--html", str(html_file)]) == 0
    assert "value promotes" in capsys.readouterr().out
    assert html_file.read_text().startswith('<div class="lg-card">')
    saved = tmp_path / "edited"
    prompts = ["--prompt", "the capital of [X] is [Y] .", "--prompt", "the capital city of [X] is [Y]"]
    args = ["edit", "--model", str(model_dir), "--fact", "germany|P36|berlin", "--new", "paris", *prompts]
    # the random tiny model does not know the fact: refused, with the way out named
    assert main([*args, "--save", str(saved)]) == 2
    captured = capsys.readouterr()
    assert "is the model's top-1 answer on 0 of 2 prompts" in captured.out
    assert "does not know germany | P36 | berlin" in captured.err and "--unknown-ok" in captured.err
    assert not saved.exists()
    rc = main([*args, "--unknown-ok", "--collateral", "0", "--save", str(saved)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "knowledge neurons:" in out and "after:" in out
    edited = load_model(str(saved))
    assert any(
        not torch.equal(a, b) for a, b in zip(edited.model.parameters(), lm.model.parameters(), strict=True)
    )
    assert main(["edit", "--model", str(model_dir), "--fact", "germany|berlin", "--new", "paris"]) == 2
    assert "subject|relation|object" in capsys.readouterr().err


def test_serving_sign_follows_the_strongest_fact_activations():
    assert serving_sign([]) == 1
    assert serving_sign([0.1, 0.2, -3.0]) == -1
    assert serving_sign([0.1, 0.2, -3.0, 2.0, 2.0], top=3) == 1  # -3 + 2 + 2
    assert serving_sign([-0.1] * 30 + [5.0], top=1) == 1


def test_neuron_card_uses_the_sign_the_neuron_takes_on_its_facts():
    """Negate a gated neuron's up row and its down column: the model computes the same function, but the
    neuron now fires with the opposite sign. Its card must show the same contexts and the same promoted
    and suppressed tokens, with the serving sign flipped (a positive-only card would show other contexts
    and swapped lists)."""
    lm = tiny_lm("llama")
    layer, index = 1, 5
    prompts = [p for f in tiny_facts() for p in render(lm, f).prompts]
    text = "the capital of germany is berlin .\nthe city is located in italy ."
    card = neuron_card(lm, layer, index, prompts, text)
    head = lm.model.get_output_embeddings().weight.detach()
    raw = head @ _value(lm, "llama", layer, index).detach()  # W_U v of the original neuron
    mlp = lm.model.model.layers[layer].mlp
    with torch.no_grad():
        mlp.up_proj.weight[index] *= -1
        mlp.down_proj.weight[:, index] *= -1
    flipped = neuron_card(lm, layer, index, prompts, text)
    fact_acts = [c.activation for c in flipped.contexts if c.source == "facts"]
    assert flipped.sign == -card.sign
    assert [c.text for c in flipped.contexts] == [c.text for c in card.contexts]
    assert [c.activation for c in flipped.contexts] == pytest.approx([-c.activation for c in card.contexts])
    assert [t.id for t in flipped.promoted] == [t.id for t in card.promoted]
    assert [t.id for t in flipped.suppressed] == [t.id for t in card.suppressed]
    assert flipped.agreement == card.agreement
    negative = flipped if flipped.sign < 0 else card
    assert any("fires negatively" in n for n in negative.notes) and "serving sign: negative" in card_text(
        negative
    )
    assert fact_acts  # the fact prompts were read
    # the promoted tokens are those of sign * v of the neuron as it is in each model
    assert [t.id for t in card.promoted][:3] == torch.topk(card.sign * raw, 3).indices.tolist()
    assert [t.id for t in flipped.promoted][:3] == torch.topk(flipped.sign * -raw, 3).indices.tolist()


def test_relation_facts_leave_the_facts_own_neurons_when_they_are_not_shared():
    """With fewer than 1/max_share facts, "more than max_share of the facts" was met by the edited fact's
    own set alone, so --relation-facts 5 left nothing to edit."""
    own = [(1, 3), (2, 7)]
    others = [[(0, 1)], [(0, 1), (2, 7)], [(1, 9)], [(0, 2)], [(2, 8)]]
    sets = [own, *others]
    assert edit_neurons(own, sets, 0.1) == [(1, 3)]  # (2, 7) is shared with another fact, (1, 3) is not
    assert shared_neurons(sets, 0.1) == {(0, 1), (2, 7)}
    assert shared_neurons([own], 0.1) == set()


def test_collateral_before_after_and_neighborhood_score():
    lm = tiny_lm("llama")
    facts = [render(lm, f) for f in tiny_facts()]
    same, other = facts[1:4], facts[4:]
    new_id = object_token(lm, facts[0].fact, "paris")
    noop = value_edit(lm, [(0, 1)], 5, 6, EditConfig(lambda_old=0.0, lambda_new=0.0))
    (s, o) = collateral(lm, noop, {"same": same, "other": other}, new_id)
    assert s.p_before == s.p_after and s.unchanged == 1.0 and s.fact_ids == tuple(r.fact.id for r in same)
    assert s.n_prompts == 6 and o.n_prompts == 8
    big = value_edit(
        lm, [(layer, i) for layer in range(3) for i in range(16)], 5, new_id, EditConfig(lambda_new=30.0)
    )
    (s,) = collateral(lm, big, {"same": same}, new_id)
    queries = [p.queries[0] for r in same for p in r.prompts[:2]]
    to_new = [Query(q.input_ids, q.answer_pos, new_id) for q in queries]
    before = predict(lm, queries)
    with big.applied(lm):
        after, after_new = predict(lm, queries), predict(lm, to_new)
    assert s.p_before == pytest.approx(float(before.prob.mean()))
    assert s.p_after == pytest.approx(float(after.prob.mean())) and s.p_after != s.p_before
    assert s.top1_after == pytest.approx(float((after.rank == 0).float().mean()))
    assert s.neighborhood_score == pytest.approx(float((after.prob > after_new.prob).float().mean()))
    table = collateral_markdown([s], "paris")
    assert "| same | 3 |" in table and "NS" in table


def test_evaluator_neighborhood_score_matches_a_direct_count():
    lm = tiny_lm("llama")
    rendered = [render(lm, f) for f in tiny_facts()]
    cases = [
        EditCase(r, "paris" if r.fact.object != "paris" else "rome", [(0, 1), (1, 2)]) for r in rendered[:4]
    ]
    records = EditEvaluator(lm, cases, text="the capital of germany is berlin .").run()
    rec = records[0]
    new_id = object_token(lm, rendered[0].fact, "paris")
    neighbours = [p.queries[0] for r in rendered[1:4] for p in r.prompts[:2]]
    with value_edit(lm, rec["neurons"], object_token(lm, rendered[0].fact, "berlin"), new_id).applied(lm):
        own = predict(lm, neighbours)
        to_new = predict(lm, [Query(q.input_ids, q.answer_pos, new_id) for q in neighbours])
    assert rec["neighborhood_score"] == pytest.approx(float((own.prob > to_new.prob).float().mean()))
    summary = summarize_edits(records)
    assert list(summary)[:5] == ["n_neurons", "success@1", "success@5", "neighborhood_score", "locality_same"]


def test_weights_digest_and_settings_key():
    a, b = tiny_lm("gpt2"), tiny_lm("gpt2")
    assert identity(a) == identity(b)
    with torch.no_grad():
        next(b.model.parameters()).view(-1)[0] += 1e-3
    assert identity(a)["weights_sha256"] != identity(b)["weights_sha256"]
    assert settings_key({"x": 1}, "m") == settings_key({"x": 1}, "m") != settings_key({"x": 2}, "m")


def test_edit_eval_caches_are_keyed_by_the_dtype_and_the_tokenizer(tmp_path, pararel_dir):
    """A bfloat16 (or re-tokenized) model must not reuse the float32 model's known facts or neurons."""
    from legibility.editing.experiment import ExperimentConfig, run_experiment
    from legibility.errors import LegibilityError

    cfg = ExperimentConfig(n_facts=1, held_out=0, others=(), data_dir=str(pararel_dir))
    lm = tiny_lm("llama")
    saved = tmp_path / "m"
    lm.model.save_pretrained(saved)
    lm.tokenizer.save_pretrained(saved)
    retok = tmp_path / "m2"
    lm.model.save_pretrained(retok)
    lm.tokenizer.add_tokens(["zebra"])
    lm.tokenizer.save_pretrained(retok)
    out = tmp_path / "out"
    # the same weight files in float32 and bfloat16, and the same weights with another tokenizer
    runs = [load_model(str(saved)), load_model(str(saved), dtype="bfloat16"), load_model(str(retok))]
    for model in runs:
        with pytest.raises(LegibilityError, match="knows no fact"):  # a random model knows nothing
            run_experiment(model, out, cfg, progress=False)
    assert len(list(out.glob("known-P36-*.json"))) == 3


def test_edit_eval_takes_the_run_lock(tmp_path):
    from legibility.editing.experiment import run_experiment
    from legibility.errors import LegibilityError
    from legibility.store import run_lock

    with run_lock(tmp_path), pytest.raises(LegibilityError, match="in use by another run"):
        run_experiment(tiny_lm("llama"), tmp_path, progress=False)
