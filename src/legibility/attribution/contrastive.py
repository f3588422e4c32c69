"""Contrastive integrated gradients: attribute the target against the relation's other objects.

Objective, for a query with target t and contrast set C (the first tokens of the other objects of the
fact's relation, t excluded):

    f = log p(t) - log sum_{c in C} p(c) = logit_t - logsumexp_{c in C} logit_c

the log-odds of the target against the relation's other answers. A neuron that raises every answer of the
relation alike (a relation-wide "this is a capital" neuron) leaves f unchanged and gets no attribution; a
neuron that picks this fact's object among them gets all of it. Integrated gradients of f along the usual
path (zero baseline, answer position); by completeness the scores of a layer sum to f(a) - f(0).

Queries need ``contrast_ids``: :func:`with_contrast` fills them from the other facts of each relation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from legibility.attribution.base import METHODS, AttributionConfig, MethodInfo
from legibility.attribution.paths import Objective, answer_path_attribution
from legibility.errors import LegibilityError
from legibility.facts.types import PromptQueries, Query, RenderedFact
from legibility.models.loading import LoadedModel


def contrast_objective(query: Query) -> Objective:
    """logit_t - logsumexp over the contrast tokens (other than t)."""
    others = [c for c in dict.fromkeys(query.contrast_ids) if c != query.target_id]
    if not others:
        raise LegibilityError(
            "contrastive IG needs the relation's other objects: pass facts through "
            "legibility.attribution.contrastive.with_contrast (a relation needs >= 2 distinct objects)"
        )

    def f(logits: Tensor) -> Tensor:
        idx = torch.tensor(others, device=logits.device)
        return logits[:, query.target_id] - logits[:, idx].logsumexp(-1)

    return f


def with_contrast(facts: Sequence[RenderedFact]) -> list[RenderedFact]:
    """The facts with every query's ``contrast_ids`` set to the first target tokens of the other objects of
    its relation (among ``facts``). Multi-token targets contrast their first token only."""
    firsts: dict[str, dict[str, int]] = defaultdict(dict)  # relation -> object -> first target token
    for r in facts:
        if r.prompts:
            firsts[r.fact.relation].setdefault(r.fact.object, r.prompts[0].queries[0].target_id)
    out = []
    for r in facts:
        ids = tuple(t for o, t in firsts[r.fact.relation].items() if o != r.fact.object)
        prompts = [
            PromptQueries(p.text, tuple(replace(q, contrast_ids=ids) for q in p.queries)) for p in r.prompts
        ]
        out.append(RenderedFact(r.fact, prompts, dict(r.skipped)))
    return out


def contrastive_ig(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    return torch.stack([answer_path_attribution(lm, q, contrast_objective(q), config) for q in queries])


METHODS.register("ig-contrastive")(
    MethodInfo(
        contrastive_ig,
        exact=False,  # exact IG, but of a different objective than the reference's p(target)
        description="integrated gradients of log p(target) - log sum p(other objects of the relation)",
        contrast=True,
    )
)
