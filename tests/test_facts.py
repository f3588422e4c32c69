import json

import pytest

from helpers import tiny_lm
from legibility import Fact, LegibilityError, load_jsonl_facts, load_pararel, render
from legibility.facts.pararel import find_pararel, pararel_relations
from legibility.facts.render import MULTI_TOKEN, NOT_AT_END


def test_pararel_loads_facts_with_all_paraphrases(pararel_dir):
    facts = load_pararel(pararel_dir, ["P36"])
    n_patterns = len(
        {json.loads(line)["pattern"] for line in (pararel_dir / "patterns" / "P36.jsonl").open()}
    )
    n_rows = sum(1 for line in (pararel_dir / "facts" / "P36.jsonl").open() if line.strip())
    assert len(facts) == n_rows
    assert all(
        len(f.prompts) == n_patterns and all("[Y]" in p and "[X]" not in p for p in f.prompts) for f in facts
    )
    assert all(f.subject in f.prompts[0] for f in facts)
    assert len(pararel_relations(pararel_dir)) == 39


def test_pararel_limit_samples_per_relation_deterministically(pararel_dir):
    a = load_pararel(pararel_dir, ["P36", "P103"], limit=5, seed=1)
    b = load_pararel(pararel_dir, ["P36", "P103"], limit=5, seed=1)
    c = load_pararel(pararel_dir, ["P36", "P103"], limit=5, seed=2)
    assert [f.id for f in a] == [f.id for f in b] != [f.id for f in c]
    assert sum(f.relation == "P36" for f in a) == 5


def test_unknown_relation_lists_available(pararel_dir):
    with pytest.raises(LegibilityError, match="unknown relation.*P999.*P36"):
        load_pararel(pararel_dir, ["P999"])


def test_missing_data_dir_says_what_to_do(tmp_path):
    with pytest.raises(LegibilityError, match="PARAREL data not found.*LEGIBILITY_PARAREL"):
        find_pararel(tmp_path / "nowhere")


def test_env_var_points_at_data(pararel_dir, monkeypatch):
    monkeypatch.setenv("LEGIBILITY_PARAREL", str(pararel_dir))
    assert find_pararel() == pararel_dir


def _write(tmp_path, rows):
    p = tmp_path / "facts.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


GOOD = {"subject": "France", "relation": "P36", "object": "Paris", "prompts": ["The capital of [X] is [Y]."]}


def test_jsonl_facts_load_and_fill_subject(tmp_path):
    facts = load_jsonl_facts(_write(tmp_path, [GOOD, {**GOOD, "id": "x1"}]))
    assert facts[0].prompts == ("The capital of France is [Y].",)
    assert facts[1].id == "x1" and facts[0].id == "P36|France|Paris"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", r"facts.jsonl:2: not valid JSON"),
        ({k: v for k, v in GOOD.items() if k != "object"}, r"facts.jsonl:2: missing key 'object'"),
        ({**GOOD, "prompts": []}, r"facts.jsonl:2: 'prompts' must be a non-empty"),
        ({**GOOD, "prompts": ["no slot here"]}, r"facts.jsonl:2: prompt .* must contain the object slot"),
        ({**GOOD, "subject": ""}, r"facts.jsonl:2: 'subject' must be a non-empty str"),
        ("[1, 2]", r"facts.jsonl:2: expected a JSON object"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, row, message):
    with pytest.raises(LegibilityError, match=message):
        load_jsonl_facts(_write(tmp_path, [GOOD, row]))


def test_missing_facts_file(tmp_path):
    with pytest.raises(LegibilityError, match="does not exist"):
        load_jsonl_facts(tmp_path / "none.jsonl")


def test_causal_render_ends_prompt_before_slot_and_skips_other_templates():
    lm = tiny_lm("llama")
    fact = Fact(
        "france", "P36", "paris", ("the capital of france is [Y] .", "[Y] is the capital of france .")
    )
    r = render(lm, fact)
    assert [p.text for p in r.prompts] == ["the capital of france is"]
    q = r.prompts[0].queries[0]
    assert q.answer_pos == len(q.input_ids) - 1
    assert q.target_id == lm.tokenizer.convert_tokens_to_ids("paris")
    assert r.skipped == {NOT_AT_END: 1}


def test_masked_render_puts_mask_in_slot_anywhere():
    lm = tiny_lm("bert")
    fact = Fact("france", "P36", "paris", ("[Y] is the capital of france .",))
    q = render(lm, fact).prompts[0].queries[0]
    assert q.input_ids[q.answer_pos] == lm.tokenizer.mask_token_id
    assert q.input_ids[0] == lm.tokenizer.cls_token_id


def test_multi_token_targets_are_teacher_forced_gold_continuations():
    lm = tiny_lm("llama")
    fact = Fact("france", "P36", "paris berlin", ("the capital of france is [Y] .",))
    assert render(lm, fact).skipped == {MULTI_TOKEN: 1}
    (pq,) = render(lm, fact, multi_token=True).prompts
    paris, berlin = lm.tokenizer.convert_tokens_to_ids(["paris", "berlin"])
    assert [q.target_id for q in pq.queries] == [paris, berlin]
    assert pq.queries[1].input_ids == (*pq.queries[0].input_ids, paris)
    with pytest.raises(LegibilityError, match="causal LMs only"):
        render(tiny_lm("bert"), fact, multi_token=True)


def test_target_keeps_the_leading_space_for_bpe_tokenizers(smollm):
    fact = Fact("France", "P36", "Paris", ("The capital of France is [Y].",))
    q = render(smollm, fact).prompts[0].queries[0]
    assert smollm.tokenizer.decode([q.target_id]) == " Paris"


test_target_keeps_the_leading_space_for_bpe_tokenizers = pytest.mark.slow(
    test_target_keeps_the_leading_space_for_bpe_tokenizers
)
