"""A tiny GPT-2 and a tiny BERT *trained* on the sentences of ``tiny_facts()``, so that they predict the objects.

Random tiny models give near-uniform outputs, whose attributions are all noise; comparisons with another
implementation (tests/test_parity.py) are only convincing on a model that knows its facts. Training is
deterministic (fixed seed, forked RNG so the caller's random state is untouched) and takes a few seconds
per model on an idle core. :func:`cached` stores the weights as safetensors under a directory (tests use
pytest's cache), keyed by this file, helpers.py, the training config and the torch/transformers versions,
so later sessions load them in well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from helpers import tiny_config, tiny_facts, tiny_tokenizer
from legibility.facts.types import OBJECT, Fact


@dataclass(frozen=True)
class TrainConfig:
    """How the tiny models are trained (full batch: all sentences every step)."""

    steps: int = 300  # optimizer steps
    lr: float = 3e-3  # AdamW learning rate
    seed: int = 0  # parameter init and dropout


def sentences(facts: list[Fact]) -> list[str]:
    """Every prompt of every fact with the object filled in."""
    return [p.replace(OBJECT, f.object) for f in facts for p in f.prompts]


def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _fit(model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> nn.Module:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    for _ in range(cfg.steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def gpt2_tokenizer():
    tok = tiny_tokenizer(masked=False)
    # Like GPT2Tokenizer: no token_type_ids (GPT-2 would add wte(token_type_ids) to its embeddings).
    tok.model_input_names = ["input_ids", "attention_mask"]
    return tok


def bert_tokenizer():
    tok = tiny_tokenizer(masked=True)
    # Like BertTokenizer: returns token_type_ids (EleutherAI's package reads them for BERT).
    tok.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return tok


def trained_gpt2(cfg: TrainConfig | None = None):
    """(GPT2LMHeadModel, tokenizer) trained as a causal LM on every fact sentence."""
    import transformers as tr

    cfg = cfg or TrainConfig()
    tok = gpt2_tokenizer()
    rows = [tok(s)["input_ids"] for s in sentences(tiny_facts())]
    ids, mask = _pad(rows, tok.pad_token_id)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = tr.GPT2LMHeadModel(tiny_config("gpt2", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        _fit(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, cfg)
    return model, tok


def trained_bert(cfg: TrainConfig | None = None):
    """(BertForMaskedLM, tokenizer) trained to fill the object of every fact sentence from [MASK]."""
    import transformers as tr

    cfg = cfg or TrainConfig()
    tok = bert_tokenizer()
    rows, label_rows = [], []
    for f in tiny_facts():
        for p in f.prompts:
            masked = tok(p.replace(OBJECT, tok.mask_token))["input_ids"]
            full = tok(p.replace(OBJECT, f.object))["input_ids"]
            assert len(masked) == len(full), "single-token objects only"
            rows.append(masked)
            label_rows.append(
                [t if m == tok.mask_token_id else -100 for m, t in zip(masked, full, strict=True)]
            )
    ids, mask = _pad(rows, tok.pad_token_id)
    labels, _ = _pad(label_rows, -100)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = tr.BertForMaskedLM(
            tiny_config("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        )
        _fit(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, cfg)
    return model, tok


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread for the block: these models are so small that a second thread only adds
    synchronisation, and on a busy machine its spin-waiting made the parity tests ~10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


BUILDERS: dict[str, tuple[Callable, Callable, str]] = {
    "gpt2": (trained_gpt2, gpt2_tokenizer, "GPT2LMHeadModel"),
    "bert": (trained_bert, bert_tokenizer, "BertForMaskedLM"),
}


def cached(family: str, root: Path, cfg: TrainConfig | None = None):
    """(model in eval mode, tokenizer) of ``family``, trained once and then loaded from ``root``."""
    import transformers as tr

    cfg = cfg or TrainConfig()
    train, tokenizer, cls_name = BUILDERS[family]
    here = Path(__file__).parent
    key = hashlib.sha256(
        b"".join((here / f).read_bytes() for f in ("trained.py", "helpers.py"))
        + f"{family}|{cfg}|{torch.__version__}|{tr.__version__}".encode()
    ).hexdigest()[:16]
    path = root / f"{family}-{key}"
    if (path / "model.safetensors").exists():
        return getattr(tr, cls_name).from_pretrained(path).eval(), tokenizer()
    with single_thread():
        model, tok = train(cfg)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{family}-"))
    model.save_pretrained(tmp)
    if path.exists():  # another session wrote it meanwhile; either copy is the same model
        shutil.rmtree(tmp)
    else:
        tmp.rename(path)
    return model, tok
