"""The training corpus: fact sentences (synthetic world, PARAREL) plus optional text, and its tokenizer.

Sentences from all sources are shuffled into documents, tokenized by a tokenizer trained on them with
`tokenizers`, and joined (each followed by the end-of-sequence token) into one token stream whose tail is
the validation split. Text lines have their own held-out split (``data.text.val_lines`` of the distinct
lines, never trained on), so a general-text validation loss measures what a variant costs beyond the facts.
Facts are split per relation (``data.fact_split``) into objective facts, which the fact objectives may
train on, and held-out facts, which no objective ever sees (both stay in the corpus); scorecards report the
two groups apart.
A training batch is a set of random windows of that stream; the windows of step
``t`` depend only on ``(seed, t)``, which makes batches reproducible after a resume without saved state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from legibility.errors import LegibilityError
from legibility.facts.pararel import load_pararel
from legibility.facts.synthetic import make_world
from legibility.facts.types import OBJECT, Fact
from legibility.training.config import DataConfig, FactSplit, PararelSource, TextSource, TokenizerConfig

PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"


@dataclass
class Corpus:
    """Token streams, the tokenizer, and the facts the model is trained and evaluated on."""

    tokenizer: object  # a transformers PreTrainedTokenizerFast
    train_ids: Tensor  # [n_train_tokens] long
    val_ids: Tensor  # [n_val_tokens] long
    train_facts: list[Fact]  # prompts = training templates (seen in the corpus)
    eval_facts: list[Fact]  # prompts = held-out templates (never in the corpus)
    text_val_ids: Tensor | None = None  # held-out text lines, joined with EOS (None: no text configured)
    held_out_ids: frozenset[str] = frozenset()  # ids of the facts no objective may see (data.fact_split)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)  # type: ignore[arg-type]

    @property
    def objective_facts(self) -> list[Fact]:
        """The training-template facts the fact objectives may use: every fact not held out."""
        return [f for f in self.train_facts if f.id not in self.held_out_ids]

    def eval_split(self) -> tuple[list[Fact], list[Fact]]:
        """(held-out facts, objective facts), each prompted with its held-out templates."""
        held = [f for f in self.eval_facts if f.id in self.held_out_ids]
        return held, [f for f in self.eval_facts if f.id not in self.held_out_ids]

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int) -> Tensor:
        """Windows [batch, seq_len + 1] of the training stream for ``step`` (inputs = [:, :-1])."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return _windows(
            self.train_ids,
            torch.randint(
                0, self.train_ids.numel() - seq_len - 1, (batch_size,), generator=g, device=g.device
            ),
            seq_len,
        )

    def val_batches(self, n: int, batch_size: int, seq_len: int) -> list[Tensor]:
        """The first ``n`` batches of consecutive validation windows (fixed across evaluations)."""
        return _val_batches(
            self.val_ids, n, batch_size, seq_len, "raise data.n_sentences or data.val_fraction", "validation"
        )

    def text_val_batches(self, n: int, batch_size: int, seq_len: int) -> list[Tensor]:
        """Up to ``n`` batches of consecutive windows of the held-out text lines ([] without text)."""
        if self.text_val_ids is None:
            return []
        return _val_batches(
            self.text_val_ids, n, batch_size, seq_len, "raise data.text.val_lines", "held-out text"
        )


def _val_batches(ids: Tensor, n: int, batch_size: int, seq_len: int, fix: str, what: str) -> list[Tensor]:
    stride = seq_len + 1
    starts = torch.arange(0, max(ids.numel() - stride + 1, 0), stride, device=ids.device)
    if starts.numel() == 0:
        raise LegibilityError(f"the {what} split ({ids.numel()} tokens) is shorter than one sequence; {fix}")
    return [
        _windows(ids, starts[i : i + batch_size], seq_len)
        for i in range(0, min(n * batch_size, starts.numel()), batch_size)
    ]


def _windows(ids: Tensor, starts: Tensor, seq_len: int) -> Tensor:
    offsets = torch.arange(seq_len + 1, device=ids.device)
    return ids[starts[:, None] + offsets[None, :]]


def train_tokenizer(texts: list[str], cfg: TokenizerConfig):
    """A PreTrainedTokenizerFast trained on ``texts`` (word-level or byte-level BPE), specials first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, EOS]
    trainer: trainers.WordLevelTrainer | trainers.BpeTrainer
    if cfg.kind == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(
            vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=specials
        )
    else:
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=EOS)


def _split_templates(facts: list[Fact], held: int) -> tuple[list[Fact], list[Fact]]:
    """(facts with their first templates, facts with their last ``held`` templates)."""
    train, test = [], []
    for f in facts:
        k = len(f.prompts) - held
        if k < 1:
            raise LegibilityError(
                f"relation {f.relation} has {len(f.prompts)} templates; data.pararel.held_out_templates "
                f"must leave at least one for training (got {held})"
            )
        train.append(Fact(f.subject, f.relation, f.object, f.prompts[:k], f.id))
        test.append(Fact(f.subject, f.relation, f.object, f.prompts[k:], f.id))
    return train, test


def split_facts(facts: list[Fact], split: FactSplit) -> frozenset[str]:
    """The ids of the held-out facts: per relation, round(held_out * n) of its n facts (at least one, and
    at least one left for the objectives when the relation has two or more), drawn with ``split.seed``
    from the relation's fact ids in sorted order, so the split depends on the facts, not their order."""
    if not 0.0 < split.held_out < 1.0:
        raise LegibilityError(f"data.fact_split.held_out must be in (0, 1), got {split.held_out}")
    by_rel: dict[str, list[str]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f.id)
    held: set[str] = set()
    for rel, ids in sorted(by_rel.items()):
        distinct = sorted(set(ids))
        n = len(distinct)
        k = 1 if n == 1 else min(max(round(split.held_out * n), 1), n - 1)
        held |= set(random.Random(f"fact-split|{split.seed}|{rel}").sample(distinct, k))
    return frozenset(held)


def _pararel(src: PararelSource) -> tuple[list[Fact], list[Fact]]:
    return _split_templates(load_pararel(src.data_dir, src.relations, src.limit), src.held_out_templates)


def _text_lines(src: TextSource) -> list[str]:
    root = Path(src.dir)
    if not root.is_dir():
        raise LegibilityError(f"data.text.dir: {root} is not a folder; give a folder of UTF-8 .txt files")
    lines: list[str] = []
    for path in sorted(root.rglob("*.txt")):
        try:
            lines += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise LegibilityError(f"{path} is not UTF-8 text ({e.reason}); convert or remove it") from e
    if not lines:
        raise LegibilityError(f"data.text.dir: no non-empty lines in {root}/**/*.txt")
    return lines


def data_digests(cfg: DataConfig) -> dict[str, str]:
    """The sha256 of the content of every file ``cfg`` reads, by source (``data.text.sha256``: the text
    folder's *.txt files with their relative names; ``data.pararel.sha256``: the PARAREL files of its
    relations); {} for synthetic data alone, which the config itself determines. With the config, this keys
    a training run and a sweep trial: a rewritten text file is new data, not a reason to reuse a model."""
    from legibility.facts.pararel import pararel_files
    from legibility.models.identity import digest_files

    out = {}
    if cfg.text is not None:
        root = Path(cfg.text.dir)
        if not root.is_dir():
            raise LegibilityError(f"data.text.dir: {root} is not a folder; give a folder of UTF-8 .txt files")
        out["data.text.sha256"] = digest_files([p for p in root.rglob("*.txt") if p.is_file()], root)
    if cfg.pararel is not None:
        root, files = pararel_files(cfg.pararel.data_dir, list(cfg.pararel.relations))
        out["data.pararel.sha256"] = digest_files(files, root)
    return out


def build_corpus(cfg: DataConfig, tokenizer=None) -> Corpus:
    """Sentences of every configured source -> tokenizer -> train/validation token streams.

    A given ``tokenizer`` (e.g. the one saved by an earlier run) is used instead of training one.
    """
    rng = random.Random(f"corpus|{cfg.seed}")
    train_facts: list[Fact] = []
    eval_facts: list[Fact] = []
    weighted: list[tuple[Fact, float]] = []  # training-template facts with their mention weight
    if cfg.world is not None:
        world = make_world(cfg.world)
        train_facts += world.train_facts()
        eval_facts += list(world.facts)
        weighted += list(zip(world.train_facts(), world.weights, strict=True))
    if cfg.pararel is not None:
        tr, te = _pararel(cfg.pararel)
        train_facts += tr
        eval_facts += te
        weighted += [(f, 1.0 / len(tr)) for f in tr]  # uniform over PARAREL facts
    docs: list[str] = []
    held_text: list[str] = []
    if weighted:
        picks = rng.choices([f for f, _ in weighted], weights=[w for _, w in weighted], k=cfg.n_sentences)
        docs = [rng.choice(f.prompts).replace(OBJECT, f.object) for f in picks]
    if cfg.text is not None:
        lines, held_text = _hold_out(_text_lines(cfg.text), cfg.text.val_lines, cfg.seed)
        share = cfg.text.share
        if not 0.0 < share <= 1.0:
            raise LegibilityError(f"data.text.share must be in (0, 1], got {share}")
        n_text = len(lines) if not docs else round(len(docs) * share / max(1.0 - share, 1e-9))
        docs += rng.choices(lines, k=n_text) if docs else lines
    rng.shuffle(docs)
    if not docs:
        raise LegibilityError("the corpus is empty: configure data.world, data.pararel or data.text")
    if tokenizer is None:
        tokenizer = train_tokenizer(docs, cfg.tokenizer)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
    # token streams stay on the host (the trainer moves each batch to the model's device)
    stream = torch.tensor([t for ids in encoded for t in (*ids, eos)], dtype=torch.long, device="cpu")
    n_val = max(int(stream.numel() * cfg.val_fraction), 1)
    text_val = None
    if held_text:
        held_ids = tokenizer(held_text, add_special_tokens=False)["input_ids"]
        text_val = torch.tensor([t for ids in held_ids for t in (*ids, eos)], dtype=torch.long, device="cpu")
    held_out = split_facts(train_facts, cfg.fact_split) if train_facts else frozenset()
    return Corpus(tokenizer, stream[:-n_val], stream[-n_val:], train_facts, eval_facts, text_val, held_out)


def _hold_out(lines: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training lines, held-out lines): ``fraction`` of the distinct lines, chosen by ``seed``, are held out
    and every copy of them leaves the training lines (a repeated line cannot leak into validation)."""
    distinct = sorted(set(lines))
    n_held = round(len(distinct) * fraction)
    if n_held == 0:
        return lines, []
    if n_held >= len(distinct):
        raise LegibilityError(
            f"data.text.val_lines = {fraction} holds out all {len(distinct)} distinct text lines; lower it"
        )
    held = set(random.Random(f"text-val|{seed}").sample(distinct, n_held))
    return [ln for ln in lines if ln not in held], sorted(held)
