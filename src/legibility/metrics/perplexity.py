"""Perplexity of a held-out text: the collateral-damage check of weight edits (causal and masked LMs)."""

from __future__ import annotations

import math

import torch

from legibility.errors import LegibilityError
from legibility.metrics.text import SAMPLE_TEXT
from legibility.models.loading import LoadedModel


@torch.no_grad()
def perplexity(lm: LoadedModel, text: str = SAMPLE_TEXT, max_tokens: int = 64) -> float:
    """Perplexity of ``text`` (one input per line): next-token for causal LMs (all lines in one padded
    batch), pseudo-perplexity (each token masked in turn) for masked LMs."""
    rows = [lm.encode(line.strip())[:max_tokens] for line in text.splitlines() if line.strip()]
    device = next(lm.model.parameters()).device
    if lm.kind == "causal":
        rows = [r for r in rows if len(r) >= 2]
        if not rows:
            raise LegibilityError("the text gives no tokens to measure perplexity on")
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, device=device), 1
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
        ids = torch.tensor([r], device=device).repeat(len(positions), 1)  # [n, pos]: row j masks positions[j]
        idx = torch.arange(len(positions), device=device)
        ids[idx, positions] = int(lm.tokenizer.mask_token_id)  # type: ignore[attr-defined]
        logits = lm.model(input_ids=ids).logits[idx, positions].float()  # [n, vocab]
        gold = torch.tensor([r[t] for t in positions], device=device)
        nll_sum += float(torch.nn.functional.cross_entropy(logits, gold, reduction="sum"))
        count += len(positions)
    if count == 0:
        raise LegibilityError("the text gives no tokens to measure perplexity on")
    return math.exp(nll_sum / count)
