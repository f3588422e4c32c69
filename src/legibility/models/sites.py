"""Where the FFN ("knowledge") neurons live in each architecture, and hooks on them.

A *site* is the FFN intermediate activation after the nonlinearity: the tensor that multiplies the
output projection (GPT-2 ``mlp.c_proj``, GPT-NeoX ``dense_4h_to_h``, Llama/Gemma ``down_proj`` whose
input is ``act(gate) * up``, BERT ``output.dense``). Reading the *input* of the output projection gives
that tensor uniformly for plain and gated MLPs. Hooks attach only inside :meth:`Sites.patch`, which
removes them in ``finally``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from legibility.errors import LegibilityError

Io = Literal["input", "output"]
# A patch function receives the activation [batch, pos, neurons] of one layer and returns the tensor to
# use instead (it may return the same tensor, e.g. when it only records it).
PatchFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SiteSpec:
    """Module paths of one architecture's FFN sites."""

    layers: str  # path from the model to the ModuleList of transformer blocks
    module: str  # path inside a block to the module whose input (or output) is the neuron activation
    io: Io = "input"  # "input": neurons = the module's input; "output": its output
    width: str = "intermediate_size"  # config attribute holding the number of neurons per layer


@dataclass(frozen=True)
class Architecture:
    """Everything the library knows about one HF architecture (``config.model_type``), in one row."""

    site: SiteSpec  # the FFN neuron site (post-nonlinearity, paper-faithful)
    final_norm: str | None = None  # causal: path to the norm after the last block (head = output embeddings)
    head: str | None = None  # masked: path to the LM head applied to the last hidden state
    softcap: bool = False  # logits = c * tanh(logits / c), c = config.final_logit_softcapping (Gemma 2/3)
    masked: bool = False  # a masked LM (answer at [MASK]); loaded with AutoModelForMaskedLM
    special_tokens: bool = False  # prompts are encoded with special tokens ([CLS]/[SEP]; Gemma's <bos>)
    eleuther_site: SiteSpec | None = None  # EleutherAI's knowledge-neurons site, where it differs or exists
    # path inside a block to the module whose input is the residual stream that the FFN output is added to
    # (block output = residual + post(output projection(site))); None: the engine runs rows of layer l
    # through the whole block l instead of starting them at the site (e.g. GPT-NeoX's parallel residual)
    ffn_residual: str | None = None
    ffn_post: str | None = None  # path inside a block to a norm applied to the FFN output before the add
    # paths inside a block to the FFN's input projections (whose output neurons are the site's neurons; the
    # site module is the output projection): what training reads and permutes neuron by neuron
    ffn_in: tuple[str, ...] = ()
    # the exact engine (legibility.attribution.engine) runs this family's rows from the site with the final
    # norm / head above; False: attribution takes the generic whole-model path (slower, same scores)
    engine: bool = True
    gated: bool = False  # the site is a gated product act(gate) * up (RelP's half rule applies to it)


_GATED = SiteSpec("model.layers", "mlp.down_proj")
_GATED_IN = ("mlp.gate_proj", "mlp.up_proj")
_DECODER = Architecture(
    _GATED, final_norm="model.norm", ffn_residual="post_attention_layernorm", gated=True, ffn_in=_GATED_IN
)
_GEMMA = Architecture(
    _GATED,
    final_norm="model.norm",
    special_tokens=True,
    ffn_residual="post_attention_layernorm",
    gated=True,
    ffn_in=_GATED_IN,
)
_GEMMA2 = dataclasses.replace(
    _GEMMA, softcap=True, ffn_residual="pre_feedforward_layernorm", ffn_post="post_feedforward_layernorm"
)
_GPT2_SITE = SiteSpec("transformer.h", "mlp.c_proj", width="n_inner")
_BERT_SITE = SiteSpec("bert.encoder.layer", "output.dense")
# model_type -> architecture: the one table that sites, loading and the fast attribution engine read.
# Every row is in the consistency tests of tests/test_models.py (tiny random configs).
FAMILIES: dict[str, Architecture] = {
    # EleutherAI's package reads GPT-2 *before* the GELU (the output of mlp.c_fc); BERT is our tensor.
    "gpt2": Architecture(
        _GPT2_SITE,
        final_norm="transformer.ln_f",
        ffn_residual="ln_2",
        ffn_in=("mlp.c_fc",),
        eleuther_site=SiteSpec("transformer.h", "mlp.c_fc", io="output", width="n_inner"),
    ),
    "gpt_neox": Architecture(
        SiteSpec("gpt_neox.layers", "mlp.dense_4h_to_h"),
        final_norm="gpt_neox.final_layer_norm",
        ffn_in=("mlp.dense_h_to_4h",),
    ),
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma": _GEMMA,
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "bert": Architecture(
        _BERT_SITE,
        head="cls",
        masked=True,
        special_tokens=True,
        eleuther_site=_BERT_SITE,
        ffn_in=("intermediate.dense",),
    ),
    "roberta": Architecture(
        SiteSpec("roberta.encoder.layer", "output.dense"),
        head="lm_head",
        masked=True,
        special_tokens=True,
        ffn_in=("intermediate.dense",),
    ),
}
# Views of the table by site variant (model_type -> spec).
ARCHITECTURES: dict[str, SiteSpec] = {k: a.site for k, a in FAMILIES.items()}
# Offered only so that comparisons with EleutherAI's knowledge-neurons package are exact.
ELEUTHER_ARCHITECTURES: dict[str, SiteSpec] = {
    k: a.eleuther_site for k, a in FAMILIES.items() if a.eleuther_site is not None
}
SITE_VARIANTS = {"ffn": ARCHITECTURES, "eleuther": ELEUTHER_ARCHITECTURES}


def register_family(model_type: str, row: Architecture) -> Architecture:
    """Add a family (a ``config.model_type``) to the table and its views; a name already there is an error.

    >>> register_family("my_llama", FAMILIES["llama"])  # doctest: +SKIP
    """
    if model_type in FAMILIES:
        raise ValueError(f"model family {model_type!r} is already in the architecture table")
    FAMILIES[model_type] = row
    ARCHITECTURES[model_type] = row.site
    if row.eleuther_site is not None:
        ELEUTHER_ARCHITECTURES[model_type] = row.eleuther_site
    return row


def unregister_family(model_type: str) -> Architecture:
    """Remove a family added with :func:`register_family` from the table and all its views (e.g. after a test)."""
    row = FAMILIES.pop(model_type)
    ARCHITECTURES.pop(model_type, None)
    ELEUTHER_ARCHITECTURES.pop(model_type, None)
    return row


def architecture(model_type: object) -> Architecture | None:
    """The table's row for a ``config.model_type`` (None when the family is not in the table)."""
    return FAMILIES.get(str(model_type))


def get_path(obj: object, path: str) -> object:
    """``obj.a.b.0.c`` for ``path="a.b.0.c"`` (digits index into lists)."""
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)  # type: ignore[index]
    return obj


def _width(config: object, spec: SiteSpec) -> int:
    width = getattr(config, spec.width, None)
    if width is None and spec.width == "n_inner":  # GPT-2 leaves n_inner unset for 4 * n_embd
        width = 4 * config.n_embd  # type: ignore[attr-defined]
    if width is None:
        raise LegibilityError(f"config has no attribute {spec.width!r} giving the FFN width")
    return int(width)


class Sites:
    """The FFN neuron sites of one model: ``n_layers`` x ``n_neurons`` neurons, readable and patchable.

    ``kind`` is ``"causal"`` (answer position = last token) or ``"masked"`` (answer position = the mask).
    """

    def __init__(self, model: nn.Module, spec: SiteSpec, kind: Literal["causal", "masked"]):
        self.model = model
        self.spec = spec
        self.kind = kind
        try:
            blocks = get_path(model, spec.layers)
            self.modules: list[nn.Module] = [get_path(b, spec.module) for b in blocks]  # type: ignore[attr-defined, misc]
        except (AttributeError, IndexError, TypeError) as e:
            raise LegibilityError(
                f"site spec {spec} does not match {type(model).__name__}: {e}. Pass a SiteSpec whose "
                "'layers' path leads to the list of transformer blocks and whose 'module' path leads, inside "
                "a block, to the FFN output projection."
            ) from e
        self.n_layers = len(self.modules)
        self.n_neurons = _width(model.config, spec)  # type: ignore[union-attr]

    @classmethod
    def detect(cls, model: nn.Module, variant: str = "ffn", spec: SiteSpec | None = None) -> Sites:
        """Sites of a HF model, auto-detected from ``config.model_type`` unless ``spec`` is given."""
        kind = model_kind(model)
        if spec is None:
            table = SITE_VARIANTS.get(variant)
            if table is None:
                raise LegibilityError(
                    f"unknown site variant {variant!r}; choose one of {sorted(SITE_VARIANTS)}"
                )
            model_type = getattr(model.config, "model_type", None)
            spec = table.get(str(model_type))
            if spec is None:
                raise LegibilityError(
                    f"architecture {model_type!r} is not supported for site variant {variant!r}. Supported: "
                    f"{', '.join(sorted(table))}. For another architecture pass "
                    "spec=SiteSpec(layers='path.to.blocks', module='mlp.out_proj') to load_model/Sites.detect."
                )
        return cls(model, spec, kind)

    @contextlib.contextmanager
    def patch(self, fns: Mapping[int, PatchFn]) -> Iterator[None]:
        """Apply ``fns[layer]`` to the activation of each listed layer for the duration of the block."""
        handles = []
        try:
            for layer, fn in fns.items():
                if not 0 <= layer < self.n_layers:
                    raise LegibilityError(f"layer {layer} out of range: the model has {self.n_layers} layers")
                module = self.modules[layer]
                if self.spec.io == "input":
                    handles.append(module.register_forward_pre_hook(_pre_hook(fn)))
                else:
                    handles.append(module.register_forward_hook(_post_hook(fn)))
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def record(self, layers: list[int] | None = None) -> Iterator[dict[int, Tensor]]:
        """Record the activations [batch, pos, neurons] of ``layers`` (all by default) during the block."""
        store: dict[int, Tensor] = {}

        def recorder(layer: int) -> PatchFn:
            def fn(acts: Tensor) -> Tensor:
                store[layer] = acts.detach()
                return acts

            return fn

        with self.patch({layer: recorder(layer) for layer in (layers or range(self.n_layers))}):
            yield store


def _pre_hook(fn: PatchFn):
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (fn(args[0]), *args[1:])

    return hook


def _post_hook(fn: PatchFn):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return fn(output)

    return hook


def model_kind(model: nn.Module) -> Literal["causal", "masked"]:
    """Whether a HF model predicts the next token (causal) or a masked token (masked)."""
    name = type(model).__name__
    if name.endswith("ForMaskedLM"):
        return "masked"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal"
    raise LegibilityError(
        f"{name} has no language-modelling head; load the model with AutoModelForCausalLM or "
        "AutoModelForMaskedLM (e.g. BertForMaskedLM, not BertModel)."
    )


def answer_positions(acts: Tensor, positions: Tensor) -> Tensor:
    """Gather acts[b, positions[b], :] -> [batch, neurons]."""
    return acts[torch.arange(acts.shape[0], device=acts.device), positions]
