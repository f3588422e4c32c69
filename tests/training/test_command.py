"""`legibility train`: YAML validation with clear errors, example configs, a tiny end-to-end run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from legibility import LegibilityError, load_model
from legibility.training.command import add_parser, main
from legibility.training.run_config import load_run_config, parse_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    cfg = load_run_config(path)
    assert cfg.train.steps >= 1


@pytest.mark.parametrize(
    "data,message",
    [
        ({"modle": {}}, r"config: unknown key\(s\) modle; allowed: model, data, train, regularizers"),
        (
            {"model": {"activation": "tanh"}},
            r"config.model.activation: 'tanh' is not allowed; choose one of 'gelu'",
        ),
        ({"model": {"n_layers": "two"}}, r"config.model.n_layers: expected an integer, got 'two'"),
        ({"train": {"lr": "fast"}}, r"config.train.lr: expected a number"),
        (
            {"data": {"world": {"zipf_exp": 1}}},
            r"config.data.world: unknown key\(s\) zipf_exp; allowed: n_subjects",
        ),
        (
            {"model": {"d_model": 30, "n_heads": 4}},
            r"model.d_model \(30\) must be divisible by model.n_heads",
        ),
        ({"regularizers": [{"name": "sparsity"}]}, r"regularizers\[0\].name: unknown regularizer 'sparsity'"),
        (
            {"regularizers": [{"name": "locality", "layout": "ring"}]},
            r"regularizers\[0\] \(locality\).layout",
        ),
    ],
)
def test_config_errors_name_the_key_and_what_is_allowed(data, message):
    with pytest.raises(LegibilityError, match=message):
        parse_run_config(data)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"train": {"lr": -0.001}}, r"^train.lr = -0.001 is out of range; allowed: > 0.0$"),
        ({"train": {"lr": float("nan")}}, r"^train.lr = nan is out of range"),
        (
            {"model": {"builtin_dropout": 1.5}},
            r"^model.builtin_dropout = 1.5 is out of range; allowed: in \[0.0, 1.0\)$",
        ),
        ({"model": {"builtin_dropout": 1.0}}, r"^model.builtin_dropout = 1.0 is out of range"),
        ({"model": {"n_heads": 0}}, r"^model.n_heads = 0 is out of range; allowed: in \[1, 256\]$"),
        ({"model": {"n_heads": 3}}, r"model.d_model \(64\) must be divisible by model.n_heads \(3\)"),
        ({"model": {"n_layers": 0}}, r"^model.n_layers = 0 is out of range; allowed: in \[1, 256\]$"),
        # numbers that size memory are bounded above, before anything is allocated
        (
            {"model": {"d_ffn": 10**9}},
            r"^model.d_ffn = 1000000000 is out of range; allowed: in \[1, 65536\]$",
        ),
        ({"train": {"batch_size": 10**7}}, r"^train.batch_size = 10000000 is out of range"),
        ({"data": {"n_sentences": 10**10}}, r"^data.n_sentences = 10000000000 is out of range"),
        (
            {"model": {"n_layers": 256, "d_model": 16384, "n_heads": 4, "context": 64}},
            r"about 277.0B parameters .*at most 2B",
        ),
        (
            {"model": {"d_ffn": 65536, "context": 2048}, "train": {"batch_size": 4096, "seq_len": 2048}},
            r"^train.batch_size 4096 x train.seq_len 2048 needs about",
        ),
        ({"model": {"d_ffn": -4}}, r"^model.d_ffn = -4 is out of range"),
        ({"train": {"warmup": -1}}, r"^train.warmup = -1 is out of range; allowed: >= 0$"),
        (
            {"train": {"min_lr_ratio": 2}},
            r"^train.min_lr_ratio = 2.0 is out of range; allowed: in \[0.0, 1.0\]$",
        ),
        ({"train": {"betas": [0.9, 1.2]}}, r"^train.betas\[1\] = 1.2 is out of range"),
        ({"train": {"weight_decay": -0.1}}, r"^train.weight_decay = -0.1 is out of range"),
        ({"train": {"keep_checkpoints": 0}}, r"^train.keep_checkpoints = 0 is out of range"),
        ({"data": {"world": {"n_subjects": 0}}}, r"^data.world.n_subjects = 0 is out of range"),
        ({"data": {"tokenizer": {"vocab_size": 0}}}, r"^data.tokenizer.vocab_size = 0 is out of range"),
        (
            {"data": {"val_fraction": 0.0}},
            r"^data.val_fraction = 0.0 is out of range; allowed: in \(0.0, 0.5\)$",
        ),
    ],
)
def test_numeric_fields_out_of_range_are_one_line_errors(data, message):
    with pytest.raises(LegibilityError, match=message) as e:
        parse_run_config(data)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_train_command_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text((CONFIGS / "tiny.yaml").read_text().replace("steps: 50", "steps: 6"))
    assert main(["train", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    final = json.loads(out[: out.rindex("}") + 1])
    assert final["step"] == 6 and "fact_accuracy" in final
    lm = load_model(str(tmp_path / "out" / "model"))
    assert lm.sites.n_neurons == 64
    assert main(["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_add_parser_wires_run():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "c.yaml", "--out", "o"])
    assert args.config == "c.yaml" and args.out == "o" and callable(args.run)


def test_old_dropout_names_load_with_a_warning_that_says_what_to_write():
    with pytest.warns(FutureWarning, match=r"model.builtin_dropout: <p>.*name: ffn_dropout"):
        cfg = parse_run_config({"model": {"dropout": 0.2}})
    assert cfg.model.builtin_dropout == 0.2
    with pytest.raises(LegibilityError, match="give builtin_dropout only"):
        parse_run_config({"model": {"dropout": 0.2, "builtin_dropout": 0.1}})
    with pytest.warns(FutureWarning, match="write 'ffn_dropout'"):
        cfg = parse_run_config({"regularizers": [{"name": "dropout", "p": 0.3}]})
    assert cfg.regularizers == [{"name": "ffn_dropout", "p": 0.3}]  # recorded under the new name


def test_a_run_folder_written_before_the_rename_resumes(tmp_path):
    """A config.json holding model.dropout and the dropout regularizer is the same run as the renamed
    config: the trainer resumes it instead of refusing the folder."""
    import dataclasses
    import warnings

    from train_helpers import tiny_cfg

    from legibility.training.trainer import Trainer

    cfg = tiny_cfg(**{"model.builtin_dropout": 0.1}, regularizers=[{"name": "ffn_dropout", "p": 0.2}])
    old = json.loads(json.dumps(dataclasses.asdict(cfg)))
    old["model"]["dropout"] = old["model"].pop("builtin_dropout")
    old["regularizers"] = [{"name": "dropout", "p": 0.2}]
    (tmp_path / "config.json").write_text(json.dumps(old))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(cfg, tmp_path, progress=False, device="cpu")  # no refusal, no warning
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, builtin_dropout=0.3))
    with pytest.raises(LegibilityError, match=r"model.builtin_dropout: 0.1 -> 0.3"):
        Trainer(other, tmp_path, progress=False, device="cpu")
