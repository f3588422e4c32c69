"""Choose the device and dtype a model runs in, once, at load time.

Every tensor the package creates afterwards goes on the model's device (``lm.device``); float32 is the
default dtype, and reduced precision is recorded in the run's settings (``lm.dtype``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from legibility.errors import LegibilityError

if TYPE_CHECKING:  # torch is imported where a device or dtype is resolved: the CLI parses without it
    import torch

DTYPE_NAMES = ("bfloat16", "float16", "float32")  # what --dtype offers
# float64 only through the Python API: exactness checks (tests) compare engines without rounding noise
API_DTYPE_NAMES = (*DTYPE_NAMES, "float64")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``."""
    import torch

    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise LegibilityError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LegibilityError(f"device {device!r} asked for, but CUDA is not available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LegibilityError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise LegibilityError(f"device {device!r} asked for, but MPS is not available; use --device cpu")
    elif dev.type != "cpu":
        raise LegibilityError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"float32"`` (default), ``"bfloat16"`` or ``"float16"`` (a torch.dtype passes through)."""
    import torch

    api = {name: getattr(torch, name) for name in API_DTYPE_NAMES}
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in api.values():
            raise LegibilityError(f"unsupported dtype {dtype}; use one of {list(DTYPE_NAMES)}")
        return dtype
    key = dtype.strip().lower().removeprefix("torch.")
    key = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(key, key)
    if key not in api:
        raise LegibilityError(f"unknown dtype {dtype!r}; use one of {list(DTYPE_NAMES)}")
    return api[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_name(text: str) -> str:
    """``--device`` as given, checked for its form without importing torch (availability is checked when
    the model loads)."""
    import re

    name = text.strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda, cuda:N or mps")
    return name


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` for a command that runs a model (pass them on to ``load_model``)."""
    parser.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto (CUDA when available), cpu, cuda, cuda:N or mps (default: %(default)s)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPE_NAMES,
        help="model dtype; anything but float32 gives approximate scores, recorded as such "
        "(default: %(default)s)",
    )


def free_memory(device: torch.device, cpu_budget: int = 2 << 30) -> int:
    """Bytes a computation may use on ``device``: free CUDA memory, else a fixed budget (CPU, MPS)."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return cpu_budget
