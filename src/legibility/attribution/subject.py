"""Integrated gradients at the last subject token, where causal tracing (ROME) and Geva et al. locate
factual recall in mid-layer MLPs.

The neurons scaled along the path are those at the subject's last token (``Query.subject_pos``, set by
:func:`legibility.facts.render.render`); the objective is p(target) at the answer position, as in plain IG.
Its registry entry says ``where="all"``: the runner suppresses such neurons at every position, since
suppressing them at the answer position alone tests a position they were not found at.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from legibility.attribution.base import METHODS, AttributionConfig, MethodInfo
from legibility.attribution.paths import path_attribution, target_prob
from legibility.errors import LegibilityError
from legibility.facts.types import Query
from legibility.models.loading import LoadedModel


def subject_ig(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
    out = []
    for q in queries:
        if not 0 <= q.subject_pos < len(q.input_ids):
            raise LegibilityError(
                "IG at the subject needs the subject's position: render facts with legibility.render "
                "(the subject must appear verbatim in the prompt)"
            )
        out.append(path_attribution(lm, q, target_prob(q), q.subject_pos, config))
    return torch.stack(out)


METHODS.register("ig-subject")(
    MethodInfo(
        subject_ig,
        exact=False,  # exact IG, but of the neurons at the last subject token, not the answer position
        description="integrated gradients of p(target) for the neurons at the last subject token",
        where="all",
    )
)
