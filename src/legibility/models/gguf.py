"""Local GGUF files as models: converted once into a cached safetensors directory.

A GGUF (llama.cpp's single-file format) is dequantized by transformers, which takes seconds to minutes, so
the first load writes a float32 Hugging Face directory (config, safetensors weights, tokenizer) into
``<cache>/models/gguf/<stem>-<sha256 prefix>`` and later loads read that. The key is the file's content hash,
so a file changed in place is converted again, and two copies of one file share a conversion.

Two processes converting the same file at once are safe: a file lock serializes them, the conversion is
written to a temporary sibling directory and renamed into place, and the second process finds the finished
directory when it gets the lock.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from legibility.errors import LegibilityError
from legibility.models.files import cache_dir, sha256_file

__all__ = ["cache_dir", "convert_once", "find_gguf", "gguf_model_dir", "sha256"]

# Files a finished conversion holds; a directory without them is not trusted.
DONE = ("config.json", "model.safetensors")


def find_gguf(path: str | os.PathLike) -> Path | None:
    """The GGUF file that ``path`` names: the file itself, or the only ``*.gguf`` of a directory that is not a
    Hugging Face directory (no config.json). None when ``path`` is no GGUF model."""
    p = Path(path).expanduser()
    if p.is_file():
        return p if p.suffix.lower() == ".gguf" else None
    if not p.is_dir() or (p / "config.json").exists():
        return None
    found = sorted(p.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise LegibilityError(
            f"{p} holds several GGUF files ({names}); pass one of them: --model {p / found[0].name}"
        )
    return found[0] if found else None


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (a GGUF can be many GB: cached, see :mod:`legibility.models.files`)."""
    return sha256_file(path, cached=True)


def architecture(path: Path) -> str:
    """The ``general.architecture`` field of a GGUF file."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(path).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as e:  # the reader raises whatever a cut or garbled file happens to trip on
        what = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise LegibilityError(f"{path} is not a readable GGUF file ({what}); check the download") from e


def _readable() -> list[str]:
    """GGUF architectures the installed transformers converts."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def check_supported(path: Path) -> str:
    """The file's architecture, or a LegibilityError when transformers cannot convert it."""
    arch = architecture(path)
    # llama.cpp writes some names with '-' where transformers' model types have '_'.
    if arch not in _readable() and arch.replace("-", "_") not in _readable():
        raise _unsupported(path, arch)
    return arch


def _unsupported(path: Path, arch: str) -> LegibilityError:
    readable = _readable()
    return LegibilityError(
        f"{path.name}: transformers cannot read GGUF architecture {arch!r} (it reads {', '.join(readable)}); "
        "use the model's Hugging Face directory (config.json + safetensors) instead, or a GGUF of a "
        "supported architecture"
    )


def gguf_model_dir(path: str | os.PathLike) -> Path:
    """A cached Hugging Face directory converted from the GGUF file at ``path`` (made on first use)."""
    gguf = Path(path).expanduser().resolve()
    arch = check_supported(gguf)
    target = cache_dir() / "models" / "gguf" / f"{gguf.stem}-{sha256(gguf)[:16]}"

    def convert(tmp: Path) -> None:
        try:
            dequantize_to(gguf, tmp)
        except (ValueError, NotImplementedError) as e:  # an architecture transformers half-supports
            if "architecture" in str(e) or "model_type" in str(e):
                raise _unsupported(gguf, arch) from e
            raise LegibilityError(f"could not convert {gguf.name}: {str(e).splitlines()[0]}") from e

    return convert_once(target, convert)


def convert_once(target: Path, convert: Callable[[Path], None]) -> Path:
    """``target`` once ``convert(tmp_dir)`` has filled it; safe when several processes ask at once.

    The conversion runs under a file lock, into a temporary sibling that is renamed into place, so a killed
    conversion never leaves a half-written ``target`` and a concurrent caller waits, then reuses the result;
    the temporary folder a killed conversion left behind is deleted by the next one.
    """
    from filelock import FileLock

    if _done(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _done(target):  # another process finished it while we waited
            return target
        for stale in target.parent.glob(
            f".{target.name}-*"
        ):  # left by a killed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            convert(tmp)
            if target.exists():  # a stale, unfinished directory
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _done(target: Path) -> bool:
    return all((target / name).exists() for name in DONE)


def dequantize_to(gguf: Path, out: Path) -> None:
    """Write a float32 Hugging Face copy (config, safetensors, tokenizer) of a GGUF file into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config
    if hasattr(config, "quantization_config"):  # the copy is plain float32: loading it must not re-quantize
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
