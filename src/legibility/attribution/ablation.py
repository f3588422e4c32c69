"""Many neuron ablations at once: p(target) of each (prompt, neuron set) row with that set zeroed at the
answer position, for measuring what attribution scores claim (the true effect of each neuron, curves of top-k
sets).

Each row is one prompt with its own set suppressed (set to 0, as :class:`legibility.interventions.Intervention`
``suppress`` at the answer position). On the engine (:mod:`legibility.attribution.engine`), one clean
forward of the prompts caches their prefixes and records every block's inputs; a row then runs only the
answer token, from the site of block 0, with its mask applied at every layer: for a causal LM nothing before
the answer position changes, so that is the whole forward. Families without an engine tail, and prompts
that are not cached (masked LMs), run one intervention per set through :func:`legibility.forward.predict`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from legibility.facts.types import Query
from legibility.models.loading import LoadedModel
from legibility.neurons import Neuron


def suppressed_probs(
    lm: LoadedModel,
    queries: Sequence[Query],
    sets: Sequence[Sequence[Neuron]],
    rows: Sequence[tuple[int, int]],
    batch_size: int = 256,
) -> Tensor:
    """p(target) [n_rows]: row (q, s) is ``queries[q]`` with the neurons of ``sets[s]`` zeroed at its answer
    position (an empty set: the unmodified model)."""
    from legibility.attribution import engine
    from legibility.attribution.fast import frozen_params

    tail = engine.tail_for(lm)
    out = torch.empty(len(rows), device=lm.device)
    if not rows:
        return out
    if tail is None or not all(engine.is_cached(lm, q) for q in queries):
        return _one_set_at_a_time(lm, queries, sets, rows, out)
    n_layers, width = lm.sites.n_layers, lm.sites.n_neurons
    with torch.no_grad(), frozen_params(lm):
        pack = engine.clean_pack(lm, queries)
        targets = torch.tensor([q.target_id for q in queries], dtype=torch.long, device=lm.device)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            rq = torch.tensor([q for q, _ in chunk], dtype=torch.long, device=lm.device)
            keep = torch.ones(len(chunk), n_layers, width, device=lm.device)  # [rows, layers, neurons]
            for r, (_, s) in enumerate(chunk):
                for layer, i in sets[s]:
                    keep[r, layer, i] = 0.0
            layers = [layer for layer in range(1, n_layers) if bool((keep[:, layer] == 0).any())]

            def zero(layer: int, keep: Tensor = keep):
                def fn(a: Tensor) -> Tensor:  # a [rows, 1, neurons]: the answer token alone
                    return a * keep[:, layer, None].to(a.dtype)

                return fn

            points = pack.acts[rq, 0] * keep[:, 0]
            with lm.sites.patch({layer: zero(layer) for layer in layers}):
                logits = engine.rows_logits(lm, tail, pack, [0] * len(chunk), points, rq)
            out[start : start + len(chunk)] = logits.float().softmax(-1).gather(1, targets[rq, None])[:, 0]
    return out


def _one_set_at_a_time(
    lm: LoadedModel,
    queries: Sequence[Query],
    sets: Sequence[Sequence[Neuron]],
    rows: Sequence[tuple[int, int]],
    out: Tensor,
) -> Tensor:
    from legibility.forward import predict
    from legibility.interventions import Intervention, group_by_layer

    by_set: dict[int, list[int]] = defaultdict(list)
    for r, (_, s) in enumerate(rows):
        by_set[s].append(r)
    for s, rs in by_set.items():
        chosen = [queries[rows[r][0]] for r in rs]
        if sets[s]:
            with Intervention(group_by_layer(list(sets[s])), "suppress").apply(lm):
                probs = predict(lm, chosen).prob
        else:
            probs = predict(lm, chosen).prob
        out[torch.tensor(rs, dtype=torch.long, device=lm.device)] = probs
    return out
