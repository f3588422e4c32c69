"""Facts, and the tokenized queries a model is asked about them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SUBJECT, OBJECT = "[X]", "[Y]"
# The object slot "ends the sentence" when only closing punctuation follows it.
_TAIL = re.compile(r"\[Y\]\s*[.?!]?\s*$")


@dataclass(frozen=True)
class Fact:
    """A relational fact (subject, relation, object) with its paraphrase prompts.

    Each prompt is a sentence with the subject filled in and the object slot left as ``[Y]``, e.g.
    ``"The capital of Germany is [Y] ."``.
    """

    subject: str
    relation: str
    object: str
    prompts: tuple[str, ...]
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", f"{self.relation}|{self.subject}|{self.object}")


@dataclass(frozen=True)
class Query:
    """One next-token (or masked-token) question: p(target_id | input_ids) read at ``answer_pos``."""

    input_ids: tuple[int, ...]
    answer_pos: int
    target_id: int
    subject_pos: int = -1  # last token of the subject (-1: unknown); for attribution at the subject
    contrast_ids: tuple[int, ...] = ()  # the relation's other objects' first tokens (contrastive attribution)
    # the same prompt with other subjects of the relation (same template, same teacher-forced target
    # prefix): their activations at the answer position are the baselines of attribution patching
    baselines: tuple[Query, ...] = ()


@dataclass(frozen=True)
class PromptQueries:
    """The queries of one prompt: one for a single-token target; one per target token (teacher-forced)
    for a multi-token target. p(correct) for the prompt is the product of their probabilities."""

    text: str
    queries: tuple[Query, ...]


@dataclass
class RenderedFact:
    fact: Fact
    prompts: list[PromptQueries] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> number of prompts not usable


def slot_ends_sentence(template: str) -> bool:
    return bool(_TAIL.search(template))


def fill(template: str, subject: str) -> str:
    return template.replace(SUBJECT, subject)
