"""Atomic checkpoints: weights, optimizer state, RNG state and trainer state, without pickle.

Layout of ``<out>/checkpoints/``::

    step-000200/model.safetensors      model weights (tied weights stored once)
    step-000200/optimizer.safetensors  every tensor of the optimizer state, keyed "<param index>.<name>"
    step-000200/optimizer.json         param groups and non-tensor state
    step-000200/rng.safetensors        torch CPU generator state, and the CUDA (or MPS) generator's of the
                                       model's device when it runs there (uint8 tensors)
    step-000200/state.json             step, python RNG state, trainer bookkeeping
    step-000200/checksums.json         sha256 of every other file of the checkpoint
    latest                             the name of the newest complete checkpoint

A checkpoint is written into a temporary folder, fsynced and renamed; only then is ``latest`` replaced
(write + ``os.replace``). A process killed at any moment leaves ``latest`` naming a complete checkpoint.

Tensors are written from the host and read onto it; loading copies them into the model's parameters and the
optimizer moves its state to theirs, so a checkpoint written on one device resumes on another.

Disks still damage files after the fact: :func:`verify_checkpoint` compares every file against
``checksums.json``, and :func:`intact_checkpoints` lists the checkpoints that pass, newest first, so a
resume falls back to the newest intact one (the trainer keeps ``train.keep_checkpoints`` of them).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from legibility.models.identity import sha256_file

LATEST = "latest"
CHECKSUMS = "checksums.json"
FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "state.json")


def _sha256(path: Path) -> str:
    return sha256_file(path)  # never the cached digest: this checks the bytes on disk


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The generator states a run on ``device`` draws from: the CPU's, plus the accelerator's (dropout and
    noise on a GPU draw from the device generator, not the CPU one)."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore :func:`rng_states`; an accelerator state is restored only on that kind of device (a run
    checkpointed on a GPU and resumed on the CPU has no use for it, and the reverse has none to restore)."""
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
    elif device.type == "mps" and "mps" in states:
        torch.mps.set_rng_state(states["mps"])


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-ready rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    root: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer, state: dict, keep: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically under ``root`` and point ``latest`` at it."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    tensors, meta = optimizer_tensors(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    save_file(rng_states(_device(model)), str(tmp / "rng.safetensors"))
    py_state = random.getstate()
    full = {**state, "step": step, "python_rng": [py_state[0], list(py_state[1]), py_state[2]]}
    (tmp / "state.json").write_text(json.dumps(full))
    sums = {f: _sha256(tmp / f) for f in FILES}
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / LATEST, name)
    old = sorted(p for p in root.glob("step-*") if p.name != name)
    for p in old[: max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names (not verified: see :func:`intact_checkpoints`)."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def verify_checkpoint(path: Path) -> str | None:
    """None when every file of checkpoint ``path`` matches its checksum, else what is wrong (naming the file).

    A checkpoint written before checksums existed (no ``checksums.json``) is accepted when its files are
    present; its tensors are still checked for finiteness when loaded."""
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        return f"{path / missing[0]} is missing"
    sums_path = path / CHECKSUMS
    if not sums_path.is_file():
        return None
    try:
        sums = json.loads(sums_path.read_text())
    except (ValueError, UnicodeDecodeError):
        return f"{sums_path} is corrupt"
    for name in FILES:
        if sums.get(name) != _sha256(path / name):
            return f"{path / name} does not match its checksum (corrupt)"
    return None


def checkpoints(root: Path) -> list[Path]:
    """Every complete checkpoint folder under ``root``, newest first (temporary folders excluded)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: p.name, reverse=True)


def intact_checkpoints(root: Path) -> tuple[list[Path], list[str]]:
    """(checkpoints that pass :func:`verify_checkpoint`, newest first; one message per damaged one)."""
    good: list[Path] = []
    bad: list[str] = []
    for path in checkpoints(root):
        problem = verify_checkpoint(path)
        if problem is None:
            good.append(path)
        else:
            bad.append(problem)
    return good, bad


class CorruptCheckpoint(Exception):
    """A checkpoint file cannot be read or holds non-finite numbers; the message names the file."""


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise CorruptCheckpoint(f"{path} cannot be read ({type(e).__name__}: {e})") from e
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CorruptCheckpoint(f"{path} holds non-finite values in {key!r} (corrupt)")
    return tensors


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    """Restore weights, optimizer, and the RNGs from ``path`` onto the model's device (whichever device
    wrote the checkpoint); returns the saved trainer state.

    Raises :class:`CorruptCheckpoint` (naming the file) for a file that cannot be read or holds NaN/inf:
    a damaged optimizer state would otherwise surface steps later as a non-finite loss. Everything is read
    and checked before the model or optimizer is touched."""
    weights = _load_tensors(path / "model.safetensors")
    opt_tensors: dict[str, torch.Tensor] = {}
    meta: dict = {}
    if opt is not None:
        opt_tensors = _load_tensors(path / "optimizer.safetensors")
        try:
            meta = json.loads((path / "optimizer.json").read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptCheckpoint(f"{path / 'optimizer.json'} is corrupt ({e})") from e
    try:
        state = json.loads((path / "state.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(f"{path / 'state.json'} is corrupt ({e})") from e
    rng = _load_tensors(path / "rng.safetensors")
    del weights  # read only to check it; load_model handles tied weights
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True)
    del missing, unexpected
    if opt is not None:
        try:
            load_optimizer(opt, opt_tensors, meta)
        except (KeyError, ValueError, TypeError) as e:
            raise CorruptCheckpoint(f"{path / 'optimizer.json'} does not fit this optimizer ({e})") from e
    set_rng_states(rng, _device(model))
    version, internal, gauss = state.pop("python_rng")
    random.setstate((version, tuple(internal), gauss))
    return state
