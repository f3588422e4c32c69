"""Load a language model, its tokenizer and its FFN sites."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from legibility.devices import dtype_name, parse_dtype, resolve_device
from legibility.errors import LegibilityError
from legibility.models.activations import register_activations
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

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live: every tensor the package creates for it goes here."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point parameters (float32 unless asked otherwise)."""
        return next(p.dtype for p in self.model.parameters() if p.is_floating_point())

    @property
    def precision(self) -> str:
        """``"float32"``, ``"bfloat16"`` or ``"float16"``: what a scorecard records as the model's dtype."""
        return dtype_name(self.dtype)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"])  # type: ignore[operator]


def load_model(
    name_or_model: str | os.PathLike | nn.Module,
    tokenizer: object | None = None,
    *,
    site: str = "ffn",
    spec: SiteSpec | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load a model with its tokenizer and FFN sites.

    ``name_or_model`` is the embedded ``"smollm2-135m"``, a local directory, a ``.gguf`` file (or a directory
    holding one; converted once into the cache, see :mod:`legibility.models.gguf`), a Hugging Face hub id (needs
    network), or an already loaded ``PreTrainedModel`` (then pass ``tokenizer``). ``site="eleuther"`` selects
    EleutherAI's sites (GPT-2 pre-activation) for exact comparisons; ``spec`` overrides detection for an
    architecture not in :data:`legibility.models.sites.ARCHITECTURES`.

    ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``; ``dtype``:
    ``"float32"`` (default), ``"bfloat16"``, ``"float16"``. A model loaded by name goes straight to the
    device in that dtype (no float32 copy on the CPU first; ``None`` means ``"auto"`` and float32). A model
    passed in stays where it is and in its dtype unless ``device``/``dtype`` are given.

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
        if dtype is not None:
            model = model.to(dtype=parse_dtype(dtype))
        if device is not None:
            model = model.to(device=resolve_device(device))
    else:
        name = str(name_or_model)
        model, tokenizer = _load_from(name, parse_dtype(dtype), resolve_device(device or "auto"))
    model.eval()  # attribution and interventions are always measured without dropout
    sites = Sites.detect(model, variant=site, spec=spec)
    # Masked LMs need [CLS]/[SEP]; causal LMs are prompted with raw text, except Gemma, which expects <bos>.
    arch = architecture(getattr(model.config, "model_type", ""))
    add_special = sites.kind == "masked" or (arch is not None and arch.special_tokens)
    return LoadedModel(model, tokenizer, sites, name, add_special)


def _load_from(name: str, dtype: torch.dtype, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    register_activations()  # a trained model may use SoLU
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
    from safetensors import SafetensorError

    try:
        config = AutoConfig.from_pretrained(path)
        arch = architecture(getattr(config, "model_type", ""))
        masked = arch is not None and arch.masked and not getattr(config, "is_decoder", False)
        auto = AutoModelForMaskedLM if masked else AutoModelForCausalLM
        # device_map puts each weight on the device as it is read, in the requested dtype: a large model
        # never exists as a float32 copy in CPU memory first.
        device_map: dict[str, torch.device] | None = None if device.type == "cpu" else {"": device}
        model = auto.from_pretrained(path, dtype=dtype, device_map=device_map)
    except (OSError, ValueError) as e:
        raise LegibilityError(
            f"could not load model {name!r}: {_first_line(e)}. Offline, use a local directory or the "
            f"embedded {sorted(EMBEDDED)}."
        ) from e
    except (SafetensorError, RuntimeError) as e:  # a cut or damaged weight file; weights that misfit config
        raise LegibilityError(
            f"could not load the weights of model {name!r} ({_first_line(e)}); the files are damaged or do "
            "not match its config.json: copy or download the model again"
        ) from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # tokenizers raises a bare Exception for a damaged tokenizer.json
        raise LegibilityError(
            f"could not load the tokenizer of model {name!r} ({_first_line(e)}); its tokenizer files are "
            "damaged or missing: copy or download the model again"
        ) from e
    model_kind(model)
    return model, tokenizer


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0].rstrip(".") if text else type(e).__name__)[:300]
