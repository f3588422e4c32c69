"""Evaluate fact edits and relation erases against the same operation on random neurons.

Fact edit, per fact (its knowledge neurons vs as many random neurons in the same layers):
  success@1 / @k   the new object's first token is the argmax / in the top k, on the prompts the neurons
                   were located with;
  change           the old object stops being the argmax, among prompts where it was the argmax;
  p_new / p_old    mean probability of the new / old object's first token;
  synonymy         success@1 / @k on prompts in other wording (PARAREL lemmas, e.g. "capital city" when
                   the neurons were located with "capital"; Niu et al. 2024 ask edits to survive synonyms);
  symmetry         success@1 / @k of the *subject* on the inverse relation's prompts about the new object
                   (edit "capital of Germany -> Paris", ask "Paris is the capital of" -> "Germany"), next to
                   the same before the edit (Niu et al.'s bijective symmetry);
  locality         share of other facts' prompts (same relation; other relations) whose argmax is unchanged;
  perplexity       relative change of the perplexity of a held-out text.
Relation erase: accuracy (argmax = correct) and mean p(correct) on the relation's facts (the ones whose
neurons chose what to erase, and held-out ones), on other relations' facts, and the perplexity change.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from legibility.editing.edit import EditConfig, edit_neurons, object_token, value_edit
from legibility.editing.erase import EraseConfig, relation_erase
from legibility.editing.text import SAMPLE_TEXT
from legibility.editing.values import Neuron, ValueEdit, random_like
from legibility.errors import LegibilityError
from legibility.facts.types import OBJECT, SUBJECT, Fact, PromptQueries, Query, RenderedFact, fill
from legibility.forward import Prediction, predict
from legibility.models.loading import LoadedModel

# Relation -> the relation that reads the same fact backwards (symmetric relations map to themselves).
INVERSE_RELATIONS = {"P36": "P1376", "P1376": "P36", "P47": "P47", "P530": "P530", "P190": "P190"}


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an edit/erase evaluation."""

    edit: EditConfig = field(default_factory=EditConfig)  # how facts are edited
    erase: EraseConfig = field(default_factory=EraseConfig)  # how relations are erased
    top_k: int = 5  # success@k
    seed: int = 0  # random controls and the choice of new objects
    locality_prompts: int = 2  # prompts per fact in the locality sets
    max_tokens: int = 64  # text lines are cut to this many tokens for perplexity


# ---------------------------------------------------------------------------------------------- helpers


@torch.no_grad()
def perplexity(lm: LoadedModel, text: str = SAMPLE_TEXT, max_tokens: int = 64) -> float:
    """Perplexity of ``text`` (one input per line): next-token for causal LMs (all lines in one padded
    batch), pseudo-perplexity (each token masked in turn) for masked LMs."""
    rows = [lm.encode(line.strip())[:max_tokens] for line in text.splitlines() if line.strip()]
    if lm.kind == "causal":
        rows = [r for r in rows if len(r) >= 2]
        if not rows:
            raise LegibilityError("the text gives no tokens to measure perplexity on")
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long, device=lm.device)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, device=lm.device), 1
        logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # [rows, pos-1, vocab]
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # [rows, pos-1]
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum"
        )
        return math.exp(float(nll) / int((labels != -100).sum()))
    nll_sum, count = 0.0, 0
    specials = set(getattr(lm.tokenizer, "all_special_ids", []) or [])
    for r in rows:
        positions = [t for t in range(len(r)) if r[t] not in specials]
        if not positions:
            continue
        ids = torch.tensor([r], device=lm.device).repeat(len(positions), 1)  # [n, pos]: row j masks position positions[j]
        idx = torch.arange(len(positions), device=lm.device)
        ids[idx, positions] = int(lm.tokenizer.mask_token_id)  # type: ignore[attr-defined]
        logits = lm.model(input_ids=ids).logits[idx, positions].float()  # [n, vocab]
        gold = torch.tensor([r[t] for t in positions], device=lm.device)
        nll_sum += float(torch.nn.functional.cross_entropy(logits, gold, reduction="sum"))
        count += len(positions)
    if count == 0:
        raise LegibilityError("the text gives no tokens to measure perplexity on")
    return math.exp(nll_sum / count)


def retarget(prompts: Sequence[PromptQueries], target_id: int) -> list[Query]:
    """The first query of each prompt, asking for ``target_id`` instead."""
    return [Query(p.queries[0].input_ids, p.queries[0].answer_pos, target_id) for p in prompts]


def first_queries(prompts: Sequence[PromptQueries]) -> list[Query]:
    return [p.queries[0] for p in prompts]


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


def _argmax_share(pred: Prediction, k: int = 1) -> float:
    return float((pred.rank < k).float().mean()) if len(pred.rank) else float("nan")


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------- fact edits


@dataclass
class EditCase:
    """One fact to edit, with the prompts it is evaluated on."""

    fact: RenderedFact  # prompts the neurons were located with; the edit's success is read on them
    new: str  # the new object
    neurons: list[Neuron]  # the fact's knowledge neurons
    synonyms: list[PromptQueries] = field(default_factory=list)  # other wordings of the same fact
    inverse_new: list[PromptQueries] = field(default_factory=list)  # inverse relation about the new object
    inverse_old: list[PromptQueries] = field(default_factory=list)  # inverse relation about the old object


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


class EditEvaluator:
    """Measures fact edits (knowledge neurons vs random neurons) on a fixed set of locality facts."""

    def __init__(
        self,
        lm: LoadedModel,
        cases: Sequence[EditCase],
        others: Sequence[RenderedFact] = (),
        relation_neurons: Sequence[Sequence[Neuron]] | None = None,
        text: str = SAMPLE_TEXT,
        config: EvalConfig | None = None,
    ):
        self.lm, self.cases, self.cfg, self.text = lm, list(cases), config or EvalConfig(), text
        self.relation_neurons = relation_neurons
        n = self.cfg.locality_prompts
        self.same = [(c.fact.fact.id, q) for c in self.cases for q in first_queries(c.fact.prompts[:n])]
        self.other = [q for r in others for q in first_queries(r.prompts[:n])]
        self.same_before = predict(lm, [q for _, q in self.same]) if self.same else None
        self.other_before = predict(lm, self.other) if self.other else None
        self.ppl_before = perplexity(lm, text, self.cfg.max_tokens)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)

    def _queries(self, case: EditCase) -> dict[str, list[Query]]:
        old_id = object_token(self.lm, case.fact.fact, case.fact.fact.object)
        new_id = object_token(self.lm, case.fact.fact, case.new)
        return {
            "old": retarget(case.fact.prompts, old_id),
            "new": retarget(case.fact.prompts, new_id),
            "syn_old": retarget(case.synonyms, old_id),
            "syn_new": retarget(case.synonyms, new_id),
            "inv_new": first_queries(case.inverse_new),
            "inv_old": first_queries(case.inverse_old),
        }

    def _predict_all(self, queries: dict[str, list[Query]]) -> dict[str, Prediction]:
        return {k: predict(self.lm, v) for k, v in queries.items() if v}

    def case(self, case: EditCase) -> list[dict]:
        """Records for the knowledge-neuron edit and its random control."""
        lm, cfg = self.lm, self.cfg
        fact = case.fact.fact
        kept = edit_neurons(case.neurons, self.relation_neurons, cfg.edit.max_share)
        old_id, new_id = object_token(lm, fact, fact.object), object_token(lm, fact, case.new)
        queries = self._queries(case)
        before = self._predict_all(queries)
        arms = {"kn": kept}
        if kept:
            avoid = [n for s in (self.relation_neurons or []) for n in s]
            arms["random"] = random_like(
                kept, lm.sites.n_neurons, self.generator, avoid=[*avoid, *case.neurons]
            )
        records = []
        for arm, neurons in arms.items():
            rec: dict = {
                "fact_id": fact.id,
                "subject": fact.subject,
                "old": fact.object,
                "new": case.new,
                "arm": arm,
                "neurons": [list(n) for n in neurons],
                "n_neurons": len(neurons),
                "n_located": len(case.neurons),
            }
            if not neurons:
                records.append(rec)
                continue
            edit = value_edit(lm, neurons, old_id, new_id, cfg.edit)
            with edit.applied(lm):
                after = self._predict_all(queries)
                rec.update(self._locality(fact.id))
                rec["ppl_change"] = perplexity(lm, self.text, cfg.max_tokens) / self.ppl_before - 1.0
            rec.update(self._fact_metrics(before, after))
            records.append(rec)
        return records

    def _fact_metrics(self, before: dict[str, Prediction], after: dict[str, Prediction]) -> dict:
        k = self.cfg.top_k
        out: dict = {}
        was_top = before["old"].rank == 0
        out["change"] = (
            float((after["old"].rank[was_top] != 0).float().mean()) if bool(was_top.any()) else None
        )
        out["success@1"] = _argmax_share(after["new"])
        out[f"success@{k}"] = _argmax_share(after["new"], k)
        out["success@1_before"] = _argmax_share(before["new"])
        out["p_new_before"], out["p_new_after"] = (
            float(before["new"].prob.mean()),
            float(after["new"].prob.mean()),
        )
        out["p_old_before"], out["p_old_after"] = (
            float(before["old"].prob.mean()),
            float(after["old"].prob.mean()),
        )
        if "syn_new" in after:
            out["synonymy@1"] = _argmax_share(after["syn_new"])
            out[f"synonymy@{k}"] = _argmax_share(after["syn_new"], k)
            out["synonymy_old@1_after"] = _argmax_share(after["syn_old"])
        if "inv_new" in after:
            out["symmetry@1_before"] = _argmax_share(before["inv_new"])
            out[f"symmetry@{k}_before"] = _argmax_share(before["inv_new"], k)
            out["symmetry@1"] = _argmax_share(after["inv_new"])
            out[f"symmetry@{k}"] = _argmax_share(after["inv_new"], k)
        if "inv_old" in after:
            out[f"inverse_old@{k}_before"] = _argmax_share(before["inv_old"], k)
            out[f"inverse_old@{k}_after"] = _argmax_share(after["inv_old"], k)
        return out

    def _locality(self, fact_id: str) -> dict:
        out: dict = {}
        if self.same_before is not None:
            keep = torch.tensor([fid != fact_id for fid, _ in self.same], device=self.lm.device)
            after = predict(self.lm, [q for _, q in self.same])
            same = (after.top == self.same_before.top)[keep]
            out["locality_same"] = float(same.float().mean()) if len(same) else None
        if self.other_before is not None:
            after = predict(self.lm, self.other)
            out["locality_other"] = float((after.top == self.other_before.top).float().mean())
        return out

    def run(self) -> list[dict]:
        return [r for c in self.cases for r in self.case(c)]


# ---------------------------------------------------------------------------------------------- erase


def evaluate_erase(
    lm: LoadedModel,
    relation_neurons: Sequence[Sequence[Neuron]],
    located: Sequence[RenderedFact],
    held_out: Sequence[RenderedFact] = (),
    others: Sequence[RenderedFact] = (),
    text: str = SAMPLE_TEXT,
    config: EvalConfig | None = None,
) -> list[dict]:
    """Records (one per arm: the relation's top shared neurons, random neurons in the same layers) of
    accuracy and p(correct) before/after erasing, on each fact set, and the perplexity change."""
    cfg = config or EvalConfig()
    erase = relation_erase(lm, relation_neurons, cfg.erase)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    avoid = [n for s in relation_neurons for n in s]
    control = ValueEdit(
        tuple(random_like(list(erase.neurons), lm.sites.n_neurons, generator, avoid)), erase.vector, "set"
    )
    sets = {"located": located, "held_out": held_out, "other": others}
    queries = {k: [q for r in v for q in first_queries(r.prompts)] for k, v in sets.items() if v}
    before = {k: predict(lm, q) for k, q in queries.items()}
    ppl_before = perplexity(lm, text, cfg.max_tokens)
    records = []
    for arm, edit in (("kn", erase), ("random", control)):
        rec: dict = {"arm": arm, "neurons": [list(n) for n in edit.neurons], "mode": cfg.erase.mode}
        with edit.applied(lm):
            for k, q in queries.items():
                after = predict(lm, q)
                rec[f"{k}_acc_before"] = _argmax_share(before[k])
                rec[f"{k}_acc_after"] = _argmax_share(after)
                rec[f"{k}_p_before"] = float(before[k].prob.mean())
                rec[f"{k}_p_after"] = float(after.prob.mean())
                rec[f"{k}_n_prompts"] = len(q)
            rec["ppl_change"] = perplexity(lm, text, cfg.max_tokens) / ppl_before - 1.0
        records.append(rec)
    return records


def summarize_edits(records: Sequence[dict], top_k: int = 5) -> dict[str, dict[str, float]]:
    """Metric -> arm -> mean over facts (facts without neurons are counted in ``facts_without_neurons``)."""
    metrics = [
        "n_neurons",
        "success@1",
        f"success@{top_k}",
        "success@1_before",
        "change",
        "p_new_before",
        "p_new_after",
        "p_old_before",
        "p_old_after",
        "synonymy@1",
        f"synonymy@{top_k}",
        "symmetry@1_before",
        f"symmetry@{top_k}_before",
        "symmetry@1",
        f"symmetry@{top_k}",
        f"inverse_old@{top_k}_before",
        f"inverse_old@{top_k}_after",
        "locality_same",
        "locality_other",
    ]
    out: dict[str, dict[str, float]] = {}
    for arm in ("kn", "random"):
        rows = [r for r in records if r["arm"] == arm and r["n_neurons"]]
        for m in metrics:
            vals = [float(r[m]) for r in rows if r.get(m) is not None]
            out.setdefault(m, {})[arm] = _mean(vals)
        # A broken edit can multiply perplexity by 1e40, so its mean says nothing: report the mean change of
        # the log-perplexity (nats per token) and the median relative change instead.
        ppl = sorted(float(r["ppl_change"]) for r in rows if r.get("ppl_change") is not None)
        out.setdefault("nll_change", {})[arm] = _mean([math.log1p(x) for x in ppl])
        out.setdefault("ppl_change_median", {})[arm] = ppl[len(ppl) // 2] if ppl else float("nan")
        out.setdefault("facts_edited", {})[arm] = float(len(rows))
    out["facts_without_neurons"] = {
        "kn": float(sum(1 for r in records if r["arm"] == "kn" and not r["n_neurons"]))
    }
    return out
