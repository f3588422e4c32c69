"""Load a language model, its tokenizer and its FFN sites."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from legibility.errors import LegibilityError
from legibility.models.embedded import EMBEDDED, embedded_dir
from legibility.models.gguf import find_gguf, gguf_model_dir
from legibility.models.sites import Sites, SiteSpec, architecture, model_kind

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer and sites.

    ``add_special_tokens`` says whether prompts are encoded with the tokenizer's special tokens (BERT needs
    [CLS]/[SEP]; SmolLM2 must not get them).
    """

    model: nn.Module
    tokenizer: object
    sites: Sites
    name: str
    add_special_tokens: bool = True

    @property
    def kind(self) -> str:
        return self.sites.kind

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"])  # type: ignore[operator]


def load_model(
    name_or_model: str | os.PathLike | nn.Module,
    tokenizer: object | None = None,
    *,
    site: str = "ffn",
    spec: SiteSpec | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load a model with its tokenizer and FFN sites.

    ``name_or_model`` is the embedded ``"smollm2-135m"``, a local directory, a ``.gguf`` file (or a directory
    holding one; converted once into the cache, see :mod:`legibility.models.gguf`), a Hugging Face hub id (needs
    network), or an already loaded ``PreTrainedModel`` (then pass ``tokenizer``). ``site="eleuther"`` selects
    EleutherAI's sites (GPT-2 pre-activation) for exact comparisons; ``spec`` overrides detection for an
    architecture not in :data:`legibility.models.sites.ARCHITECTURES`.

    >>> lm = load_model("smollm2-135m")  # doctest: +SKIP
    >>> lm.sites.n_layers, lm.sites.n_neurons  # doctest: +SKIP
    (30, 1536)
    """
    if isinstance(name_or_model, nn.Module):
        if tokenizer is None:
            raise LegibilityError(
                "pass the tokenizer with an already loaded model: load_model(model, tokenizer)"
            )
        model, name = (
            name_or_model,
            getattr(name_or_model.config, "_name_or_path", type(name_or_model).__name__),
        )
    else:
        name = str(name_or_model)
        model, tokenizer = _load_from(name, dtype)
    model.eval()  # attribution and interventions are always measured without dropout
    sites = Sites.detect(model, variant=site, spec=spec)
    # Masked LMs need [CLS]/[SEP]; causal LMs are prompted with raw text, except Gemma, which expects <bos>.
    arch = architecture(getattr(model.config, "model_type", ""))
    add_special = sites.kind == "masked" or (arch is not None and arch.special_tokens)
    return LoadedModel(model, tokenizer, sites, name, add_special)


def _load_from(name: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    if name in EMBEDDED:
        path: str | Path = embedded_dir(name)
    elif (gguf := find_gguf(name)) is not None:  # a .gguf file, or a directory holding one
        path = gguf_model_dir(gguf)
    elif Path(name).exists():
        path = Path(name)
    elif Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise LegibilityError(
            f"model path {name!r} does not exist. Give an existing directory or .gguf file, a Hugging Face "
            f"id such as 'gpt2', or the embedded model {sorted(EMBEDDED)}."
        )
    else:
        path = name  # a hub id: needs network unless already in the HF cache
    try:
        config = AutoConfig.from_pretrained(path)
        arch = architecture(getattr(config, "model_type", ""))
        masked = arch is not None and arch.masked and not getattr(config, "is_decoder", False)
        auto = AutoModelForMaskedLM if masked else AutoModelForCausalLM
        model = auto.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise LegibilityError(
            f"could not load model {name!r}: {str(e).splitlines()[0]}. Offline, use a local directory or the "
            f"embedded {sorted(EMBEDDED)}."
        ) from e
    model_kind(model)
    return model, tokenizer
