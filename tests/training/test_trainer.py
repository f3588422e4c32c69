"""Trainer: determinism, learning, exact resume after kill -9, NaN handling, checkpoint round trip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_cfg

from legibility import LegibilityError
from legibility.training import Trainer
from legibility.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from legibility.training.config import TextSource
from legibility.training.trainer import lr_at, make_optimizer

HERE = Path(__file__).resolve().parent
CHILD = """
import sys, time, json, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
from train_helpers import tiny_cfg
from legibility.training import Trainer
delay = float(sys.argv[2])
cfg = tiny_cfg(steps=40, checkpoint_every=10, eval_every=20, **{{"model.builtin_dropout": 0.1}},
               regularizers=[{{"name": "ffn_dropout", "p": 0.2}}, {{"name": "explicit_dropout", "coef": 0.1, "grad_noise": 1e-3}}])
final = Trainer(cfg, sys.argv[1], progress=False).fit([lambda t, s: time.sleep(delay)])
print("FINAL", json.dumps(final))
"""


def _child(out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = CHILD.format(here=str(HERE))
    return subprocess.Popen(
        [sys.executable, "-c", code, str(out), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _final(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    line = [ln for ln in out.splitlines() if ln.startswith("FINAL")][-1]
    return json.loads(line.split(" ", 1)[1])


@pytest.mark.slow
def test_kill_9_and_resume_ends_identical(tmp_path):
    reference = _child(tmp_path / "ref", 0.0)
    killed = _child(tmp_path / "run", 0.05)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 90
    while time.time() < deadline:
        ckpt = latest_checkpoint(ckpts) if ckpts.exists() else None
        if ckpt is not None and ckpt.name >= "step-000010":
            break
        time.sleep(0.02)
    assert killed.poll() is None, "the run finished before it could be killed"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    resumed_from = latest_checkpoint(ckpts)
    assert resumed_from is not None and resumed_from.name < "step-000040"
    ref = _final(reference)
    res = _final(_child(tmp_path / "run", 0.0))
    assert res["step"] == ref["step"] == 40
    for key in ("loss", "lm_loss", "val_loss", "fact_p"):
        assert res[key] == ref[key], key  # bit-identical, not merely close
    ref_w = (tmp_path / "ref" / "model" / "model.safetensors").read_bytes()
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == ref_w

    def losses(d: Path) -> list:
        rows = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in rows]

    assert losses(tmp_path / "run") == losses(tmp_path / "ref")


@pytest.mark.slow
def test_training_lowers_loss_and_is_deterministic(tmp_path):
    cfg = tiny_cfg(steps=30, lr=1e-2)
    a = Trainer(cfg, tmp_path / "a", progress=False).fit()
    b = Trainer(cfg, tmp_path / "b", progress=False).fit()
    assert a == b
    first = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert a["lm_loss"] < first["lm_loss"] - 0.5


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_cfg(steps=30, checkpoint_every=10)

    def poison(trainer, step):
        if step == 14:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    trainer = Trainer(cfg, tmp_path, progress=False)
    with pytest.raises(LegibilityError, match=r"loss became nan at step 15.*step-000010"):
        trainer.fit([poison])
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.name == "step-000010"
    fresh = Trainer(cfg, tmp_path, progress=False)
    state = load_checkpoint(ckpt, fresh.model, fresh.optimizer)
    assert state["step"] == 10
    assert all(bool(torch.isfinite(p).all()) for p in fresh.model.parameters())


def test_resume_refuses_a_different_config_naming_the_key(tmp_path):
    Trainer(tiny_cfg(steps=2), tmp_path, progress=False)
    with pytest.raises(LegibilityError, match=r"different config \(train.steps: 2 -> 3\)"):
        Trainer(tiny_cfg(steps=3), tmp_path, progress=False)


def test_a_config_that_fails_to_start_does_not_lock_the_folder(tmp_path):
    bad = tiny_cfg(**{"data.text": TextSource(dir=str(tmp_path / "missing"))})
    with pytest.raises(LegibilityError):
        Trainer(bad, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()
    Trainer(tiny_cfg(steps=2), tmp_path / "run", progress=False)  # the corrected rerun starts
    assert (tmp_path / "run" / "config.json").exists()


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path):
    cfg = tiny_cfg(steps=4)
    t = Trainer(cfg, tmp_path / "run", progress=False)
    for s in range(3):
        t.train_step(s)
    save_checkpoint(tmp_path / "ck", 3, t.model, t.optimizer, {"x": 1})
    expected_rand = torch.rand(5)
    other = Trainer(cfg, tmp_path / "run2", progress=False)
    state = load_checkpoint(tmp_path / "ck" / "step-000003", other.model, other.optimizer)
    assert state["x"] == 1 and state["step"] == 3
    assert torch.equal(torch.rand(5), expected_rand)
    for p, q in zip(t.model.parameters(), other.model.parameters(), strict=True):
        assert torch.equal(p, q)
        sa, sb = t.optimizer.state[p], other.optimizer.state[q]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        assert float(sa["step"]) == float(sb["step"]) == 3.0


def test_lr_schedule_warmup_and_cosine():
    cfg = tiny_cfg(steps=110, warmup=10, lr=1.0, min_lr_ratio=0.1).train
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(model, tiny_cfg().train)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.weight)}


def test_non_finite_gradient_stops_before_the_update(tmp_path, monkeypatch):
    trainer = Trainer(tiny_cfg(steps=5), tmp_path, progress=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(float("inf")))
    with pytest.raises(LegibilityError, match="gradient norm became inf at step 0"):
        trainer.train_step(0)
    assert all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), before, strict=True))


def test_text_validation_loss_equals_the_plain_hf_loss(tmp_path):
    """text_val_loss is the token-weighted mean of HF's own next-token loss over the held-out text lines."""
    import dataclasses
    import itertools

    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text(
        "\n".join(" ".join(c) for c in itertools.permutations(words, 4)) + "\n", encoding="utf-8"
    )
    cfg = tiny_cfg(steps=10)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            cfg.data, text=TextSource(dir=str(tmp_path / "t"), share=0.3, val_lines=0.1)
        ),
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    final = trainer.fit()
    assert trainer.text_val and "text_val_loss" in final
    total = count = 0.0
    with torch.no_grad():
        for b in trainer.text_val:
            n = b[:, 1:].numel()
            total += float(trainer.model(input_ids=b, labels=b).loss) * n  # HF shifts labels itself
            count += n
    assert final["text_val_loss"] == pytest.approx(total / count, rel=1e-5)
    assert final["text_val_loss"] != pytest.approx(final["val_loss"], rel=1e-3)
