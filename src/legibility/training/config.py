"""Typed training configs and their validation from plain dicts (YAML).

Every section is a small frozen dataclass; :func:`from_dict` builds one from a mapping and raises
:class:`LegibilityError` naming the offending key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from legibility.errors import LegibilityError
from legibility.facts.synthetic import WorldConfig
from legibility.models.sites import architecture

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    """A small causal LM built from a Hugging Face config (GPT-2 or Llama style)."""

    # a trainable family (legibility.training.model.TRAINABLE): gpt2 (LayerNorm, plain MLP) or llama
    # (RMSNorm, gated MLP, RoPE)
    family: str = "gpt2"
    n_layers: int = 2  # transformer blocks
    d_model: int = 64  # residual width
    d_ffn: int = 256  # FFN width = number of neurons per layer
    n_heads: int = 4  # attention heads (d_model must be divisible by it)
    activation: Literal["gelu", "relu", "silu", "solu"] = "gelu"  # solu: LayerNorm(x * softmax(x))
    # Hugging Face's own dropout (gpt2: embedding, residual and attention; llama: attention only). It never
    # touches the FFN neurons; dropout on those is the ffn_dropout regularizer.
    builtin_dropout: float = 0.0
    context: int = 64  # maximum sequence length
    tie_embeddings: bool = True  # share the input embedding and the LM head

    # old key -> (new key, what to write instead); an old key still loads, with a FutureWarning
    RENAMED: ClassVar[dict[str, tuple[str, str]]] = {
        "dropout": (
            "builtin_dropout",
            "it is Hugging Face's embedding/residual/attention dropout, not dropout on the FFN neurons; write "
            "model.builtin_dropout: <p> for the same run, or regularizers: [{name: ffn_dropout, p: <p>}] for "
            "dropout on the FFN neurons where the knowledge neurons live",
        )
    }


@dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer trained on the corpus with `tokenizers`."""

    kind: Literal["wordlevel", "bpe"] = "wordlevel"  # wordlevel: one token per word; bpe: byte-level BPE
    vocab_size: int = 4000  # upper bound on the vocabulary (specials included)
    min_frequency: int = 1  # words/merges seen fewer times are left out


@dataclass(frozen=True)
class PararelSource:
    """PARAREL facts rendered with their templates (the last templates of each relation held out)."""

    relations: list[str] = field(default_factory=lambda: ["P36", "P37"])  # PARAREL relation ids
    limit: int = 100  # facts per relation
    held_out_templates: int = 2  # templates per relation kept out of the corpus
    data_dir: str | None = None  # PARAREL folder (default: the usual search path)


@dataclass(frozen=True)
class TextSource:
    """A folder of UTF-8 text files (*.txt, recursively) mixed into the corpus."""

    dir: str = ""  # the folder
    share: float = 0.2  # fraction of the corpus' sentences/lines taken from this folder
    val_lines: float = 0.05  # fraction of the folder's distinct lines held out of training (text_val_loss)


@dataclass(frozen=True)
class FactSplit:
    """Which facts the fact objectives may use; the others (held-out facts) are never seen by any objective.

    Both groups stay in the language-model corpus: the split only decides what the objectives train on and
    what scorecards report apart (held-out facts: the claim; trained facts: in-sample)."""

    held_out: float = 0.5  # share of each relation's facts held out of every objective (at least one)
    seed: int = 0  # which facts are held out


@dataclass(frozen=True)
class DataConfig:
    """What the model is trained on."""

    world: WorldConfig | None = field(default_factory=WorldConfig)  # synthetic facts (null: none)
    pararel: PararelSource | None = None  # PARAREL facts (null: none)
    text: TextSource | None = None  # extra text (null: none)
    fact_split: FactSplit = field(default_factory=FactSplit)  # objective facts vs held-out facts
    n_sentences: int = 20000  # fact sentences in the corpus (world and PARAREL together)
    val_fraction: float = 0.05  # tail of the token stream kept for validation loss
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    seed: int = 0  # sampling of sentences and their order


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and bookkeeping of a training run."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per step
    seq_len: int = 64  # tokens per sequence (<= model.context)
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup: int = 50  # linear warmup steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    seed: int = 0  # parameter init, batches, dropout
    log_every: int = 10  # steps between metrics lines
    eval_every: int = 200  # steps between evaluations (validation loss, held-out fact accuracy)
    eval_batches: int = 4  # validation batches per evaluation
    checkpoint_every: int = 200  # steps between checkpoints (a final one is always written)
    keep_checkpoints: int = 2  # older checkpoints are deleted


@dataclass(frozen=True)
class RunConfig:
    """Everything a `legibility train` run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # [{"name": <registered regularizer>, **its config}]; validated by legibility.training.regularizers
    regularizers: list[dict] = field(default_factory=list)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except LegibilityError as e:
                errors.append(str(e))
        raise LegibilityError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise LegibilityError(
                f"{where}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}"
            )
        return value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise LegibilityError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if tp is Any or tp is dict:
        if tp is dict and not isinstance(value, dict):
            raise LegibilityError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise LegibilityError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LegibilityError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LegibilityError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise LegibilityError(f"{where}: expected a string, got {value!r}")
        return value
    raise LegibilityError(f"{where}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are errors naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LegibilityError(f"{where}: expected a mapping with keys {_keys(cls)}, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data = _renamed(cls, data, where)
    unknown = sorted(set(data) - names)
    if unknown:
        raise LegibilityError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {_keys(cls)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _renamed(cls: type, data: dict, where: str) -> dict:
    """``data`` with the old keys of ``cls.RENAMED`` under their new names, each with a FutureWarning that
    says what to write instead; an old key given together with its new one is an error."""
    renamed: dict[str, tuple[str, str]] = getattr(cls, "RENAMED", {})
    old = [k for k in data if k in renamed]
    if not old:
        return data
    out = dict(data)
    for key in old:
        new, advice = renamed[key]
        if new in out:
            raise LegibilityError(f"{where}: give {new} only ({key} is its old name; {advice})")
        warnings.warn(f"{where}.{key} is deprecated: {advice}", FutureWarning, stacklevel=2)
        out[new] = out.pop(key)
    return out


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


# (dotted key, low, high, low included, high included); None: unbounded on that side. Numbers that size
# memory have an upper bound, so a typo (an extra zero or three) is refused before anything is allocated.
RANGES: list[tuple[str, float | None, float | None, bool, bool]] = [
    ("model.n_layers", 1, 256, True, True),
    ("model.d_model", 1, 16384, True, True),
    ("model.d_ffn", 1, 65536, True, True),
    ("model.n_heads", 1, 256, True, True),
    ("model.builtin_dropout", 0.0, 1.0, True, False),
    ("model.context", 2, 32768, True, True),
    ("data.n_sentences", 1, 50_000_000, True, True),
    ("data.val_fraction", 0.0, 0.5, False, False),
    ("data.tokenizer.vocab_size", 8, 1_000_000, True, True),
    ("data.tokenizer.min_frequency", 1, None, True, False),
    ("data.world.n_subjects", 1, 1_000_000, True, True),
    ("data.world.n_relations", 1, 10_000, True, True),
    ("data.world.n_objects", 1, 1_000_000, True, True),
    ("data.world.held_out_templates", 0, None, True, False),
    ("data.world.zipf", 0.0, None, True, False),
    ("data.world.syllables", 1, 64, True, True),
    ("data.pararel.limit", 1, 1_000_000, True, True),
    ("data.pararel.held_out_templates", 0, None, True, False),
    ("data.text.share", 0.0, 1.0, False, True),
    ("data.text.val_lines", 0.0, 0.5, True, True),
    ("data.fact_split.held_out", 0.0, 1.0, False, False),
    ("train.steps", 1, 100_000_000, True, True),
    ("train.batch_size", 1, 65536, True, True),
    ("train.seq_len", 2, None, True, False),
    ("train.lr", 0.0, None, False, False),
    ("train.min_lr_ratio", 0.0, 1.0, True, True),
    ("train.warmup", 0, None, True, False),
    ("train.weight_decay", 0.0, None, True, False),
    ("train.grad_clip", 0.0, None, True, False),
    ("train.log_every", 1, None, True, False),
    ("train.eval_every", 1, None, True, False),
    ("train.eval_batches", 1, 100_000, True, True),
    ("train.checkpoint_every", 1, None, True, False),
    ("train.keep_checkpoints", 1, 10_000, True, True),
]


def allowed(lo: float | None, hi: float | None, lo_in: bool = True, hi_in: bool = False) -> str:
    """A range in words: ``>= 1``, ``> 0``, ``in [0, 1)``."""
    if hi is None:
        return f"{'>=' if lo_in else '>'} {lo}"
    if lo is None:
        return f"{'<=' if hi_in else '<'} {hi}"
    return f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"


def check_range(
    where: str, value: float, lo: float | None, hi: float | None, lo_in: bool = True, hi_in: bool = False
) -> None:
    """Raise a one-line LegibilityError naming ``where`` when ``value`` is NaN/inf or outside the range."""
    ok = math.isfinite(value)
    if ok and lo is not None:
        ok = value >= lo if lo_in else value > lo
    if ok and hi is not None:
        ok = value <= hi if hi_in else value < hi
    if not ok:
        raise LegibilityError(
            f"{where} = {value!r} is out of range; allowed: {allowed(lo, hi, lo_in, hi_in)}"
        )


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return None
        node = getattr(node, part)
    return node


MAX_PARAMS = 2e9  # parameters of a trained model's blocks
MAX_ACTIVATIONS = 4e9  # FFN and residual activations kept for the backward pass of one step


def check_run(cfg: RunConfig) -> None:
    """Range checks of every numeric field and cross-field checks that single fields cannot express."""
    for key, lo, hi, lo_in, hi_in in RANGES:
        value = _get(cfg, key)
        if value is not None:  # an absent optional section (data.pararel: null)
            check_range(key, value, lo, hi, lo_in, hi_in)
    m, t = cfg.model, cfg.train
    row = architecture(m.family)  # the FFN's projections: 2 for a plain MLP, 3 for a gated one
    params = m.n_layers * (4 * m.d_model**2 + (len(row.ffn_in) + 1 if row else 3) * m.d_model * m.d_ffn)
    if params > MAX_PARAMS:
        raise LegibilityError(
            f"model: {m.n_layers} layers of d_model {m.d_model} and d_ffn {m.d_ffn} are about {params / 1e9:.1f}B "
            f"parameters in the blocks alone; the training lab builds small models (at most {MAX_PARAMS / 1e9:g}B): "
            "lower model.n_layers, model.d_model or model.d_ffn"
        )
    activations = t.batch_size * t.seq_len * (m.d_ffn + 4 * m.d_model) * m.n_layers
    if activations > MAX_ACTIVATIONS:
        raise LegibilityError(
            f"train.batch_size {t.batch_size} x train.seq_len {t.seq_len} needs about {activations / 1e9:.0f}G "
            f"activation values per step at this model size (at most {MAX_ACTIVATIONS / 1e9:g}G); lower "
            "train.batch_size or train.seq_len"
        )
    if m.d_model % m.n_heads:
        raise LegibilityError(f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})")
    if t.seq_len > m.context:
        raise LegibilityError(f"train.seq_len ({t.seq_len}) must be <= model.context ({m.context})")
    if len(t.betas) != 2:
        raise LegibilityError(f"train.betas must be two numbers, got {t.betas}")
    for i, b in enumerate(t.betas):
        check_range(f"train.betas[{i}]", b, 0.0, 1.0)
    d = cfg.data
    if d.world is None and d.pararel is None and d.text is None:
        raise LegibilityError("data: give at least one source (world, pararel or text)")
    if d.text is not None and not d.text.dir:
        raise LegibilityError("data.text.dir: give the folder of .txt files (or data.text: null)")
