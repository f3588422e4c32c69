"""Local GGUF files as models: which paths count, the content-keyed cache, concurrency, clear errors."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import legibility.models.gguf as gguf_mod
from legibility import LegibilityError, load_model
from legibility.models.gguf import convert_once, find_gguf, gguf_model_dir

SRC = Path(__file__).resolve().parents[1] / "src"


def _write_gguf(path: Path, arch: str = "llama", fill: float = 0.0) -> Path:
    """A GGUF file holding only an architecture field and one tensor (enough to be read, not loaded)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.full((4, 8), fill, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGIBILITY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_find_gguf_accepts_a_file_or_a_directory_holding_exactly_one(tmp_path):
    f = _write_gguf(tmp_path / "m.gguf")
    assert find_gguf(f) == f
    assert find_gguf(tmp_path) == f
    assert find_gguf(tmp_path / "missing") is None
    assert find_gguf("gpt2") is None  # a hub id
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    shutil.copy(f, hf / "x.gguf")
    assert find_gguf(hf) is None  # a Hugging Face directory stays one, even with a stray GGUF in it
    _write_gguf(tmp_path / "other.gguf")
    with pytest.raises(LegibilityError, match="several GGUF files"):
        find_gguf(tmp_path)


def test_unsupported_architecture_is_one_clear_error(tmp_path, cache):
    f = _write_gguf(tmp_path / "enc.gguf", arch="bert")
    with pytest.raises(LegibilityError, match=r"architecture 'bert'.*Hugging Face directory") as e:
        load_model(str(f))
    assert "llama" in str(e.value)  # lists what does work
    assert not (cache / "models" / "gguf").exists() or not any((cache / "models" / "gguf").iterdir())


def test_not_a_gguf_file_is_a_clear_error(tmp_path, cache):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(LegibilityError, match="not a readable GGUF"):
        load_model(str(bad))


def _fake_dequantize(gguf: Path, out: Path) -> None:
    (out / "config.json").write_text(gguf.read_bytes().hex()[-16:])
    (out / "model.safetensors").write_bytes(b"")


def test_cache_is_keyed_on_content_so_a_changed_file_is_converted_again(tmp_path, cache, monkeypatch):
    calls = []

    def fake(gguf, out):
        calls.append(gguf)
        _fake_dequantize(gguf, out)

    monkeypatch.setattr(gguf_mod, "dequantize_to", fake)
    f = _write_gguf(tmp_path / "m.gguf", fill=0.0)
    first = gguf_model_dir(f)
    assert gguf_model_dir(f) == first and len(calls) == 1  # second load: from the cache
    copy = tmp_path / "sub" / "m.gguf"
    copy.parent.mkdir()
    shutil.copy(f, copy)
    assert gguf_model_dir(copy) == first and len(calls) == 1  # same content, same conversion
    _write_gguf(f, fill=1.0)  # changed in place
    second = gguf_model_dir(f)
    assert second != first and len(calls) == 2
    assert first.parent == second.parent == cache / "models" / "gguf"


def test_a_failed_conversion_leaves_no_cache_entry(tmp_path, cache):
    target = cache / "models" / "x"

    def boom(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed mid-conversion")

    with pytest.raises(RuntimeError):
        convert_once(target, boom)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == ["x.lock"]  # no half-written temporary left
    assert convert_once(target, lambda tmp: _fake_dequantize(_write_gguf(tmp_path / "m.gguf"), tmp)) == target


CONVERT = """
import sys, time
from pathlib import Path
from legibility.models.gguf import convert_once

target, log = Path(sys.argv[1]), Path(sys.argv[2])

def convert(tmp):
    with log.open("a") as f:
        f.write("start\\n")
    time.sleep(1.0)  # long enough for the other process to arrive while this one converts
    (tmp / "config.json").write_text("{}")
    (tmp / "model.safetensors").write_bytes(b"weights")
    with log.open("a") as f:
        f.write("end\\n")

print(convert_once(target, convert))
"""


def test_two_processes_converting_at_once_convert_once(tmp_path):
    target, log = tmp_path / "cache" / "models" / "m", tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERT, str(target), str(log)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [str(target), str(target)]
    assert log.read_text().split() == ["start", "end"]  # one conversion, never two interleaved
    assert (target / "model.safetensors").read_bytes() == b"weights"


@pytest.mark.slow
def test_a_copied_smollm2_gguf_loads_like_the_embedded_model(tmp_path, cache, smollm):
    from legibility.models.embedded import gguf_path

    folder = tmp_path / "my-model"
    folder.mkdir()
    f = folder / "SmolLM2.Q4_1.gguf"
    shutil.copy(gguf_path("smollm2-135m"), f)
    lm = load_model(str(f))
    assert (lm.sites.n_layers, lm.sites.n_neurons) == (30, 1536)
    assert [p.name for p in (cache / "models" / "gguf").iterdir() if p.is_dir()][0].startswith(
        "SmolLM2.Q4_1-"
    )
    ids = torch.tensor([lm.encode("The capital of France is")])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, smollm.model(input_ids=ids).logits)
    again = load_model(str(folder))  # the directory holding it: reuses the conversion
    assert sum(p.is_dir() for p in (cache / "models" / "gguf").iterdir()) == 1
    assert again.encode("Paris") == smollm.encode("Paris")
