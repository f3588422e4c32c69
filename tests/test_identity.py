"""Model identity keys every run: weights, config and tokenizer by content, paths resolved, a hash cache
that a preserved mtime cannot fool."""

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import tiny_lm
from legibility.cli import main
from legibility.models.identity import identity, identity_of, model_ref, sha256_file
from test_cli import LOOSE, _args, _facts_file


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-identity")
    lm = tiny_lm("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def model(saved_model, tmp_path):
    """A private copy of the tiny model directory (tests change its files)."""
    return Path(shutil.copytree(saved_model, tmp_path / "m"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGIBILITY_CACHE", str(tmp_path / "cache"))


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _swap_two_vocab_ids(path: Path) -> None:
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    vocab["paris"], vocab["berlin"] = vocab["berlin"], vocab["paris"]
    path.write_text(json.dumps(tok))


def test_each_part_of_the_model_has_its_own_digest(model):
    before = identity_of(str(model))
    assert set(before) == {"weights_sha256", "config_sha256", "tokenizer_sha256"}
    _swap_two_vocab_ids(model / "tokenizer.json")
    after = identity_of(str(model))
    assert after["tokenizer_sha256"] != before["tokenizer_sha256"]
    assert after["weights_sha256"] == before["weights_sha256"]
    cfg = json.loads((model / "config.json").read_text())
    cfg["hidden_act"] = "relu"
    (model / "config.json").write_text(json.dumps(cfg))
    assert identity_of(str(model))["config_sha256"] != before["config_sha256"]
    (model / "generation_config.json").write_text('{"do_sample": true}')
    assert identity_of(str(model))["config_sha256"] != after["config_sha256"]


@pytest.mark.parametrize("change", ["tokenizer", "config"])
def test_a_changed_tokenizer_or_config_refuses_the_old_run(model, tmp_path, capsys, change):
    facts = _facts_file(tmp_path / "f.jsonl", 2)
    out = tmp_path / "o"
    args = _args("score", model, facts, out, "--steps", "2", "--metrics", "none", *LOOSE)
    assert main(args) == 0
    card = (out / "scorecard.json").read_bytes()
    if change == "tokenizer":
        _swap_two_vocab_ids(model / "tokenizer.json")
    else:
        cfg = json.loads((model / "config.json").read_text())
        cfg["hidden_act"] = "relu"
        (model / "config.json").write_text(json.dumps(cfg))
    assert main(args) == 2
    err = _err(capsys)
    assert f"{change}_sha256" in err and "--force" in err and err.count("\n") == 1
    assert (out / "scorecard.json").read_bytes() == card
    assert main([*args, "--force"]) == 0
    assert (
        json.loads((out / "run.json").read_text())[f"{change}_sha256"]
        == identity_of(str(model))[f"{change}_sha256"]
    )


def test_weights_copied_over_with_a_preserved_mtime_are_hashed_again(model, tmp_path):
    weights = model / "model.safetensors"
    first = sha256_file(weights, cached=True)
    other = tmp_path / "other"
    tiny_lm("llama", seed=1).model.save_pretrained(other)
    st = weights.stat()
    assert (other / "model.safetensors").stat().st_size == st.st_size  # same shapes: same size
    shutil.copyfile(other / "model.safetensors", weights)  # in place: the same inode
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p does to the mtime
    assert weights.stat().st_mtime_ns == st.st_mtime_ns and weights.stat().st_ino == st.st_ino
    assert sha256_file(weights, cached=True) == sha256_file(weights) != first
    # and a copy with cp -p semantics onto a new file
    weights.unlink()
    shutil.copy2(other / "model.safetensors", weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_file(weights, cached=True) == sha256_file(weights)


def test_the_cache_is_used_for_an_unchanged_file(model, monkeypatch):
    import legibility.models.files as files

    weights = model / "model.safetensors"
    digest = sha256_file(weights, cached=True)
    reads = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p, **kw: reads.append(p) or real(p, **kw))
    assert files._cached_digests([weights]) == [digest]
    assert reads == []  # no read: the stamp matched


def test_a_relative_and_an_absolute_path_to_one_model_are_one_key(model, tmp_path, capsys, monkeypatch):
    facts = _facts_file(tmp_path / "f.jsonl", 2)
    out = tmp_path / "o"
    monkeypatch.chdir(tmp_path)
    assert main(_args("neurons", Path("m"), facts, out, "--steps", "2", *LOOSE)) == 0
    assert json.loads((out / "run.json").read_text())["model"] == str(model.resolve())
    assert main(_args("neurons", model.resolve(), facts, out, "--steps", "2", *LOOSE)) == 0
    assert main(_args("neurons", Path("./m/"), facts, out, "--steps", "2", *LOOSE)) == 0
    assert "holds a run" not in _err(capsys)
    assert model_ref("m") == str(model.resolve()) and model_ref("smollm2-135m") == "smollm2-135m"


def test_a_run_made_with_the_old_key_is_refused_naming_the_change(model, tmp_path, capsys):
    facts = _facts_file(tmp_path / "f.jsonl", 2)
    out = tmp_path / "o"
    args = _args("neurons", model, facts, out, "--steps", "2", *LOOSE)
    assert main(args) == 0
    key = json.loads((out / "run.json").read_text())
    for k in ("config_sha256", "tokenizer_sha256"):  # what a run made before this key holds
        del key[k]
    (out / "run.json").write_text(json.dumps(key))
    assert main(args) == 2
    err = _err(capsys)
    assert "older legibility" in err and "config and tokenizer" in err and "--force" in err
    assert main([*args, "--force"]) == 0


def test_a_model_in_memory_is_keyed_by_its_state_config_and_tokenizer():
    a, b = tiny_lm("llama", seed=0), tiny_lm("llama", seed=0)
    assert identity(a) == identity(b)
    c = tiny_lm("llama", seed=1)
    ia, ic = identity(a), identity(c)
    assert ia["weights_sha256"] != ic["weights_sha256"] and ia["config_sha256"] == ic["config_sha256"]
    b.model.config.hidden_act = "relu"
    assert identity(b)["config_sha256"] != ia["config_sha256"]
    b.tokenizer.add_tokens(["zebra"])
    assert identity(b)["tokenizer_sha256"] != ia["tokenizer_sha256"]


def test_a_gguf_file_is_keyed_by_its_content(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF" + bytes(100))
    one = identity_of(str(f))
    assert one is not None and len(set(one.values())) == 1
    f.write_bytes(b"GGUF" + bytes(101))
    assert identity_of(str(f)) != one
