"""Truth probes on true/false PARAREL statements, and the model's own judgement of the same facts.

Statements come in pairs (the true and a false completion of one prompt). Per layer of the residual stream,
three probes are fit on the training statements: logistic, mass-mean (optionally its iid variant) and CCS
(unsupervised; the pair's two statements, in random order, are its contrast pair). Each is scored on
test statements by

* statement accuracy: the probe's true/false call on each statement (supervised probes only);
* pair accuracy: the true statement gets the higher truth score than the false one of its pair (for CCS,
  its averaged belief that the true side is true > 0.5).

The model's own judgement is the pair accuracy of its log p(true object) - log p(false object) at the
answer position (first tokens of the objects; pairs whose objects share a first token are left out).

*Known facts* (:func:`known_facts`): by default only facts the model answers correctly are used, so that a
truth probe is asked to read what the model knows. *Object-identity controls* (:func:`object_controls`):
logistic probes that see only which object a statement claims (one-hot over the training statements'
objects, or the model's input embedding of the object's tokens); a truth probe that does no better than them
may have learned which objects tend to be false, not whether the statement is true.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from legibility.errors import LegibilityError
from legibility.facts.render import target_ids
from legibility.facts.types import Fact
from legibility.forward import head_at, prompt_batch
from legibility.metrics.stats import Estimate
from legibility.models.loading import LoadedModel
from legibility.probes.data import Statement, statement_prefixes
from legibility.probes.linear import (
    LinearProbe,
    fit_ccs_batched,
    fit_logistic,
    fit_logistic_batched,
    fit_mass_mean,
)
from legibility.probes.stats import accuracy_estimate

METHODS = ("logistic", "mass_mean", "mass_mean_iid", "ccs")
KNOWN = ("candidates", "top1", "all")  # which facts a truth study keeps (see known_facts)
CONTROLS = ("object_onehot", "object_embedding")  # object-identity control probes


@dataclass(frozen=True)
class TruthSettings:
    """How truth probes are fit."""

    weight_decay: float = 1e-2  # logistic L2
    iid: bool = False  # also fit the covariance-corrected mass-mean probe
    ccs_restarts: int = 5  # CCS random restarts (lowest loss kept)
    ccs_steps: int = 500  # Adam steps per restart
    seed: int = 0


def first_tokens(lm: LoadedModel, statements: Sequence[Statement]) -> tuple[list[int], list[int]]:
    """First token id of each statement's object and of its contrasting object, as continuations of its prefix."""
    own, other = [], []
    for s in statements:
        own.append(target_ids(lm, s.prefix + " ", s.obj)[0])
        other.append(target_ids(lm, s.prefix + " ", s.other)[0])
    return own, other


def first_token(lm: LoadedModel, prefix: str, obj: str) -> int:
    """First token id of ``obj`` as the continuation of ``prefix`` (after a space)."""
    return target_ids(lm, prefix + " ", obj)[0]


def known_facts(
    lm: LoadedModel,
    facts: Sequence[Fact],
    templates: int,
    criterion: str = "candidates",
    limit: int | None = None,
) -> tuple[list[Fact], dict]:
    """The facts the model answers correctly, at most ``limit`` per relation (in the order given), and a
    report of how many each relation kept.

    The answer is read on the prompts the truth statements complete (:func:`statement_prefixes`), at the
    next token: ``"candidates"``: the true object's first token scores highest among the first tokens of all
    objects of the fact's relation in ``facts`` (the objects false statements are drawn from);
    ``"top1"``: it is the top-1 token over the whole vocabulary; ``"all"``: every fact is kept. A fact is
    known when this holds on at least half of its prompts (as the scorecard's known facts:
    ``KnownConfig(top_k=1, min_share=0.5)``).
    """
    if criterion not in KNOWN:
        raise LegibilityError(
            f"unknown known-facts criterion {criterion!r}; choose one of {', '.join(KNOWN)}"
        )
    usable = [(f, statement_prefixes(f, templates)) for f in facts]
    usable = [(f, p) for f, p in usable if p]
    objects: dict[str, list[str]] = {}
    for f, _ in usable:
        objects.setdefault(f.relation, [])
        if f.object not in objects[f.relation]:
            objects[f.relation].append(f.object)
    known = np.ones(len(usable), dtype=bool)
    if criterion != "all":
        prefixes = [p for _, ps in usable for p in ps]
        batches = tqdm(
            last_logprobs(lm, prefixes),
            total=-(-len(prefixes) // 16),
            desc="checking which facts the model knows",
            unit="batch",
        )
        logp = torch.cat([lp.cpu() for lp in batches])  # [prompts, vocab]
        cache: dict[tuple[str, str], int] = {}

        def tok(prefix: str, obj: str) -> int:  # the boundary merge depends on the prefix's last word only
            k = (prefix.rsplit(" ", 1)[-1], obj)
            if k not in cache:
                cache[k] = first_token(lm, prefix, obj)
            return cache[k]

        row = 0
        for i, (f, ps) in enumerate(usable):
            hits = []
            for p in ps:
                own = tok(p, f.object)
                if criterion == "top1":
                    hits.append(int(logp[row].argmax()) == own)
                else:
                    cands = {tok(p, o) for o in objects[f.relation]}
                    hits.append(all(logp[row, own] >= logp[row, c] for c in cands))
                row += 1
            known[i] = sum(hits) >= 0.5 * len(hits)
    kept: list[Fact] = []
    count: dict[str, int] = {}
    for (f, _), k in zip(usable, known, strict=True):
        if k and (limit is None or count.get(f.relation, 0) < limit):
            kept.append(f)
            count[f.relation] = count.get(f.relation, 0) + 1
    examined: dict[str, int] = {}
    for f, _ in usable:
        examined[f.relation] = examined.get(f.relation, 0) + 1
    known_by: dict[str, int] = {}
    for (f, _), k in zip(usable, known, strict=True):
        known_by[f.relation] = known_by.get(f.relation, 0) + int(k)
    report = {
        "criterion": criterion,
        "examined": examined,
        "known": known_by,
        "kept": {r: count.get(r, 0) for r in examined},
    }
    return kept, report


def usable_pairs(lm: LoadedModel, statements: Sequence[Statement]) -> list[Statement]:
    """Statements (true, false, true, false, ...) whose two objects start with different tokens."""
    own, other = first_tokens(lm, statements)
    keep = []
    for i in range(0, len(statements), 2):
        if own[i] != other[i]:
            keep += [statements[i], statements[i + 1]]
    return keep


@torch.no_grad()
def last_logprobs(lm: LoadedModel, prefixes: Sequence[str], batch_size: int = 16) -> Iterator[Tensor]:
    """log p(next token) [batch, vocab] after each prefix, batch by batch (right-padded)."""
    for start in range(0, len(prefixes), batch_size):
        batch = prompt_batch(lm, prefixes[start : start + batch_size])
        with head_at(lm, batch.positions):
            logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, 0]
        yield logits.float().log_softmax(-1)


def next_token_readout(
    lm: LoadedModel, prefixes: Sequence[str], good: Sequence[int], bad: Sequence[int]
) -> tuple[Tensor, np.ndarray]:
    """One forward pass per prefix: log p(good) - log p(bad) [n] at the next token, and whether ``good`` is
    the arg-max next token [n]."""
    margins, hits, start = [], [], 0
    for logp in last_logprobs(lm, prefixes):
        rows = torch.arange(logp.shape[0], device=logp.device)
        g = torch.tensor(good[start : start + len(rows)], device=logp.device)
        b = torch.tensor(bad[start : start + len(rows)], device=logp.device)
        margins.append((logp[rows, g] - logp[rows, b]).cpu())
        hits.append((logp.argmax(-1) == g).cpu())
        start += len(rows)
    if not margins:
        return torch.zeros(0), np.zeros(0, dtype=bool)
    return torch.cat(margins), torch.cat(hits).numpy()


def model_margins(
    lm: LoadedModel, prefixes: Sequence[str], good: Sequence[int], bad: Sequence[int]
) -> Tensor:
    """log p(good) - log p(bad) [n] at the next-token position after each prefix."""
    return next_token_readout(lm, prefixes, good, bad)[0]


def top1_hits(lm: LoadedModel, prefixes: Sequence[str], good: Sequence[int]) -> np.ndarray:
    """Whether the arg-max next token after each prefix is ``good``."""
    return next_token_readout(lm, prefixes, good, good)[1]


def object_onehot(statements: Sequence[Statement], vocabulary: Sequence[str]) -> Tensor:
    """[n, len(vocabulary)] one-hot of each statement's claimed object (all zero for an object outside)."""
    col = {o: i for i, o in enumerate(vocabulary)}
    x = torch.zeros(len(statements), max(len(vocabulary), 1), dtype=torch.float64)
    for i, s in enumerate(statements):
        if s.obj in col:
            x[i, col[s.obj]] = 1.0
    return x


@torch.no_grad()
def object_embeddings(lm: LoadedModel, statements: Sequence[Statement]) -> Tensor:
    """[n, d] mean input embedding of each statement's object tokens (as the continuation of its prefix)."""
    table = lm.model.get_input_embeddings().weight  # type: ignore[operator]
    rows = []
    for s in statements:
        ids = torch.tensor(target_ids(lm, s.prefix + " ", s.obj), device=table.device)
        rows.append(table[ids].double().mean(0).cpu())
    return torch.stack(rows)


def object_controls(
    features: dict[str, Tensor], train: np.ndarray, y: Tensor, weight_decay: float = 1e-2
) -> dict[str, LinearProbe]:
    """A logistic probe per control feature set (``{name: [n, d]}``, e.g. :func:`object_onehot` and
    :func:`object_embeddings` of every statement), fit on the ``train`` rows with labels ``y`` [n]."""
    rows = torch.from_numpy(np.asarray(train))
    return {name: fit_logistic(x[rows], y[rows], 2, weight_decay) for name, x in features.items()}


def pair_correct(true_score: np.ndarray, false_score: np.ndarray | float) -> np.ndarray:
    """1 where the true side scores higher, 0 where lower, 0.5 on a tie (e.g. identical features)."""
    return (true_score > false_score) + 0.5 * (true_score == false_score)


def pair_arrays(statements: Sequence[Statement]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Row indices of the true and the false statement of every pair, and the pair's fact id."""
    t = np.arange(0, len(statements), 2)
    return t, t + 1, [statements[int(i)].fact for i in t]


def fit_truth_probes(
    x: Tensor, y: Tensor, settings: TruthSettings, pairs_train: tuple[np.ndarray, np.ndarray] | None = None
) -> list[dict[str, object]]:
    """Per layer of ``x`` [n, layers, d]: the supervised probes (and CCS when the pair rows are given), fit
    on all rows with ``y`` [n] (1 = true)."""
    s = settings
    layers = x.transpose(0, 1)  # [layers, n, d]
    logistic = fit_logistic_batched(layers, y, 2, s.weight_decay)
    out: list[dict[str, object]] = []
    for i in range(layers.shape[0]):
        probes: dict[str, object] = {"logistic": logistic[i], "mass_mean": fit_mass_mean(layers[i], y)}
        if s.iid:
            probes["mass_mean_iid"] = fit_mass_mean(layers[i], y, iid=True)
        out.append(probes)
    if pairs_train is not None:
        ti, fi = pairs_train
        swap = np.random.default_rng(s.seed).random(len(ti)) < 0.5  # random side order: labels 50/50
        a = torch.from_numpy(np.where(swap, fi, ti))
        b = torch.from_numpy(np.where(swap, ti, fi))
        ya = torch.from_numpy((~swap).astype(np.int64))
        ccs = fit_ccs_batched(layers[:, a], layers[:, b], ya, s.ccs_restarts, s.ccs_steps, seed=s.seed)
        for probes, c in zip(out, ccs, strict=True):
            probes["ccs"] = c
    return out


def score_probes(
    probes: dict[str, object], x: Tensor, statements: Sequence[Statement], seed: int = 0
) -> dict[str, dict[str, Estimate]]:
    """method -> {"statement": accuracy, "pair": pair accuracy} on the test rows ``x`` (pairs adjacent)."""
    y = np.array([s.true for s in statements])
    ti, fi, facts = pair_arrays(statements)
    groups = [s.fact for s in statements]
    out: dict[str, dict[str, Estimate]] = {}
    for name, probe in probes.items():
        if isinstance(probe, LinearProbe):
            score = probe.scores(x)[:, 0].cpu().numpy()
            statement = accuracy_estimate((score > 0) == y, groups, seed)
            pair = accuracy_estimate(pair_correct(score[ti], score[fi]), facts, seed)
        else:  # CCS: side a = the true statement
            p = probe.truth_score(x[ti], x[fi]).cpu().numpy()  # type: ignore[attr-defined]
            statement = Estimate(float("nan"), float("nan"), float("nan"), 0)
            pair = accuracy_estimate(pair_correct(p, 0.5), facts, seed)
        out[name] = {"statement": statement, "pair": pair}
    return out
