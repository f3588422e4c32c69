"""Labelled texts for probes: from PARAREL (relation or object labels) or from a user's JSONL file, and
true/false statements built from PARAREL facts.

A :class:`Example` is one text with a label, the group it belongs to (the split unit: all paraphrases of one
fact share a group, so they never straddle train and test), the control-task type (Hewitt & Liang) and,
optionally, the subject whose last token can be the read position.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from legibility.errors import LegibilityError
from legibility.facts.jsonl import jsonl_objects
from legibility.facts.types import OBJECT, Fact, slot_ends_sentence

__all__ = [
    "Example",
    "Statement",
    "balanced_false_objects",
    "encode_labels",
    "load_jsonl_examples",
    "pararel_examples",
    "statement_prefixes",
    "truth_statements",
    "uniform_false_objects",
]


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    group: str  # split unit (a fact id)
    subject: str = ""  # read at its last token when position="subject"
    type: str = ""  # control-task type (default: the group)


def pararel_examples(facts: Sequence[Fact], task: str, min_per_label: int = 2) -> list[Example]:
    """One example per (fact, prompt): the prompt up to the object slot, labelled by the fact's relation or
    object (``task``); labels with fewer than ``min_per_label`` facts are dropped. The control type is the
    subject (a word type that can recur across facts). Prompts whose object slot comes before the subject are
    skipped: cut before the object, they do not mention the subject."""
    if task not in ("relation", "object"):
        raise LegibilityError(f"unknown PARAREL probe task {task!r}; choose 'relation' or 'object'")
    counts: dict[str, int] = {}
    for f in facts:
        counts[getattr(f, task)] = counts.get(getattr(f, task), 0) + 1
    out = []
    for f in facts:
        label = getattr(f, task)
        if counts[label] < min_per_label:
            continue
        for p in f.prompts:
            if OBJECT not in p:
                continue
            text = p.split(OBJECT)[0].rstrip()
            if f.subject in text:  # a template with the object before the subject does not ask about it
                out.append(Example(text, label, f.id, f.subject, f.subject))
    return out


def load_jsonl_examples(path: str | os.PathLike) -> list[Example]:
    """Read ``{"text": ..., "label": ..., "group"?: ..., "subject"?: ...}`` lines; a bad line is an error
    naming the file and line. Without a group, each line is its own group."""
    out = []
    for where, i, row in jsonl_objects(path, "labelled-text file", "'text' and 'label'"):
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            raise LegibilityError(f"{where}: 'text' must be a non-empty string")
        if label is None or isinstance(label, (dict, list)):
            raise LegibilityError(f"{where}: 'label' must be a string, number or boolean")
        subject = row.get("subject", "")
        if not isinstance(subject, str) or (subject and subject not in text):
            raise LegibilityError(f"{where}: 'subject' must be a string occurring in 'text'")
        group = str(row.get("group", f"line-{i}"))
        out.append(Example(text, str(label), group, subject, str(row.get("type", group))))
    if len({e.label for e in out}) < 2:
        raise LegibilityError(f"{path}: needs at least two distinct labels to probe")
    return out


def encode_labels(examples: Sequence[Example]) -> tuple[list[int], list[str]]:
    """Integer label per example and the sorted label names."""
    names = sorted({e.label for e in examples})
    code = {n: i for i, n in enumerate(names)}
    return [code[e.label] for e in examples], names


@dataclass(frozen=True)
class Statement:
    """A completed PARAREL sentence, true or false, and the prompt (up to the object) it completes."""

    text: str  # "The capital of France is Paris."
    prefix: str  # "The capital of France is"
    obj: str
    true: bool
    fact: str  # fact id (split unit)
    relation: str
    subject: str
    template: int  # index of the template among the fact's usable ones
    other: str  # the contrasting object (the false one for a true statement and vice versa)


def uniform_false_objects(facts: Sequence[Fact], seed: int = 0) -> dict[str, str]:
    """Fact id -> one false object drawn uniformly from the other distinct objects of its relation.

    Every distinct object is equally likely to be drawn, however many facts hold it: a rare object is
    claimed falsely far more often than truly, so object identity alone predicts the label (the shortcut
    :func:`balanced_false_objects` removes)."""
    by_rel: dict[str, list[str]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f.object)
    rng = random.Random(seed)
    out = {}
    for f in facts:
        pool = sorted(set(by_rel[f.relation]) - {f.object})
        if pool:
            out[f.id] = rng.choice(pool)
    return out


def balanced_false_objects(
    facts: Sequence[Fact], seed: int = 0, key: Callable[[Fact], object] | None = None
) -> dict[str, str]:
    """Fact id -> false object such that, within every relation, each object is claimed falsely exactly as
    often as truly: the false objects are a permutation of the true ones.

    Facts are grouped by ``key`` (default: the object; e.g. the object's first token, so that no pair's two
    objects share it), the groups laid out one after another in a seeded random order, and fact ``i`` gets
    the object of fact ``i + m`` (cyclically), ``m`` the largest group's size: no fact gets an object of its
    own group while ``2 m <= n``. Where one group holds more than half of a relation's facts, its surplus
    facts are left out (they have no partner); so is a relation with a single group.
    """
    keyf = key or (lambda f: f.object)
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    out: dict[str, str] = {}
    for rel in sorted(by_rel):
        rng = random.Random(f"{seed}|balanced|{rel}")
        groups: dict[str, list[Fact]] = {}
        for f in sorted(by_rel[rel], key=lambda f: f.id):
            groups.setdefault(repr(keyf(f)), []).append(f)
        for members in groups.values():
            rng.shuffle(members)
        order = sorted(groups)
        rng.shuffle(order)
        sizes = {g: len(groups[g]) for g in order}
        biggest = max(order, key=lambda g: (sizes[g], g)) if order else None
        n = sum(sizes.values())
        if biggest is not None and 2 * sizes[biggest] > n:  # drop the surplus of the dominant group
            sizes[biggest] = n - sizes[biggest]
        ring = [f for g in order for f in groups[g][: sizes[g]]]
        if len({repr(keyf(f)) for f in ring}) < 2:
            continue
        m = max(sizes.values())
        for i, f in enumerate(ring):
            out[f.id] = ring[(i + m) % len(ring)].object
    return out


def truth_statements(
    facts: Sequence[Fact], templates: int = 3, seed: int = 0, false_objects: dict[str, str] | None = None
) -> list[Statement]:
    """For each fact, its first ``templates`` prompts whose object slot ends the sentence, completed with the
    true object and with its false object: ``false_objects[fact.id]`` (facts not in it are left out), or by
    default one drawn uniformly from the relation's other objects (:func:`uniform_false_objects`)."""
    chosen = uniform_false_objects(facts, seed) if false_objects is None else false_objects
    out = []
    for f in facts:
        false = chosen.get(f.id)
        if false is None or false == f.object:
            continue
        usable = [p for p in f.prompts if slot_ends_sentence(p)][:templates]
        for t, p in enumerate(usable):
            prefix, tail = p.split(OBJECT)[0].rstrip(), p.split(OBJECT)[1].strip() or "."
            for obj, true in ((f.object, True), (false, False)):
                other = false if true else f.object
                text = f"{prefix} {obj}{tail}"
                out.append(Statement(text, prefix, obj, true, f.id, f.relation, f.subject, t, other))
    return out


def statement_prefixes(fact: Fact, templates: int) -> list[str]:
    """The prompts up to the object of ``fact``'s first ``templates`` prompts whose slot ends the sentence
    (the prefixes :func:`truth_statements` completes)."""
    usable = [p for p in fact.prompts if slot_ends_sentence(p)][:templates]
    return [p.split(OBJECT)[0].rstrip() for p in usable]
