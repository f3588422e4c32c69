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
