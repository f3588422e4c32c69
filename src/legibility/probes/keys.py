"""What keys a probe run and how it loads its model: the model's resolved name and the content digests of its
weights, config and tokenizer (:mod:`legibility.models.identity`), the content digest of the data it reads,
and the checks every probe run makes before it reads a model (texts that fit its context, folds it can split)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from legibility.errors import LegibilityError
from legibility.facts.pararel import pararel_files
from legibility.models.identity import digest_files, identity, identity_of, model_ref, sha256_file
from legibility.models.loading import LoadedModel, load_model


def load_probe_model(
    model: str | LoadedModel, device: str | None = None, dtype: str = "float32"
) -> LoadedModel:
    """The loaded model (masked LMs read their texts with special tokens)."""
    if isinstance(model, LoadedModel):
        return model
    lm = load_model(model, device=device, dtype=dtype)
    if lm.kind != "causal" and not lm.add_special_tokens:
        lm.add_special_tokens = True
    return lm


def model_key(
    name: str, lm: LoadedModel | None = None, device: str | None = None, dtype: str = "float32"
) -> tuple[dict, LoadedModel | None]:
    """What keys the model of a probe run: its resolved name and the content digests of its weights, config
    and tokenizer, from ``lm`` when given, else from its files; a model whose files are not here before
    loading (a hub id) is loaded and returned."""
    found = identity(lm) if lm is not None else identity_of(name)
    if found is None:
        lm = load_probe_model(name, device, dtype)
        found = identity(lm)
    return {"model": model_ref(name), **found}, lm


def data_key(source: str, relations: Sequence[str]) -> dict:
    """The content digest of the data a probe run reads: the JSONL file, or the PARAREL files of its
    relations (a changed file is a changed run)."""
    if source != "pararel":
        if not Path(source).is_file():
            what = "is a folder" if Path(source).is_dir() else "no such file"
            raise LegibilityError(
                f"--data {source}: {what}; give 'pararel' or a JSONL file of {{text, label}} lines"
            )
        return {"source_hash": sha256_file(source)}
    root, files = pararel_files(None, list(relations))
    return {"pararel_sha256": digest_files(files, root)}


def check_lengths(lm: LoadedModel, texts: Sequence[str], what: str, fix: str) -> None:
    """Refuse texts longer than the model's context before any of them is run (one line, naming one)."""
    from legibility.run import context_length

    limit = context_length(lm)
    if limit is None:
        return
    for i, t in enumerate(texts):
        if len(t) <= limit:  # a token is at least one character: no need to tokenize
            continue
        n = len(lm.encode(t[: 8 * limit]))  # enough characters to tell, without tokenizing a megabyte
        if n > limit:
            name = f"{what} {i + 1}" if len(texts) > 1 else what
            more = "more than " if len(t) > 8 * limit else ""
            raise LegibilityError(
                f"{name} is {more}{n} tokens long, more than the model's context of {limit}; {fix}"
            )


def check_folds(groups: Sequence[str], labels: Sequence[int], names: Sequence[str], folds: int) -> None:
    """The concept probe holds one fold of groups out as test and chooses the layer by cross-validation on
    the other ``folds - 1``: it needs ``folds >= 3`` and at least ``folds`` groups (an error otherwise); a
    label seen in one group only can never be learned from the other folds (a warning)."""
    n_groups = len(set(groups))
    if folds < 3:
        raise LegibilityError(
            f"probing needs --folds >= 3: one fold of test groups and >= 2 to choose the layer on (got {folds})"
        )
    if n_groups < folds:
        raise LegibilityError(
            f"{n_groups} group(s) of examples cannot be split into {folds} folds (a group never straddles "
            "two); give more examples or groups, or fewer --folds"
        )
    per_label: dict[int, set[str]] = {}
    for g, y in zip(groups, labels, strict=True):
        per_label.setdefault(y, set()).add(g)
    alone = [names[y] for y, gs in sorted(per_label.items()) if len(gs) < 2]
    if alone:
        warnings.warn(
            f"label(s) {', '.join(map(repr, alone[:5]))} occur in one group only: held out, they are never "
            "seen in training, so the accuracies say little; give each label at least two groups",
            RuntimeWarning,
            stacklevel=3,
        )
