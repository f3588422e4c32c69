"""Training throughput: our trainer vs a minimal plain PyTorch loop, and the cost of each regularizer.

    python bench/training.py [--steps 20] [--rounds 5] [--config configs/world-gpt2.yaml]

Same model, same batches, same optimizer settings; every variant is timed in interleaved rounds, in a shuffled order (so a
burst of load from other processes hits all of them alike) and the fastest round is kept (the
least-disturbed one: on a shared machine, load only ever adds time). Prints
tokens/s of each variant, its step-time ratio to the plain loop, and last the line
``trainer_vs_plain: <x>`` (trainer tokens/s / plain tokens/s; target >= 0.95).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from legibility.training import Trainer, load_run_config
from legibility.training.trainer import lr_at, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
REGULARIZERS = {
    "dropout": {"name": "dropout", "p": 0.1},
    "explicit_dropout": {"name": "explicit_dropout", "coef": 1.0, "grad_noise": 1e-4},
    "decorrelation.l1": {"name": "decorrelation", "coef": 0.1},
    "decorrelation.decov": {"name": "decorrelation", "coef": 0.1, "form": "decov"},
    "activation_sparsity.l1": {"name": "activation_sparsity", "coef": 0.01},
    "activation_sparsity.topk": {"name": "activation_sparsity", "coef": 0.01, "form": "topk", "k": 16},
    "sparse_connections": {"name": "sparse_connections", "coef": 0.01, "density": 0.5},
    "locality": {"name": "locality", "coef": 0.01, "swap_every": 10},
    "suppressability.gxa": {"name": "suppressability", "coef": 0.5, "facts_per_step": 16},
    "specific_suppressability.gxa": {"name": "specific_suppressability", "coef": 0.5, "facts_per_step": 16},
    "suppressability.ig3": {
        "name": "suppressability",
        "coef": 0.5,
        "facts_per_step": 16,
        "method": "ig",
        "ig_steps": 3,
    },
}


class Plain:
    """The minimal loop: forward, cross-entropy, backward, clip, AdamW step."""

    def __init__(self, trainer: Trainer):
        self.model = copy.deepcopy(trainer.model)
        self.cfg = trainer.cfg.train
        self.corpus = trainer.corpus
        self.opt = make_optimizer(self.model, self.cfg)

    def train_step(self, step: int) -> None:
        t = self.cfg
        self.model.train()
        batch = self.corpus.batch(step, t.batch_size, t.seq_len, t.seed)
        logits = self.model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        for g in self.opt.param_groups:
            g["lr"] = lr_at(step, t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _rounds(variants: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds for ``steps`` steps of each variant in each round; the order is shuffled per round."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for r in range(rounds):
        random.Random(r).shuffle(order)  # no variant always runs right after another
        for name in order:
            tic = time.perf_counter()
            for s in range(r * steps, (r + 1) * steps):
                variants[name].train_step(s)
            times[name].append(time.perf_counter() - tic)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "world-gpt2.yaml"))
    ap.add_argument("--steps", type=int, default=20, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds; the fastest is kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated regularizer variants (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_run_config(args.config)
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    trainer = Trainer(base, tmp / "trainer", progress=False)
    corpus = trainer.corpus
    variants: dict[str, object] = {"plain": Plain(trainer), "trainer": trainer}
    names = args.only.split(",") if args.only else list(REGULARIZERS)
    for name in names:
        cfg = dataclasses.replace(base, regularizers=[REGULARIZERS[name]])
        variants[name] = Trainer(cfg, tmp / name, progress=False, corpus=corpus)
    t = base.train
    tokens = args.steps * t.batch_size * t.seq_len
    print(
        f"model: {base.model}\nbatch: {t.batch_size} x {t.seq_len} tokens, {args.steps} steps x {args.rounds} rounds, {args.threads} thread(s)"
    )
    for v in variants.values():  # warm up every variant (allocator, first-call overheads)
        for s in range(3):
            v.train_step(s)  # type: ignore[attr-defined]
    # Phase 1, trainer vs plain alone (nothing else in between evicts their caches); phase 2, every
    # variant. Each phase: interleaved rounds in shuffled order, fastest round kept.
    pair = _rounds({k: variants[k] for k in ("plain", "trainer")}, 2 * args.rounds, args.steps)
    times = _rounds(variants, args.rounds, args.steps)
    best = {k: min(v) for k, v in times.items()}
    print(f"{'variant':26s} {'tokens/s':>10s} {'step ms':>9s} {'x plain':>8s}")
    for name, sec in best.items():
        print(f"{name:26s} {tokens / sec:10.0f} {1000 * sec / args.steps:9.2f} {sec / best['plain']:8.2f}")
    print(
        f"trainer vs plain alone: {min(pair['plain']) * 1000 / args.steps:.2f} ms vs {min(pair['trainer']) * 1000 / args.steps:.2f} ms per step"
    )
    print(f"trainer_vs_plain: {min(pair['plain']) / min(pair['trainer']):.3f}")


if __name__ == "__main__":
    main()
