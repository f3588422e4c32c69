"""What an edit does to facts it was not meant to change, and whether the model knew the fact before.

An edit of one fact through its knowledge neurons can move every fact that shares those neurons: editing
"capital of France -> Rome" can turn other capitals into Rome too, when the neurons are relation-wide.
:func:`collateral` measures, for groups of facts the model knows (facts of the same relation with other
subjects; facts of other relations), p(correct) and the top-1 share before and after the edit, and, when
the edit's new object is given, ROME's neighborhood score: the share of prompts where the correct object
still beats the new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from legibility.editing.values import ValueEdit
from legibility.facts.types import PromptQueries, Query, RenderedFact
from legibility.forward import predict
from legibility.models.loading import LoadedModel


@dataclass(frozen=True)
class GroupEffect:
    """Before/after numbers of one group of facts (means over their first ``n_prompts`` prompts)."""

    group: str  # e.g. "same relation (P36)"
    fact_ids: tuple[str, ...]  # the facts measured
    labels: tuple[str, ...]  # the same facts as "subject -> object", for people
    n_prompts: int
    p_before: float  # mean p(correct object)
    p_after: float
    top1_before: float  # share of prompts whose argmax is the correct object
    top1_after: float
    unchanged: float  # share of prompts whose argmax token is the same after the edit
    neighborhood_score: float | None  # share of prompts with p(correct) > p(new object) after (ROME's NS)

    @property
    def p_change(self) -> float:
        """Relative change of the mean p(correct): -1 means gone."""
        return self.p_after / self.p_before - 1.0 if self.p_before > 0 else float("nan")


def _first(facts: Sequence[RenderedFact], n_prompts: int) -> list[Query]:
    return [p.queries[0] for r in facts for p in r.prompts[:n_prompts]]


def collateral(
    lm: LoadedModel,
    edit: ValueEdit,
    groups: Mapping[str, Sequence[RenderedFact]],
    new_id: int | None = None,
    n_prompts: int = 2,
) -> list[GroupEffect]:
    """The effect of ``edit`` on each group of facts (group name -> rendered facts the model knows)."""
    out = []
    for name, facts in groups.items():
        queries = _first(facts, n_prompts)
        if not queries:
            continue
        to_new = [Query(q.input_ids, q.answer_pos, new_id) for q in queries] if new_id is not None else []
        before = predict(lm, queries)
        with edit.applied(lm):
            after = predict(lm, queries)
            new_after = predict(lm, to_new) if to_new else None
        ns = float((after.prob > new_after.prob).float().mean()) if new_after is not None else None
        out.append(
            GroupEffect(
                name,
                tuple(r.fact.id for r in facts),
                tuple(f"{r.fact.subject} -> {r.fact.object}" for r in facts),
                len(queries),
                float(before.prob.mean()),
                float(after.prob.mean()),
                float((before.rank == 0).float().mean()),
                float((after.rank == 0).float().mean()),
                float((after.top == before.top).float().mean()),
                ns,
            )
        )
    return out


def top1_share(lm: LoadedModel, prompts: Sequence[PromptQueries], target_id: int) -> float:
    """Share of ``prompts`` whose argmax at the answer position is ``target_id`` (first token)."""
    if not prompts:
        return 0.0
    queries = [Query(p.queries[0].input_ids, p.queries[0].answer_pos, target_id) for p in prompts]
    return float((predict(lm, queries).rank == 0).float().mean())
