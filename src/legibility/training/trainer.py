"""The trainer: AdamW with warmup + cosine schedule and clipping, regularizers, evaluation, checkpoints.

A run lives in one output folder::

    config.json      the resolved RunConfig (a resumed run must have the same one)
    inputs.json      the content digests of the data files read (text folder, PARAREL; the same, too)
    tokenizer/       the tokenizer trained on the corpus (reused on resume)
    metrics.jsonl    one JSON line per log step / evaluation
    checkpoints/     atomic checkpoints (see legibility.training.checkpoint)
    model/           the final model and tokenizer (save_pretrained; loadable by legibility.load_model)

Deterministic given ``train.seed``: batches depend only on (seed, step), dropout and noise draw from the
torch RNG whose state is checkpointed, so a run killed at any point (even ``kill -9``) and restarted with
the same folder ends with bit-identical weights and losses. A non-finite loss stops the run with a
:class:`LegibilityError` before the bad step touches the weights; the last checkpoint stays valid.

The device (``device=``, ``--device``) is an execution setting, not part of the run config: the model is
initialized on the CPU (the same weights on every device) and then moved; each batch is moved to it as it is
used. A checkpoint resumes on any device (bit-identical resumption holds on the device that wrote it). The
device is recorded in ``model/final.json`` (``device``; ``devices`` when a resume changed it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from legibility.devices import resolve_device
from legibility.errors import LegibilityError
from legibility.facts.render import render
from legibility.forward import predict
from legibility.metrics.table import TRAINED_FACTS
from legibility.models.loading import LoadedModel
from legibility.models.sites import Sites
from legibility.store import clean_temp, make_dir, run_lock
from legibility.training.checkpoint import (
    CorruptCheckpoint,
    checkpoints,
    intact_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from legibility.training.config import RunConfig, check_run
from legibility.training.corpus import Corpus, build_corpus, data_digests
from legibility.training.model import build_model
from legibility.training.regularizers import Setup, StepContext, build_regularizers, recording
from legibility.training.run_config import upgrade_resolved

Callback = Callable[["Trainer", int], None]  # called after each completed step with that step's index


def lr_at(step: int, cfg) -> float:
    """Linear warmup to cfg.lr over cfg.warmup steps, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only (not on biases, norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=False)


class Trainer:
    """Train ``config`` into ``out_dir`` (resuming when the folder holds a checkpoint of the same run)."""

    def __init__(
        self,
        config: RunConfig | Any,  # a RunConfig, or a subclass's config with .train and .regularizers
        out_dir: str | Path,
        progress: bool = True,
        eval_facts: int = 200,
        corpus: Corpus | None = None,
        device: str | torch.device | None = None,
    ):
        """``eval_facts``: facts of each group (held-out, objective) sampled for fact accuracy; ``corpus``: reuse one built from the same
        ``config.data`` (benchmarks build it once for many trainers); ``device``: ``"auto"`` (the default:
        CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``, not part of the config."""
        self._validate(config)
        self.device = resolve_device(device)  # first: an unavailable device fails before any work
        self.devices = [str(self.device)]  # every device the run has used, in order (resumes may change it)
        self.cfg: Any = config
        self.out = make_dir(out_dir)
        self.progress = progress
        self._check_config()
        self.inputs = self._input_digests()
        self._check_inputs()
        torch.manual_seed(config.train.seed)
        random.seed(config.train.seed)
        self.corpus, self.lm = self._build(corpus)
        self.model: Any = self.lm.model
        self.sites = self.lm.sites
        self.optimizer = make_optimizer(self.model, config.train)
        setup = Setup(
            self.model,
            self.sites,
            self.lm.tokenizer,
            self.corpus,
            config.train.seed,
            config.train.steps,
            self.lm.add_special_tokens,
        )
        self.regularizers = build_regularizers(config.regularizers, setup)
        self.eval_queries = self._eval_queries(eval_facts)
        self.val = self.corpus.val_batches(
            config.train.eval_batches, config.train.batch_size, config.train.seq_len
        )
        # the general-text loss decides a variant's cost in nats: up to 4x the batches of the mixed loss
        self.text_val = self.corpus.text_val_batches(
            4 * config.train.eval_batches, config.train.batch_size, config.train.seq_len
        )
        self.step = 0
        self.last: dict = {}
        self._write_config()

    # ---------------------------------------------------------------- what subclasses change

    def _validate(self, config: Any) -> None:
        check_run(config)

    def _input_digests(self) -> dict:
        """Content digests of what the run reads besides its config (``inputs.json``)."""
        return data_digests(self.cfg.data)

    def _build(self, corpus: Corpus | None) -> tuple[Corpus, LoadedModel]:
        """The corpus and the freshly initialized model on ``self.device``, wrapped for the library."""
        config = self.cfg
        tok_dir = self.out / "tokenizer"
        built = corpus or build_corpus(config.data, _load_tokenizer(tok_dir))
        if not tok_dir.exists():
            built.tokenizer.save_pretrained(tok_dir)  # type: ignore[attr-defined]
        tok: Any = built.tokenizer
        with torch.device("cpu"):  # initialized on the host: the same weights whatever the device
            model = build_model(
                config.model,
                built.vocab_size,
                tok.pad_token_id,
                tok.eos_token_id,
                config.train.seed,
            )
        model = model.to(self.device)
        return built, LoadedModel(model, tok, Sites.detect(model), str(self.out), add_special_tokens=False)

    def _eval_queries(self, eval_facts: int) -> dict[str, list]:
        """Metric suffix -> held-out-template queries of up to ``eval_facts`` facts of that group."""
        out: dict[str, list] = {}
        for suffix, facts in zip(("", TRAINED_FACTS), self.corpus.eval_split(), strict=True):
            rng = random.Random(f"eval|{self.cfg.train.seed}{suffix}")
            chosen = rng.sample(facts, min(eval_facts, len(facts)))
            out[suffix] = [pq.queries[0] for f in chosen for pq in render(self.lm, f).prompts]
        return out

    # ---------------------------------------------------------------- bookkeeping

    # Config fields that name data files; their content is keyed in inputs.json (``portable_digests``), so a
    # run whose data moved (a relative and an absolute path, another checkout) resumes as the same run.
    DATA_PATHS: tuple[str, ...] = ("data.text.dir", "data.pararel.data_dir")

    def _check_config(self) -> None:
        """Refuse a folder holding a run with another config, naming the keys that differ (a data path alone
        may differ when the run keys its data by content: ``_check_inputs`` then compares the content)."""
        path = self.out / "config.json"
        if not path.exists():
            return
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise LegibilityError(f"{path} is not readable JSON ({e}); use a new --out folder") from e
        old = upgrade_resolved(old) if isinstance(old, dict) else old
        new = json.loads(json.dumps(dataclasses.asdict(self.cfg)))
        diff = config_diff(old, new)
        if diff and (self.out / "inputs.json").exists():  # the data's content is compared by _check_inputs
            diff = [d for d in diff if d[0] not in self.DATA_PATHS]
        if diff:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff[:5])
            more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
            raise LegibilityError(
                f"{self.out} holds a run with a different config ({shown}{more}); use a new --out folder, or "
                "the same config to resume it"
            )

    def _check_inputs(self) -> None:
        """Refuse a folder holding a run trained on other data: the same config over a rewritten text
        folder or other PARAREL files is another run (``inputs.json`` holds the content digests)."""
        path = self.out / "inputs.json"
        if not path.exists():
            if self.inputs and (self.out / "config.json").exists():
                raise LegibilityError(
                    f"{self.out} holds a run made before legibility recorded the content of its data (no "
                    "inputs.json), so whether its text or PARAREL files changed since cannot be told; use a "
                    "new --out folder, or delete this one to train it again"
                )
            return
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise LegibilityError(f"{path} is not readable JSON ({e}); use a new --out folder") from e
        old, new = portable_digests(old), portable_digests(self.inputs)
        if old != new:
            diff = config_diff(old, new)
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff)
            raise LegibilityError(
                f"{self.out} holds a run trained on other data ({shown}); use a new --out folder, or "
                "restore the data to resume it"
            )

    def _write_config(self) -> None:
        """Written once setup succeeded, so a config that fails to start never locks the folder."""
        inputs = self.out / "inputs.json"
        if not inputs.exists():
            tmp = inputs.with_name(".inputs.json.tmp")
            tmp.write_text(json.dumps(self.inputs, indent=2), encoding="utf-8")
            os.replace(tmp, inputs)
        path = self.out / "config.json"
        if not path.exists():
            tmp = path.with_name(".config.json.tmp")
            tmp.write_text(json.dumps(dataclasses.asdict(self.cfg), indent=2), encoding="utf-8")
            os.replace(tmp, path)

    def _log(self, record: dict) -> None:
        with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _resume(self) -> None:
        root = self.out / "checkpoints"
        good, bad = intact_checkpoints(root)
        for problem in bad:
            warnings.warn(f"skipping a damaged checkpoint: {problem}", RuntimeWarning, stacklevel=3)
        state = None
        for ckpt in good:
            try:
                state = load_checkpoint(ckpt, self.model, self.optimizer)
            except CorruptCheckpoint as e:
                warnings.warn(f"skipping a damaged checkpoint: {e}", RuntimeWarning, stacklevel=3)
                bad.append(str(e))
                continue
            newer = [p.name for p in checkpoints(root) if p.name > ckpt.name]
            if newer:  # a damaged older one costs nothing: its warning above says so
                warnings.warn(
                    f"resuming from {ckpt}, the newest intact checkpoint (the newer {', '.join(newer)} "
                    f"{'is' if len(newer) == 1 else 'are'} damaged)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            break
        if state is None:
            if bad:
                raise LegibilityError(
                    f"every checkpoint in {root} is damaged ({bad[0]}); delete {root} to train from "
                    "step 0, or use a new --out folder"
                )
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
            return
        self.step = int(state["step"])
        self.last = state.get("last", {})
        before = state.get("devices") or []
        if before and before[-1] != str(self.device):
            warnings.warn(
                f"resuming a run checkpointed on {before[-1]} on {self.device}: the result is valid but not "
                "bit-identical to an uninterrupted run on one device",
                RuntimeWarning,
                stacklevel=3,
            )
        self.devices = list(dict.fromkeys([*before, str(self.device)]))
        repair_metrics(self.out / "metrics.jsonl", self.step)

    def checkpoint(self) -> Path:
        state = {"last": self.last, "config": dataclasses.asdict(self.cfg), "devices": self.devices}
        return save_checkpoint(
            self.out / "checkpoints",
            self.step,
            self.model,
            self.optimizer,
            state,
            self.cfg.train.keep_checkpoints,
        )

    # ---------------------------------------------------------------- steps

    def train_step(self, step: int) -> dict:
        """One optimizer step at index ``step``; returns its metrics (floats)."""
        t = self.cfg.train
        self.model.train()
        batch = self.corpus.batch(step, t.batch_size, t.seq_len, t.seed).to(self.device)
        x, y = batch[:, :-1], batch[:, 1:]
        ctx = StepContext(self.model, self.sites, step, t.steps, x)
        active = [r for r in self.regularizers if r.factor(step, t.steps) > 0]
        with contextlib.ExitStack() as stack:
            for r in active:
                stack.enter_context(r.forward(ctx))
            if any(r.needs_activations for r in active):
                stack.enter_context(recording(self.sites, ctx.activations))
            logits = self.model(input_ids=x).logits  # [batch, pos, vocab]
        ctx.logits = logits
        lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        total = lm_loss
        metrics = {"step": step, "lr": lr_at(step, t), "lm_loss": 0.0}
        for r in active:
            pen = r.penalty(ctx)
            if pen is not None:
                total = total + r.weight(step, t.steps) * pen
                metrics[f"reg.{r.name}"] = float(pen.detach())  # type: ignore[attr-defined]
        if not bool(torch.isfinite(total)):
            self._stop(step, f"the loss became {float(total.detach())}")
        for group in self.optimizer.param_groups:
            group["lr"] = metrics["lr"]
        total.backward()
        for r in active:
            r.after_backward(ctx)
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(metrics["grad_norm"]):
            self.optimizer.zero_grad(set_to_none=True)
            self._stop(step, f"the gradient norm became {metrics['grad_norm']}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for r in active:
            r.after_step(ctx, self.optimizer)
        metrics["lm_loss"] = float(lm_loss.detach())
        metrics["loss"] = float(total.detach())
        return metrics

    def _stop(self, step: int, what: str) -> None:
        raise LegibilityError(
            f"{what} at step {step}; training stopped before applying it. The last good checkpoint is "
            f"{latest_checkpoint(self.out / 'checkpoints')}. Lower train.lr or the regularizer coefficients "
            "(or raise train.warmup) and train into a new --out folder."
        )

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss (the held-out tail of the stream), the loss on held-out text lines (when text is
        configured) and top-1 accuracy and mean p(correct) on the held-out-template prompts of held-out facts
        (``fact_accuracy``, ``fact_p``: facts no objective saw) and of the objective facts
        (``fact_accuracy.trained_facts``, ``fact_p.trained_facts``)."""
        self.model.eval()
        out = {"val_loss": self._mean_loss(self.val)}
        if self.text_val:
            out["text_val_loss"] = self._mean_loss(self.text_val)
        for suffix, queries in self.eval_queries.items():
            if queries:
                pred = predict(self.lm, queries)
                out[f"fact_accuracy{suffix}"] = float((pred.rank == 0).float().mean())
                out[f"fact_p{suffix}"] = float(pred.prob.mean())
        return out

    def _mean_loss(self, batches: Sequence[Tensor]) -> float:
        """Mean next-token cross-entropy (nats/token) over ``batches`` of windows [batch, seq_len + 1]."""
        total, count = 0.0, 0
        for b in batches:
            b = b.to(self.device)
            logits = self.model(input_ids=b[:, :-1]).logits
            targets = b[:, 1:].reshape(-1)
            total += float(
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="sum")
            )
            count += targets.numel()
        return total / count

    def fit(self, callbacks: Sequence[Callback] = ()) -> dict:
        """Train to ``train.steps`` (from the latest checkpoint if any); returns the final metrics."""
        t = self.cfg.train
        self._resume()
        bar = tqdm(total=t.steps, initial=self.step, desc="training", disable=not self.progress, unit="step")
        tic = time.perf_counter()
        while self.step < t.steps:
            step = self.step
            metrics = self.train_step(step)
            self.step = step + 1
            self.last = {k: metrics[k] for k in ("loss", "lm_loss")}
            if self.step % t.log_every == 0 or self.step == t.steps:
                metrics["tokens_per_s"] = (
                    t.log_every * t.batch_size * t.seq_len / max(time.perf_counter() - tic, 1e-9)
                )
                tic = time.perf_counter()
                self._log(metrics)
            if self.step % t.eval_every == 0 or self.step == t.steps:
                ev = self.evaluate()
                self.last.update(ev)
                self._log({"step": step, "eval": True, **ev})
            if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                self.checkpoint()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            for cb in callbacks:
                cb(self, step)
        bar.close()
        self.export()
        return {"step": self.step, **self.last, **self.placement()}

    def placement(self) -> dict:
        """Where the run ran: ``{"device": ...}``, plus ``devices`` (in order) when resumes changed it."""
        out: dict = {"device": str(self.device)}
        if len(self.devices) > 1:
            out["devices"] = self.devices
        return out

    def export(self) -> Path:
        """Save the model and tokenizer with save_pretrained into ``<out>/model``."""
        target = self.out / "model"
        self.model.save_pretrained(target)
        self.corpus.tokenizer.save_pretrained(target)  # type: ignore[attr-defined]
        (target / "final.json").write_text(
            json.dumps({"step": self.step, **self.last, **self.placement()}, indent=2)
        )
        return target


def portable_digests(digests: Any) -> Any:
    """Content digests keyed by what they are and the file's name, not by where the file lies (a mapping of
    roles to ``{path: sha256}`` or to a digest)."""
    if not isinstance(digests, dict):
        return digests
    return {
        role: {Path(str(k)).name: v for k, v in d.items()} if isinstance(d, dict) else d
        for role, d in digests.items()
    }


def config_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf where two config mappings differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += config_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def repair_metrics(path: Path, step: int) -> None:
    """Make ``metrics.jsonl`` consistent with a resume at ``step``.

    Lines logged at or after ``step`` are dropped (the resumed run logs them again, identically). A torn
    last line (a kill in the middle of a write) is cut off with a warning; an unreadable line elsewhere is
    moved to ``metrics.jsonl.corrupt`` with a warning, never taking the later lines with it."""
    if not path.exists():
        return
    raw = path.read_bytes()
    parts = raw.split(b"\n")
    kept: list[str] = []
    quarantined: list[bytes] = []
    for i, part in enumerate(parts):
        if not part.strip():
            continue
        last = i == len(parts) - 1  # no newline after it: the write was cut short
        try:
            record = json.loads(part.decode("utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("no integer step")
        except ValueError:
            if last:
                warnings.warn(
                    f"{path}: cut off a torn last line ({len(part)} bytes) left by an interrupted write",
                    RuntimeWarning,
                    stacklevel=4,
                )
            else:
                quarantined.append(part)
            continue
        if record["step"] < step:
            kept.append(json.dumps(record))
    if quarantined:
        aside = path.with_name(path.name + ".corrupt")
        with aside.open("ab") as f:
            f.write(b"".join(q + b"\n" for q in quarantined))
        warnings.warn(
            f"{path}: moved {len(quarantined)} unreadable line(s) to {aside}", RuntimeWarning, stacklevel=4
        )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
    os.replace(tmp, path)


def _load_tokenizer(path: Path):
    """The run's saved tokenizer, built the way :func:`train_tokenizer` builds a fresh one, so that a resumed
    run exports the same tokenizer files, byte for byte, as an uninterrupted one (``from_pretrained`` would
    add loading details such as ``is_local`` to tokenizer_config.json, which changes the model's identity)."""
    if not (path / "tokenizer.json").exists():
        return None
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from legibility.training.corpus import EOS, PAD, UNK

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=EOS)


def train(
    config: RunConfig,
    out_dir: str | Path,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    device: str | torch.device | None = None,
) -> dict:
    """Train (or resume) a run on ``device`` (default ``"auto"``: CUDA when available); returns the final
    metrics with the device used. The model is in ``<out_dir>/model``.

    The folder is held with :func:`legibility.store.run_lock` for the whole run (a second ``train`` into it
    is refused, not interleaved), and the temporary files a killed run left there are deleted first."""
    check_run(config)
    with run_lock(out_dir) as lock:
        clean_temp(lock.parent, "checkpoints")
        return Trainer(config, out_dir, progress, device=device).fit(callbacks)
