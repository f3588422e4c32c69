"""Edit one fact by rewriting the value vectors of its knowledge neurons (Dai et al., 2022, section 5.1).

Each knowledge neuron of the fact, except those shared by many facts of its relation, gets
``v_i <- v_i - lambda1 * E[old] + lambda2 * E[new]``, where ``E[t]`` is the word (input) embedding of the
first token of ``t`` as the model would continue the prompt with it (a leading space included in BPE
vocabularies). Position embeddings never enter. For models with untied embeddings ``embedding="output"``
uses the unembedding rows instead: those are the directions the value vector's contribution is read out
with, while the input embedding is what the paper used (for tied models the two are one matrix).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from legibility.editing.values import Embedding, Neuron, ValueEdit, token_embedding
from legibility.errors import LegibilityError
from legibility.facts.counterfacts import object_token
from legibility.facts.types import Fact
from legibility.models.loading import LoadedModel


@dataclass(frozen=True)
class EditConfig:
    """How a fact edit rewrites value vectors. Defaults follow Dai et al. (2022)."""

    lambda_old: float = 1.0  # lambda1: weight of E[old object] subtracted from each value vector
    lambda_new: float = 8.0  # lambda2: weight of E[new object] added to each value vector
    max_share: float = (
        0.1  # skip neurons that are knowledge neurons of more than this share of the relation's facts
    )
    embedding: Embedding = (
        "input"  # "input": word embedding (paper); "output": unembedding rows (untied models)
    )


def shared_neurons(relation_neurons: Sequence[Sequence[Neuron]], max_share: float) -> set[Neuron]:
    """Neurons that are knowledge neurons of more than ``max_share`` of the facts (one set per fact) and of
    at least two facts.

    The edited fact's own set is among ``relation_neurons``, so with fewer than ``1 / max_share`` facts
    (e.g. 5 facts at 0.1) "more than max_share" alone would be met by a single fact: every neuron of the
    fact itself would count as shared and nothing would be left to edit. A neuron of one fact only is
    never shared."""
    counts = Counter(tuple(n) for s in relation_neurons for n in {tuple(m) for m in s})
    need = max(max_share * len(relation_neurons), 1.0)
    return {n for n, c in counts.items() if c > need}  # type: ignore[misc]


def edit_neurons(
    neurons: Sequence[Neuron],
    relation_neurons: Sequence[Sequence[Neuron]] | None,
    max_share: float,
) -> list[Neuron]:
    """The fact's knowledge neurons minus those shared by more than ``max_share`` of the relation's facts;
    without ``relation_neurons`` (the knowledge neurons of the relation's facts) nothing is excluded."""
    if not relation_neurons:
        return [tuple(n) for n in neurons]  # type: ignore[misc]
    shared = shared_neurons(relation_neurons, max_share)
    return [tuple(n) for n in neurons if tuple(n) not in shared]  # type: ignore[misc]


def value_edit(
    lm: LoadedModel, neurons: Sequence[Neuron], old_id: int, new_id: int, config: EditConfig | None = None
) -> ValueEdit:
    """Add ``-lambda1 * E[old_id] + lambda2 * E[new_id]`` to the value vectors of ``neurons``."""
    cfg = config or EditConfig()
    old = token_embedding(lm, old_id, cfg.embedding)  # [d_model]
    new = token_embedding(lm, new_id, cfg.embedding)  # [d_model]
    vector = -cfg.lambda_old * old + cfg.lambda_new * new
    return ValueEdit(
        tuple(neurons),  # type: ignore[arg-type]
        vector,
        "add",
        f"-{cfg.lambda_old}*E[{old_id}] + {cfg.lambda_new}*E[{new_id}] ({cfg.embedding} embedding)",
    )


def fact_edit(
    lm: LoadedModel,
    fact: Fact,
    new: str,
    neurons: Sequence[Neuron],
    relation_neurons: Sequence[Sequence[Neuron]] | None = None,
    config: EditConfig | None = None,
) -> ValueEdit:
    """The edit that moves ``fact`` from its object to ``new``, on its knowledge neurons ``neurons``.

    ``relation_neurons``: the knowledge neurons of the relation's facts (one set per fact, this fact's
    included), used to leave out neurons shared by more than ``config.max_share`` of them, as in the paper.

    >>> edit = fact_edit(lm, fact, "Paris", kn.neurons, all_sets)   # doctest: +SKIP
    >>> with edit.applied(lm):                                      # doctest: +SKIP
    ...     predict(lm, queries)
    """
    cfg = config or EditConfig()
    old_id, new_id = object_token(lm, fact, fact.object), object_token(lm, fact, new)
    if old_id == new_id:
        raise LegibilityError(
            f"{fact.object!r} and {new!r} start with the same token; the edit works on first tokens, "
            "so pick a new object that starts differently."
        )
    kept = edit_neurons(neurons, relation_neurons, cfg.max_share)
    edit = value_edit(lm, kept, old_id, new_id, cfg)
    return replace(
        edit, description=f"{fact.subject} | {fact.relation} | {fact.object} -> {new}: {edit.description}"
    )
