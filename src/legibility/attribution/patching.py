"""Attribution patching (AtP; Nanda 2023, Kramar et al. 2024): the first-order estimate of what replacing a
neuron's activation by a baseline does to p(target), for every FFN neuron from one forward and one backward.

    score[l, i] = (a_i - b_i) * d p(target) / d a_i   at the clean activation a

* ``grad-x-act`` (in :mod:`legibility.attribution.approximate`) is the zero baseline, b = 0;
* ``atp-mean``: b = the mean activation, at the answer position, of the same prompt with
  ``config.baselines`` other subjects of the relation (the relation's typical activation for that template);
* ``atp-corrupt``: b = the activation of the same prompt with one other subject of the relation (a
  corrupted prompt, as in activation patching).

The other subjects' prompts travel with each query (:attr:`Query.baselines`), filled in by
:func:`with_baselines`, which the methods' registry entries declare as their ``prepare`` step: a runner calls
:func:`legibility.attribution.prepare_facts` once with all its facts and every method gets what it needs.
Other subjects are chosen per fact by a hash of the two fact ids (deterministic, independent of the facts'
order); subjects with the same object come last, so a baseline prompt does not point at the same answer.

:func:`answer_gradients` is the shared backward: activations and gradients of p(target) at every layer's
answer position, optionally under a context that modifies the backward pass (RelP's rules,
:mod:`legibility.attribution.relevance`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace

import torch
from torch import Tensor

from legibility.attribution import engine
from legibility.attribution.base import METHODS, AttributionConfig, MethodInfo
from legibility.attribution.fast import frozen_params
from legibility.errors import LegibilityError
from legibility.facts.render import render_prompt
from legibility.facts.types import OBJECT, SUBJECT, PromptQueries, Query, RenderedFact
from legibility.forward import answer_activations, answer_logits, make_batch
from legibility.models.loading import LoadedModel

# A context, entered around the forward pass, that changes how gradients flow back (the forward values stay
# the same); it yields the transform applied to each site activation before its gradient is read.
SiteRule = Callable[[Tensor], Tensor]
BackwardRules = Callable[[LoadedModel], AbstractContextManager[SiteRule]]


@contextlib.contextmanager
def plain_gradients(lm: LoadedModel) -> Iterator[SiteRule]:
    """The unmodified backward pass."""
    yield lambda a: a


def answer_gradients(
    lm: LoadedModel, queries: Sequence[Query], batch_size: int, rules: BackwardRules = plain_gradients
) -> tuple[Tensor, Tensor]:
    """(activations, gradients), each [n_queries, n_layers, n_neurons]: every layer's FFN activation at the
    answer position and d p(target) / d that activation at the clean point, the backward pass modified by
    ``rules``; ``batch_size`` queries at a time.

    On the engine (:mod:`legibility.attribution.engine`, every family of the table): one clean forward of
    the batch records each block's inputs and caches the prompts' prefixes; then only the answer token runs
    forward and backward again (causal LMs: nothing before the answer position depends on its activations),
    from the site of block 0. Families without an engine tail run the whole prompt forward and backward.
    """
    tail = engine.tail_for(lm)
    n = len(queries)
    acts = torch.empty(n, lm.sites.n_layers, lm.sites.n_neurons, device=lm.device)
    grads = torch.empty_like(acts)
    # same mode (cached prefix or not) together, similar lengths together (less padding)
    order = sorted(range(n), key=lambda i: (engine.is_cached(lm, queries[i]), len(queries[i].input_ids)))
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if (
            g is not None
            and len(g) < max(1, batch_size)
            and engine.is_cached(lm, queries[g[0]]) == engine.is_cached(lm, queries[i])
        ):
            g.append(i)
        else:
            groups.append([i])
    with frozen_params(lm):
        for idx in groups:
            chosen = [queries[i] for i in idx]
            if tail is None:
                a, g_ = _whole_prompt_gradients(lm, chosen, rules)
            else:
                a, g_ = _answer_token_gradients(lm, tail, chosen, rules)
            where = torch.tensor(idx, dtype=torch.long, device=lm.device)
            acts[where] = a
            grads[where] = g_
    return acts, grads


def _answer_token_gradients(
    lm: LoadedModel, tail: engine.Tail, queries: Sequence[Query], rules: BackwardRules
) -> tuple[Tensor, Tensor]:
    n_layers = lm.sites.n_layers
    pack = engine.clean_pack(lm, queries)  # no grad: prefixes cached, block inputs recorded
    rows = torch.arange(len(queries), device=lm.device)
    targets = torch.tensor([q.target_id for q in queries], dtype=torch.long, device=lm.device)
    # A zero added at each layer's answer position: its gradient is the total derivative of p with respect
    # to that layer's activation.
    deltas = torch.zeros(len(rows), n_layers, lm.sites.n_neurons, device=lm.device, requires_grad=True)
    with torch.enable_grad(), rules(lm) as site_rule:

        def add(layer: int):
            def fn(a: Tensor) -> Tensor:  # a [rows, t, n_neurons]; the answer at pack.pos
                a = site_rule(a).clone()
                a[rows, pack.pos] = a[rows, pack.pos] + deltas[:, layer].to(a.dtype)
                return a

            return fn

        # every row starts at block 0 with its clean site activation (+ delta); later sites get theirs
        points = pack.acts[:, 0] + deltas[:, 0]
        with lm.sites.patch({layer: add(layer) for layer in range(1, n_layers)}):
            logits = engine.rows_logits(lm, tail, pack, [0] * len(rows), points, rows)
    with torch.enable_grad():
        probs = logits.float().softmax(-1)[rows, targets]
        (g,) = torch.autograd.grad(probs.sum(), deltas)
    return pack.acts, g


def _whole_prompt_gradients(
    lm: LoadedModel, queries: Sequence[Query], rules: BackwardRules
) -> tuple[Tensor, Tensor]:
    n_layers = lm.sites.n_layers
    batch = make_batch(lm, queries)
    rows = torch.arange(batch.input_ids.shape[0], device=lm.device)
    # A zero added at each layer's answer position: its gradient is the total derivative of p with respect
    # to that layer's activation (replacing the activation by a leaf would cut the paths through later
    # layers' answer-position activations).
    deltas = torch.zeros(len(rows), n_layers, lm.sites.n_neurons, device=lm.device, requires_grad=True)
    acts: dict[int, Tensor] = {}
    with torch.enable_grad(), rules(lm) as site_rule:

        def add(layer: int):
            def fn(a: Tensor) -> Tensor:  # a [batch, pos, n_neurons]
                acts[layer] = a[rows, batch.positions].detach().float()
                a = site_rule(a).clone()
                a[rows, batch.positions] = a[rows, batch.positions] + deltas[:, layer].to(a.dtype)
                return a

            return fn

        with lm.sites.patch({layer: add(layer) for layer in range(n_layers)}):
            logits = answer_logits(lm, batch)
    with torch.enable_grad():
        probs = logits.float().softmax(-1)[rows, batch.targets]
        (g,) = torch.autograd.grad(probs.sum(), deltas)
    return torch.stack([acts[layer] for layer in range(n_layers)], 1), g


def baseline_activations(lm: LoadedModel, queries: Sequence[Query], first: int | None, method: str) -> Tensor:
    """Mean activation [n_queries, n_layers, n_neurons] at the answer position over each query's baseline
    prompts (its first ``first`` only, when given)."""
    chosen = [q.baselines if first is None else q.baselines[:first] for q in queries]
    if not all(chosen):
        raise LegibilityError(
            f"{method} needs other subjects' prompts of each fact's relation: attribute facts prepared by "
            "legibility.attribution.prepare_facts (with every fact of the run; a relation needs >= 2 subjects)"
        )
    flat = [b for bs in chosen for b in bs]
    acts = answer_activations(lm, flat)  # [n_baselines, n_layers, n_neurons]
    counts = torch.tensor([len(bs) for bs in chosen], device=acts.device)
    owner = torch.repeat_interleave(torch.arange(len(chosen), device=acts.device), counts)
    total = torch.zeros(len(chosen), *acts.shape[1:], device=acts.device).index_add_(0, owner, acts)
    return total / counts[:, None, None]


def patching_method(first: int | None, rules: BackwardRules, name: str):
    """(a - baseline) * gradient: the baseline is the mean over each query's baseline prompts (the first
    ``first`` of them when given; ``first=0``: the zero baseline), the gradient under ``rules``."""

    def method(lm: LoadedModel, queries: Sequence[Query], config: AttributionConfig) -> Tensor:
        acts, grads = answer_gradients(lm, queries, config.batch_size, rules)
        if first == 0:
            return acts * grads
        return (acts - baseline_activations(lm, queries, first, name)) * grads

    return method


# --------------------------------------------------------------------------------- baselines (prepare step)


def _order(fact_id: str, other_id: str) -> str:
    return hashlib.sha256(f"{fact_id}|{other_id}".encode()).hexdigest()


def with_baselines(lm: LoadedModel, facts: Sequence[RenderedFact], k: int) -> list[RenderedFact]:
    """The facts with every query's ``baselines`` set to the same prompt with up to ``k`` other subjects of
    its relation (among ``facts``), as the model reads them (same template, same gold target prefix).

    A prompt's template is the fact's prompt with its subject replaced by ``[X]``; another fact's subject goes
    in its place. Other facts are taken in the order of a hash of (fact id, other fact id), those with
    another object first; a candidate whose prompt does not render like the fact's (e.g. the target splits
    differently after it) is skipped. A prompt without any baseline keeps ``baselines=()`` (methods that need
    one then refuse it with a one-line error).
    """
    if k < 1:
        raise LegibilityError(f"the number of baseline prompts must be >= 1, got {k}")
    by_rel: dict[str, list[RenderedFact]] = defaultdict(list)
    for r in facts:
        by_rel[r.fact.relation].append(r)
    for rel, group in by_rel.items():
        if len({r.fact.subject for r in group}) < 2:
            raise LegibilityError(
                f"attribution patching against other subjects needs two facts with different subjects in each "
                f"relation; relation {rel} has only {group[0].fact.id!r}: add facts or use another method"
            )
    out = []
    for r in facts:
        others = sorted(
            (o for o in by_rel[r.fact.relation] if o.fact.subject != r.fact.subject),
            key=lambda o: (o.fact.object == r.fact.object, _order(r.fact.id, o.fact.id)),
        )
        templates = _templates(lm, r)
        prompts = []
        for p in r.prompts:
            template = templates.get(p.text)
            found: list[PromptQueries] = []
            for o in others:
                if template is None or len(found) == k:
                    break
                q = render_prompt(
                    lm, template.replace(SUBJECT, o.fact.subject), r.fact.object, len(p.queries) > 1
                )
                if isinstance(q, PromptQueries) and len(q.queries) == len(p.queries):
                    found.append(q)
            queries = tuple(
                replace(q, baselines=tuple(f.queries[j] for f in found)) for j, q in enumerate(p.queries)
            )
            prompts.append(PromptQueries(p.text, queries))
        out.append(RenderedFact(r.fact, prompts, dict(r.skipped)))
    return out


def _templates(lm: LoadedModel, r: RenderedFact) -> dict[str, str]:
    """Rendered prompt text -> the fact's prompt (object slot left) with the subject as ``[X]``."""
    out: dict[str, str] = {}
    subject = r.fact.subject
    for prompt in r.fact.prompts:
        if not subject or subject not in prompt.partition(OBJECT)[0]:
            continue
        rendered = render_prompt(lm, prompt, r.fact.object, True, subject)
        if isinstance(rendered, PromptQueries):
            out.setdefault(rendered.text, prompt.replace(subject, SUBJECT))
    return out


def prepare_baselines(first: int | None):
    """The prepare step of methods that patch against ``first`` (None: ``config.baselines``) other subjects."""

    def prepare(
        lm: LoadedModel, facts: Sequence[RenderedFact], config: AttributionConfig
    ) -> list[RenderedFact]:
        return with_baselines(lm, facts, first or config.baselines)

    return prepare


METHODS.register("atp-mean")(
    MethodInfo(
        patching_method(None, plain_gradients, "atp-mean"),
        exact=False,
        description="attribution patching: (activation - mean activation of the same prompt with "
        "config.baselines other subjects of the relation) x gradient at the clean activation",
        prepare=prepare_baselines(None),
    )
)
METHODS.register("atp-corrupt")(
    MethodInfo(
        patching_method(1, plain_gradients, "atp-corrupt"),
        exact=False,
        description="attribution patching: (activation - activation of the same prompt with another subject "
        "of the relation) x gradient at the clean activation",
        prepare=prepare_baselines(1),
    )
)
