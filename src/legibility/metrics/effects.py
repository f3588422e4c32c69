"""Per-fact effects of suppressing and amplifying knowledge neurons, with controls.

For a fact f with knowledge neurons K (paper protocol: intervention at the answer position only, or at
every position for methods that locate neurons elsewhere), every p below is measured on f's *held-out*
prompts (:class:`legibility.facts.split.PromptSplit`), which did not choose K:

* own: p(correct) with K suppressed (x0) / amplified (x2), against the unmodified model;
* controls on f: the same for *random* neurons (same count per layer as K, seeded by the fact) and for
  *activation-selected* neurons (the |K| neurons with the largest mean activation over f's selection
  prompts);
* in-sample: the own and random interventions on f's selection prompts (to size the selection bias);
* collateral: K suppressed / amplified, measured on other facts in four disjoint tiers (see
  :data:`legibility.metrics.scorecard.TIERS`): ``same_object`` (same object), ``same_subject`` (same
  subject, other object), ``same_relation`` (same relation, other subject and object) and
  ``other_relation`` (other relation, subject and object). A tier is empty where the pool has no such fact.

p(correct) of a prompt is the product over its target tokens (one for single-token targets); a set's p is
the mean over its prompts. Relative change = (p_after - p_before) / p_before.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from legibility.facts.split import PromptSplit
from legibility.facts.types import Fact, PromptQueries, RenderedFact
from legibility.forward import answer_activations, predict
from legibility.interventions import Intervention, Op, group_by_layer
from legibility.metrics.scorecard import TIERS
from legibility.models.loading import LoadedModel
from legibility.neurons import Neuron

OPS: tuple[Op, ...] = ("suppress", "amplify")
CONTROLS = ("kn", "random", "activation")


@dataclass(frozen=True)
class EffectConfig:
    """Which control measurements accompany each fact."""

    controls: int = 3  # control facts per collateral tier (fewer where the pool has fewer)
    control_prompts: int | None = None  # prompts per control fact, a seeded sample (None: all its prompts)
    batch_size: int = 64


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


def control_tier(fact: Fact, other: Fact) -> str | None:
    """The collateral tier of ``other`` for ``fact`` (None for the fact itself)."""
    if other.id == fact.id:
        return None
    if other.object == fact.object:
        return "same_object"
    if other.subject == fact.subject:
        return "same_subject"
    if other.relation == fact.relation:
        return "same_relation"
    return "other_relation"


class EffectRunner:
    """Measures :meth:`fact_effects` for many facts (each fact's record depends on that fact alone).

    ``where``: the positions the neurons are intervened on, "answer" (paper protocol) or "all" (neurons
    located at another position; the attribution method's registry entry says which)."""

    def __init__(
        self,
        lm: LoadedModel,
        pool: Sequence[RenderedFact],
        config: EffectConfig | None = None,
        split: PromptSplit | None = None,
        seed: int = 0,
        where: str = "answer",
    ):
        self.lm = lm
        self.cfg = config or EffectConfig()
        self.split = split or PromptSplit()
        self.seed = seed
        self.where = where
        self.pool = list(pool)

    def _controls(self, fact: RenderedFact) -> dict[str, list[RenderedFact]]:
        rng = random.Random(f"{self.seed}|{fact.fact.id}")
        tiers: dict[str, list[RenderedFact]] = {t: [] for t in TIERS}
        for r in self.pool:
            if (tier := control_tier(fact.fact, r.fact)) is not None:
                tiers[tier].append(r)
        return {t: rng.sample(c, min(self.cfg.controls, len(c))) for t, c in tiers.items()}

    def _control_prompts(self, r: RenderedFact) -> list[PromptQueries]:
        k = self.cfg.control_prompts
        if k is None or k >= len(r.prompts):
            return list(r.prompts)
        chosen = sorted(random.Random(f"{self.seed}|{r.fact.id}|controls").sample(range(len(r.prompts)), k))
        return [r.prompts[i] for i in chosen]

    def _means(self, groups: Sequence[Sequence[PromptQueries]], iv: Intervention | None) -> list[float]:
        """Mean p(correct) of each group of prompts, all groups in one pass of the model (the same
        intervention applies to all of them)."""
        flat = [p for g in groups for p in g]
        if not flat:
            return [float("nan")] * len(groups)
        probs = prompt_probs(self.lm, flat, iv, self.cfg.batch_size)
        out, i = [], 0
        for g in groups:
            out.append(float(probs[i : i + len(g)].mean()))
            i += len(g)
        return out

    def _intervention(self, neurons: Sequence[Neuron], op: Op) -> Intervention:
        return Intervention(group_by_layer(list(neurons)), op, where=self.where)  # type: ignore[arg-type]

    def fact_effects(self, fact: RenderedFact, neurons: Sequence[Neuron]) -> dict:
        """A JSON-ready record of p before/after every intervention for one fact.

        Every prompt group that one intervention applies to (the fact's held-out and selection prompts, all
        its control facts' prompts) is measured in one pass: seven passes per fact."""
        lm, cfg = self.lm, self.cfg
        fid = fact.fact.id
        selection, heldout = self.split.split(fact)
        in_sample = self.split.holdout > 0
        sets = {
            "kn": list(neurons),
            "random": random_neurons(neurons, lm.sites.n_neurons, f"{self.seed}|{fid}"),
            "activation": activation_neurons(lm, selection, len(neurons), cfg.batch_size),
        }
        controls = [
            (tier, r, self._control_prompts(r)) for tier, rs in self._controls(fact).items() for r in rs
        ]
        # The unmodified p of every group in one pass too: no cache across facts, so a fact's record depends
        # on the fact alone (the pass's composition sets the last float bits) and a resumed run equals an
        # uninterrupted one bit for bit.
        unmodified = {
            f"{fid}|heldout": heldout,
            **({f"{fid}|selection": selection} if in_sample else {}),
            **{f"{r.fact.id}|control": prompts for _, r, prompts in controls},
        }
        before = dict(zip(unmodified, self._means(list(unmodified.values()), None), strict=True))
        own: dict[str, dict[str, float]] = {op: {} for op in OPS}
        sample: dict[str, dict[str, float]] = {op: {} for op in OPS}
        after: dict[str, list[float]] = {}
        for op in OPS:
            for name, chosen in sets.items():
                groups: list[Sequence[PromptQueries]] = [heldout]
                if in_sample and name != "activation":
                    groups.append(selection)
                if name == "kn":
                    groups += [prompts for _, _, prompts in controls]
                means = self._means(groups, self._intervention(chosen, op))
                own[op][name] = means[0]
                if in_sample and name != "activation":
                    sample[op][name] = means[1]
                if name == "kn":
                    after[op] = means[-len(controls) :] if controls else []
        record: dict = {
            "fact_id": fid,
            "relation": fact.fact.relation,
            "subject": fact.fact.subject,
            "object": fact.fact.object,
            "n_neurons": len(neurons),
            "prompts": {"selection": len(selection), "heldout": len(heldout)},
            "before": before[f"{fid}|heldout"],
            "own": own,
            "controls": {tier: [] for tier in TIERS},
            "neuron_sets": {k: [list(n) for n in v] for k, v in sets.items() if k != "kn"},
        }
        if in_sample:
            record["in_sample"] = {"before": before[f"{fid}|selection"], **sample}
        for i, (tier, r, _) in enumerate(controls):
            entry = {
                "fact_id": r.fact.id,
                "relation": r.fact.relation,
                "before": before[f"{r.fact.id}|control"],
            }
            entry.update({op: after[op][i] for op in OPS})
            record["controls"][tier].append(entry)
        return record
