"""Per-fact effects of suppressing and amplifying knowledge neurons, with controls.

For a fact f with knowledge neurons K (paper protocol, intervention at the answer position only):

* own: p(correct) of f's prompts with K suppressed (x0) / amplified (x2), against the unmodified model;
* controls on f: the same for *random* neurons (same count per layer as K, seeded by the fact) and for
  *activation-selected* neurons (the |K| neurons with the largest mean activation over f's prompts);
* specificity: K of f suppressed / amplified, measured on three control tiers of other facts: ``same``
  (same relation, other subject), ``same_subject`` (same subject, other relation; only where the subject
  has kept facts in other relations, else the tier is empty) and ``other`` (other relation and other
  subject).

p(correct) of a prompt is the product over its target tokens (one for single-token targets); a fact's p is
the mean over its prompts. Relative change = (p_after - p_before) / p_before.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from legibility.facts.types import PromptQueries, RenderedFact
from legibility.forward import answer_activations, predict
from legibility.interventions import Intervention, Op, group_by_layer
from legibility.models.loading import LoadedModel
from legibility.neurons import Neuron

OPS: tuple[Op, ...] = ("suppress", "amplify")
CONTROLS = ("kn", "random", "activation")


@dataclass(frozen=True)
class EffectConfig:
    """Which control measurements accompany each fact."""

    n_same: int = 3  # other facts of the same relation on which the fact's neurons are tested
    n_other: int = 3  # facts of other relations and other subjects on which they are tested
    n_same_subject: int = 3  # facts of the same subject in other relations (where the subject has any)
    control_prompts: int = 4  # prompts used per control fact (all prompts are used for the fact itself)
    seed: int = 0  # sampling of random neurons and control facts
    batch_size: int = 64
    # where the neurons are intervened on: "answer" (paper protocol) or "all" positions (for neurons
    # located at another position, e.g. the last subject token)
    where: str = "answer"


def prompt_probs(
    lm: LoadedModel,
    prompts: Sequence[PromptQueries],
    intervention: Intervention | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """p(correct) per prompt [n_prompts]: product of its target tokens' probabilities."""
    flat = [q for p in prompts for q in p.queries]
    if intervention is None:
        probs = predict(lm, flat, batch_size).prob
    else:
        with intervention.apply(lm):
            probs = predict(lm, flat, batch_size).prob
    out, i = [], 0
    for p in prompts:
        k = len(p.queries)
        out.append(float(torch.prod(probs[i : i + k])))
        i += k
    return np.array(out)


def random_neurons(neurons: Sequence[Neuron], n_neurons: int, seed: str) -> list[Neuron]:
    """As many random neurons per layer as ``neurons`` has, none of them in ``neurons``."""
    rng = random.Random(seed)
    taken = set(neurons)
    out = []
    for layer, idx in group_by_layer(list(neurons)).items():
        pool = [i for i in range(n_neurons) if (layer, i) not in taken]
        out += [(layer, i) for i in rng.sample(pool, len(idx))]
    return sorted(out)


def activation_neurons(
    lm: LoadedModel, prompts: Sequence[PromptQueries], k: int, batch_size: int = 64
) -> list[Neuron]:
    """The k neurons with the largest mean activation at the answer position over the prompts."""
    acts = answer_activations(lm, [p.queries[0] for p in prompts], batch_size).mean(0)  # [layers, neurons]
    top = torch.topk(acts.flatten(), k).indices
    return sorted((int(i) // acts.shape[1], int(i) % acts.shape[1]) for i in top)


class EffectRunner:
    """Measures :func:`fact_effects` for many facts, caching the unmodified p of control facts."""

    def __init__(self, lm: LoadedModel, pool: Sequence[RenderedFact], config: EffectConfig | None = None):
        self.lm = lm
        self.cfg = config or EffectConfig()
        self.pool = list(pool)
        self._baseline: dict[str, float] = {}

    def _controls(self, fact: RenderedFact) -> dict[str, list[RenderedFact]]:
        rng = random.Random(f"{self.cfg.seed}|{fact.fact.id}")
        rel, subj = fact.fact.relation, fact.fact.subject
        same = [r for r in self.pool if r.fact.relation == rel and r.fact.id != fact.fact.id]
        other = [r for r in self.pool if r.fact.relation != rel and r.fact.subject != subj]
        same_subject = [r for r in self.pool if r.fact.relation != rel and r.fact.subject == subj]
        return {
            "same": rng.sample(same, min(self.cfg.n_same, len(same))),
            "other": rng.sample(other, min(self.cfg.n_other, len(other))),
            "same_subject": rng.sample(same_subject, min(self.cfg.n_same_subject, len(same_subject))),
        }

    def _p(self, r: RenderedFact, prompts: Sequence[PromptQueries], iv: Intervention | None) -> float:
        key = f"{r.fact.id}|{len(prompts)}"  # control facts use only their first prompts
        if iv is None and key in self._baseline:
            return self._baseline[key]
        p = float(prompt_probs(self.lm, prompts, iv, self.cfg.batch_size).mean())
        if iv is None:
            self._baseline[key] = p
        return p

    def fact_effects(self, fact: RenderedFact, neurons: Sequence[Neuron]) -> dict:
        """A JSON-ready record of p before/after every intervention for one fact."""
        lm, cfg = self.lm, self.cfg
        sets = {
            "kn": list(neurons),
            "random": random_neurons(neurons, lm.sites.n_neurons, f"{cfg.seed}|{fact.fact.id}"),
            "activation": activation_neurons(lm, fact.prompts, len(neurons), cfg.batch_size),
        }
        record: dict = {
            "fact_id": fact.fact.id,
            "relation": fact.fact.relation,
            "n_neurons": len(neurons),
            "before": self._p(fact, fact.prompts, None),
            "own": {op: {} for op in OPS},
            "same": [],
            "other": [],
            "same_subject": [],
            "neuron_sets": {k: [list(n) for n in v] for k, v in sets.items() if k != "kn"},
        }
        for op in OPS:
            for name, chosen in sets.items():
                iv = Intervention(group_by_layer(chosen), op, where=cfg.where)  # type: ignore[arg-type]
                record["own"][op][name] = self._p(fact, fact.prompts, iv)
        for group, facts in self._controls(fact).items():
            for r in facts:
                prompts = r.prompts[: cfg.control_prompts]
                entry = {"fact_id": r.fact.id, "before": self._p(r, prompts, None)}
                for op in OPS:
                    iv = Intervention(group_by_layer(list(neurons)), op, where=cfg.where)  # type: ignore[arg-type]
                    entry[op] = self._p(r, prompts, iv)
                record[group].append(entry)
        return record
