"""Damaged run folders: checksummed checkpoints, fallback to the newest intact one, torn metrics lines."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_cfg

from legibility import LegibilityError
from legibility.training import Trainer
from legibility.training.checkpoint import intact_checkpoints, verify_checkpoint
from legibility.training.trainer import repair_metrics

CFG = dict(steps=20, checkpoint_every=10, eval_every=10)


def _header_len(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def _poison(path: Path, byte: int = 0xFF, n: int = 64) -> None:
    """Overwrite the first tensor bytes after the safetensors header (0xFF... is NaN in float32)."""
    data = bytearray(path.read_bytes())
    start = _header_len(path)
    data[start : start + n] = bytes([byte]) * n
    path.write_bytes(bytes(data))


@pytest.fixture(autouse=True)
def _one_thread():
    """Bit-identical weights need the same thread count in the reference run and the resumed one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(tiny_cfg(**CFG), out, progress=False).fit()
    finally:
        torch.set_num_threads(before)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _weights(out: Path) -> bytes:
    return (out / "model" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_checkpoints_carry_checksums_that_catch_a_flipped_byte(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    ckpt = run / "checkpoints" / "step-000020"
    sums = json.loads((ckpt / "checksums.json").read_text())
    assert set(sums) >= {"model.safetensors", "optimizer.safetensors", "state.json"}
    assert verify_checkpoint(ckpt) is None
    _poison(ckpt / "model.safetensors", byte=0x01, n=1)
    problem = verify_checkpoint(ckpt)
    assert problem is not None and "model.safetensors" in problem
    good, bad = intact_checkpoints(run / "checkpoints")
    assert [p.name for p in good] == ["step-000010"] and len(bad) == 1


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.safetensors"])
def test_corrupt_latest_checkpoint_falls_back_to_the_older_one(finished, tmp_path, damaged):
    run = _copy(finished, tmp_path / "run")
    _poison(run / "checkpoints" / "step-000020" / damaged)
    trainer = Trainer(tiny_cfg(**CFG), run, progress=False)
    with pytest.warns(RuntimeWarning, match=rf"step-000020.{damaged}") as rec:
        final = trainer.fit()
    assert any("resuming from" in str(w.message) and "step-000010" in str(w.message) for w in rec)
    assert final["step"] == 20
    # retrained steps 10..20 from the intact checkpoint: the same weights as the uninterrupted run
    assert _weights(run) == _weights(finished)


@pytest.mark.slow
def test_nan_optimizer_state_without_checksums_is_named_not_a_nan_loss(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    for ckpt in ("step-000010", "step-000020"):
        (run / "checkpoints" / ckpt / "checksums.json").unlink()  # a checkpoint from before checksums
    _poison(run / "checkpoints" / "step-000020" / "optimizer.safetensors")
    trainer = Trainer(tiny_cfg(**CFG), run, progress=False)
    with pytest.warns(RuntimeWarning, match=r"optimizer.safetensors holds non-finite values"):
        final = trainer.fit()
    assert final["step"] == 20 and _weights(run) == _weights(finished)


@pytest.mark.slow
def test_every_checkpoint_damaged_is_a_one_line_error(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    for ckpt in ("step-000010", "step-000020"):
        _poison(run / "checkpoints" / ckpt / "optimizer.safetensors")
    trainer = Trainer(tiny_cfg(**CFG), run, progress=False)
    with pytest.warns(RuntimeWarning), pytest.raises(LegibilityError, match="every checkpoint") as e:
        trainer.fit()
    assert "\n" not in str(e.value) and "loss became" not in str(e.value)


@pytest.mark.slow
def test_torn_metrics_line_is_repaired_on_resume(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    # a kill during step 10..20: no step-20 checkpoint yet, half a metrics line at the end of the file
    shutil.rmtree(run / "checkpoints" / "step-000020")
    (run / "checkpoints" / "latest").write_text("step-000010")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 14, "lr": 0.00')
    with pytest.warns(RuntimeWarning, match="torn last line"):
        final = Trainer(tiny_cfg(**CFG), run, progress=False).fit()
    assert final["step"] == 20
    assert _rows(run) == _rows(finished)


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # timing differs


def test_repair_metrics_quarantines_a_middle_line_and_keeps_later_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"st\x00ep": \n{"step": 1}\n{"step": 5}\n{"step": 2')
    with pytest.warns(RuntimeWarning) as rec:
        repair_metrics(path, step=3)
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [0, 1]
    assert (tmp_path / "metrics.jsonl.corrupt").read_text().startswith('{"st')
    messages = " ".join(str(w.message) for w in rec)
    assert "torn last line" in messages and "moved 1 unreadable line" in messages
