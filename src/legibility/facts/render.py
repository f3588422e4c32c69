"""Turn facts into tokenized queries for a given model (causal: object slot at the end; masked: [MASK])."""

from __future__ import annotations

from legibility.errors import LegibilityError
from legibility.facts.types import OBJECT, Fact, PromptQueries, Query, RenderedFact, slot_ends_sentence
from legibility.models.loading import LoadedModel

NOT_AT_END = "object slot does not end the sentence (causal LM)"
MULTI_TOKEN = "target is not a single token"
NO_MASK = "tokenizer has no mask token"


def target_ids(lm: LoadedModel, before_slot: str, obj: str) -> list[int]:
    """Token ids of the object as the model would continue ``before_slot`` with it.

    A space before the slot becomes the target's leading space (" Berlin" in BPE vocabularies; WordPiece
    drops it). Encoding prompt + object together and splitting keeps merges at the boundary honest.
    """
    spaced = before_slot[-1:].isspace()
    prefix_text = before_slot.rstrip()
    target_text = (" " if spaced else "") + obj
    tok = lm.tokenizer
    plain = list(tok(target_text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    if lm.kind == "masked":
        return plain
    prefix = list(tok(prefix_text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    joint = list(tok(prefix_text + target_text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    if joint[: len(prefix)] == prefix and len(joint) > len(prefix):
        return joint[len(prefix) :]
    return plain


def subject_position(lm: LoadedModel, ids: list[int], text: str, subject: str | None) -> int:
    """Index in ``ids`` (the encoding of ``text``) of the subject's last token; -1 if it cannot be found."""
    end = text.rfind(subject) + len(subject) if subject and subject in text else -1
    head = lm.encode(text[:end]) if end > 0 else []
    specials = set(getattr(lm.tokenizer, "all_special_ids", []) or [])
    while head and head[-1] in specials:  # masked LMs close every encoding with [SEP]
        head = head[:-1]
    return len(head) - 1 if head and ids[: len(head)] == head else -1


def render_prompt(
    lm: LoadedModel, prompt: str, obj: str, multi_token: bool = False, subject: str | None = None
) -> PromptQueries | str:
    """Queries for one prompt of a fact, or the reason it cannot be used with this model."""
    before, _, after = prompt.partition(OBJECT)
    targets = target_ids(lm, before, obj)
    if not targets:
        return "object is empty after tokenization"
    if len(targets) > 1 and not multi_token:
        return MULTI_TOKEN
    if lm.kind == "causal":
        if not slot_ends_sentence(prompt):
            return NOT_AT_END
        text = before.rstrip()
        ids = lm.encode(text)
        spos = subject_position(lm, ids, text, subject)
        queries = []
        for j, t in enumerate(targets):
            seq = ids + targets[:j]  # teacher-forced gold continuation
            queries.append(Query(tuple(seq), len(seq) - 1, t, spos))
        return PromptQueries(text, tuple(queries))
    mask = getattr(lm.tokenizer, "mask_token", None)
    if mask is None:
        return NO_MASK
    if len(targets) > 1:
        raise LegibilityError("multi-token targets are supported for causal LMs only; use single-token facts")
    text = before + mask + after
    ids = lm.encode(text)
    mask_id = lm.tokenizer.mask_token_id  # type: ignore[attr-defined]
    if ids.count(mask_id) != 1:
        return "prompt does not encode to exactly one mask token"
    spos = subject_position(lm, ids, text, subject)
    return PromptQueries(text, (Query(tuple(ids), ids.index(mask_id), targets[0], spos),))


def render(lm: LoadedModel, fact: Fact, multi_token: bool = False) -> RenderedFact:
    out = RenderedFact(fact)
    for prompt in fact.prompts:
        r = render_prompt(lm, prompt, fact.object, multi_token, fact.subject)
        if isinstance(r, str):
            out.skipped[r] = out.skipped.get(r, 0) + 1
        else:
            out.prompts.append(r)
    return out
