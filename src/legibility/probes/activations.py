"""Features for probes: the residual stream (``hidden_states``) and the FFN sites at one position per text.

Residual layer ``i`` is HF's ``hidden_states[i]``: 0 = the embeddings, ``i`` = the output of block ``i - 1``
(the last entry is after the final norm in HF models that apply it there). FFN layer ``i`` is the neuron
activation of block ``i`` read through :class:`legibility.models.sites.Sites`, as everywhere else.

The read position is the text's last token (``"last"``) or the last token of its subject (``"subject"``).
Features are cached as one safetensors file per (site, layer) under ``<dir>/features/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from legibility.errors import LegibilityError
from legibility.forward import head_at
from legibility.models.loading import LoadedModel

SITES = ("resid", "ffn")
POSITIONS = ("last", "subject")


def read_position(lm: LoadedModel, text: str, ids: list[int], subject: str, position: str) -> int:
    """Token index read for ``text`` (encoded as ``ids``)."""
    if position == "last":
        return len(ids) - 1
    if position != "subject":
        raise LegibilityError(f"unknown position {position!r}; choose one of {POSITIONS}")
    start = text.rfind(subject) if subject else -1
    if start < 0:
        raise LegibilityError(f"subject {subject!r} not found in {text!r}; --position subject needs subjects")
    prefix = lm.encode(text[: start + len(subject)])
    # the subject's last token is the last token of the encoded prefix; a merge across the boundary moves
    # it to the token that holds the subject's final characters, still inside ids
    return min(len(prefix), len(ids)) - 1


@torch.no_grad()
def extract(
    lm: LoadedModel,
    texts: Sequence[str],
    subjects: Sequence[str] | None = None,
    position: str = "last",
    sites: Sequence[str] = SITES,
    batch_size: int = 16,
) -> dict[str, Tensor]:
    """Features ``{site: [n, layers, width]}`` (float32, on CPU) at the read position of every text."""
    device = next(lm.model.parameters()).device
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    chunks: dict[str, list[Tensor]] = {s: [] for s in sites}
    subs = list(subjects) if subjects is not None else [""] * len(texts)
    for start in range(0, len(texts), batch_size):
        part = list(texts[start : start + batch_size])
        enc = [lm.encode(t) for t in part]
        if any(len(e) == 0 for e in enc):
            raise LegibilityError("an empty text cannot be probed")
        pos = [read_position(lm, t, e, s, position) for t, e, s in zip(part, enc, subs[start:], strict=False)]
        width = max(len(e) for e in enc)
        ids = torch.full((len(part), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(part), width), dtype=torch.long, device=device)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e, device=device)
            mask[i, : len(e)] = 1
        rows = torch.arange(len(part), device=device)
        at = torch.tensor(pos, device=device)
        with lm.sites.record() as store, head_at(lm, at):  # logits only at the read position: cheap
            out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states="resid" in sites)
        if "resid" in sites:
            chunks["resid"].append(torch.stack([h[rows, at] for h in out.hidden_states], 1).float().cpu())
        if "ffn" in sites:
            layers = range(lm.sites.n_layers)
            chunks["ffn"].append(torch.stack([store[i][rows, at] for i in layers], 1).float().cpu())
    return {s: torch.cat(c) for s, c in chunks.items()}


def save_features(root: Path, feats: dict[str, Tensor]) -> None:
    """One safetensors file per (site, layer): ``<root>/<site>/layer-NN.safetensors`` holding ``x`` [n, d]."""
    for site, x in feats.items():
        (root / site).mkdir(parents=True, exist_ok=True)
        for layer in range(x.shape[1]):
            path = root / site / f"layer-{layer:02d}.safetensors"
            tmp = path.with_suffix(".tmp")
            save_file({"x": x[:, layer].contiguous()}, str(tmp))
            tmp.replace(path)


def load_features(root: Path, sites: Sequence[str]) -> dict[str, Tensor] | None:
    """The cached features, or None if any site is missing."""
    out = {}
    for site in sites:
        files = sorted((root / site).glob("layer-*.safetensors")) if (root / site).is_dir() else []
        if not files:
            return None
        out[site] = torch.stack([load_file(str(f))["x"] for f in files], 1)
    return out


def cached_features(
    lm: LoadedModel,
    root: Path,
    texts: Sequence[str],
    subjects: Sequence[str] | None = None,
    position: str = "last",
    sites: Sequence[str] = SITES,
) -> dict[str, Tensor]:
    """:func:`extract`, read from ``root`` if already there (the caller keys ``root`` by its settings)."""
    got = load_features(root, sites)
    if got is not None and all(v.shape[0] == len(texts) for v in got.values()):
        return got
    feats = extract(lm, texts, subjects, position, sites)
    save_features(root, feats)
    return feats
