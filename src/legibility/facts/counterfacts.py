"""Facts for editing experiments: PARAREL wordings of a relation, inverse facts, counterfactual objects.

``pararel_wordings`` and ``split_wording`` separate a fact's prompts by the wording of the relation (e.g.
"capital" vs "capital city"), ``inverse_fact`` reads a fact backwards through the inverse relation, and
``choose_new_objects`` picks, for each fact, another object of its relation to edit it into.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import replace

from legibility.errors import LegibilityError
from legibility.facts.render import target_ids
from legibility.facts.types import OBJECT, SUBJECT, Fact, fill
from legibility.models.loading import LoadedModel

# Relation -> the relation that reads the same fact backwards (symmetric relations map to themselves).
INVERSE_RELATIONS = {"P36": "P1376", "P1376": "P36", "P47": "P47", "P530": "P530", "P190": "P190"}


def object_token(lm: LoadedModel, fact: Fact, obj: str) -> int:
    """The first token of ``obj`` as the model continues ``fact``'s first prompt with it."""
    if not fact.prompts:
        raise LegibilityError(f"fact {fact.id} has no prompts; object tokens are read in a prompt's context")
    prompt = next((p for p in fact.prompts if OBJECT in p), None)
    if prompt is None:
        raise LegibilityError(f"no prompt of fact {fact.id} contains the object slot {OBJECT}")
    ids = target_ids(lm, prompt.partition(OBJECT)[0], obj)
    if not ids:
        raise LegibilityError(f"object {obj!r} encodes to no tokens")
    return ids[0]


def pararel_wordings(relation: str, data_dir: str | None = None) -> dict[str, str]:
    """PARAREL template -> its lemma (the wording of the relation, e.g. "capital" vs "capital-city")."""
    from legibility.facts.pararel import find_pararel

    path = find_pararel(data_dir) / "patterns" / f"{relation}.jsonl"
    if not path.exists():
        raise LegibilityError(f"PARAREL has no patterns for relation {relation}")
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row["pattern"], str(row.get("lemma", "")))
    return out


def split_wording(fact: Fact, wordings: dict[str, str] | None) -> tuple[Fact, Fact]:
    """(prompts in the first template's wording, prompts in other wordings). Without lemmas (or with one
    wording only) the prompts alternate between the two halves."""
    lemma_of = {fill(t, fact.subject): lemma for t, lemma in (wordings or {}).items()}
    lemmas = [lemma_of.get(p, "") for p in fact.prompts]
    if len(set(lemmas)) > 1 and all(lemmas):
        base = lemmas[0]
        first = tuple(p for p, lem in zip(fact.prompts, lemmas, strict=True) if lem == base)
        rest = tuple(p for p, lem in zip(fact.prompts, lemmas, strict=True) if lem != base)
    else:
        first, rest = fact.prompts[0::2], fact.prompts[1::2]
    return replace(fact, prompts=first), replace(fact, prompts=rest)


def inverse_fact(templates: Sequence[str], subject: str, obj: str, relation: str) -> Fact:
    """A fact of the inverse relation: ``subject`` fills [X] in its templates, ``obj`` is asked for."""
    prompts = tuple(t.replace(SUBJECT, subject) for t in templates if OBJECT in t)
    return Fact(subject, relation, obj, prompts)


def choose_new_objects(lm: LoadedModel, facts: Sequence[Fact], seed: int = 0) -> list[str]:
    """For each fact, another fact's object of the same relation whose first token differs (Dai et al.
    replace the object by another object of the relation)."""
    objects = sorted({f.object for f in facts})
    rng = random.Random(seed)
    out = []
    for f in facts:
        options = [
            o for o in objects if o != f.object and object_token(lm, f, o) != object_token(lm, f, f.object)
        ]
        if not options:
            raise LegibilityError(f"no other object of relation {f.relation} to edit fact {f.id} into")
        out.append(rng.choice(options))
    return out
