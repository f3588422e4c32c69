"""Causal checks of a truth direction (steering) and the lying condition (few-shot false answers).

Judgement used for steering: a few-shot "True/False" framing. Labelled example statements (from training
relations) are followed by the test statement; the model's judgement is m = log p(" True") - log p(" False")
for the token after the statement. Steering adds ``scale * d`` to the residual stream ``hidden_states[l]``
(the output of block ``l - 1``) at the statement's last token only, where d = mean(true) - mean(false) of the
training statements at layer l (raw features, so scale 1 moves a false statement's mean onto the true one's).
The control is a random direction of the same norm.

The lying condition puts ``shots`` statements of the same relation and template before the test prompt,
completed truthfully or falsely ("The capital of France is Berlin.").
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from legibility.errors import LegibilityError
from legibility.forward import head_at, prompt_batch
from legibility.models.loading import LoadedModel
from legibility.probes.data import Statement


def blocks(lm: LoadedModel) -> list[nn.Module]:
    obj: object = lm.model
    for part in lm.sites.spec.layers.split("."):
        obj = getattr(obj, part)
    return list(obj)  # type: ignore[call-overload]


@contextlib.contextmanager
def add_to_residual(lm: LoadedModel, layer: int, vector: Tensor, positions: Tensor) -> Iterator[None]:
    """Add ``vector`` [d] to ``hidden_states[layer]`` at ``positions[b]`` of each row (layer >= 1)."""
    mods = blocks(lm)
    if not 1 <= layer <= len(mods):
        raise LegibilityError(f"steering layer {layer} must be in 1..{len(mods)} (hidden_states index)")

    def hook(module: nn.Module, args: tuple, output: object) -> object:
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()  # type: ignore[union-attr]
        rows = torch.arange(h.shape[0], device=h.device)
        h[rows, positions.to(h.device)] += vector.to(h)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = mods[layer - 1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def token_id(lm: LoadedModel, word: str) -> int:
    ids = lm.tokenizer(word, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return int(ids[0])


def judgement_prompts(test: Sequence[Statement], examples: Sequence[Statement]) -> list[str]:
    """The few-shot True/False prompt of every test statement (examples shared by all)."""
    head = "".join(f"{e.text} {'True' if e.true else 'False'}\n" for e in examples)
    return [head + s.text for s in test]


@torch.no_grad()
def judgements(
    lm: LoadedModel,
    prompts: Sequence[str],
    layer: int | None = None,
    vector: Tensor | None = None,
    batch_size: int = 16,
) -> Tensor:
    """m = log p(" True") - log p(" False") [n] after each prompt, optionally steered at its last token."""
    yes, no = token_id(lm, " True"), token_id(lm, " False")
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompt_batch(lm, prompts[start : start + batch_size])
        ids, mask, last = batch.input_ids, batch.attention_mask, batch.positions
        ctx = (
            add_to_residual(lm, layer, vector, last)
            if layer is not None and vector is not None
            else contextlib.nullcontext()
        )
        with ctx, head_at(lm, last):
            logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, 0]
        logp = logits.float().log_softmax(-1)
        out.append((logp[:, yes] - logp[:, no]).cpu())
    return torch.cat(out)


def random_directions(norm: float, d: int, n: int, seed: int, device: torch.device) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        v = torch.randn(d, generator=gen, dtype=torch.float64)
        out.append((v / v.norm() * norm).float().to(device))
    return out


def few_shot_context(target: Statement, pool: Sequence[Statement], shots: int, lie: bool, seed: int) -> str:
    """``shots`` completed statements of other facts with the target's relation and template, true or false."""
    same = [
        s
        for s in pool
        if s.relation == target.relation
        and s.template == target.template
        and s.fact != target.fact
        and s.true != lie
    ]
    rng = random.Random(f"{seed}-{target.fact}-{target.template}")
    by_fact: dict[str, Statement] = {}
    for s in same:
        by_fact.setdefault(s.fact, s)
    chosen = rng.sample(sorted(by_fact), min(shots, len(by_fact)))
    return "".join(by_fact[f].text + "\n" for f in chosen)
