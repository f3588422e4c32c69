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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from legibility.facts.render import target_ids
from legibility.forward import head_at, prompt_batch
from legibility.metrics.stats import Estimate
from legibility.models.loading import LoadedModel
from legibility.probes.data import Statement
from legibility.probes.linear import (
    LinearProbe,
    accuracy_estimate,
    fit_ccs_batched,
    fit_logistic_batched,
    fit_mass_mean,
)

METHODS = ("logistic", "mass_mean", "mass_mean_iid", "ccs")


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


def model_margins(
    lm: LoadedModel, prefixes: Sequence[str], good: Sequence[int], bad: Sequence[int]
) -> Tensor:
    """log p(good) - log p(bad) [n] at the next-token position after each prefix."""
    out, start = [], 0
    for logp in last_logprobs(lm, prefixes):
        rows = torch.arange(logp.shape[0], device=logp.device)
        g = torch.tensor(good[start : start + len(rows)], device=logp.device)
        b = torch.tensor(bad[start : start + len(rows)], device=logp.device)
        out.append((logp[rows, g] - logp[rows, b]).cpu())
        start += len(rows)
    return torch.cat(out)


def top1_hits(lm: LoadedModel, prefixes: Sequence[str], good: Sequence[int]) -> np.ndarray:
    """Whether the arg-max next token after each prefix is ``good``."""
    tops = torch.cat([logp.argmax(-1).cpu() for logp in last_logprobs(lm, prefixes)])
    return (tops == torch.tensor(list(good))).numpy()


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
