"""`legibility finetune`: fact splits, update modes, cost, a whole run on a tiny trained model, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_facts, tiny_lm
from legibility import LegibilityError, load_model
from legibility.facts.types import OBJECT, SUBJECT
from legibility.training.adapters import configure_updates, merge_adapters
from legibility.training.finetune import (
    FinetuneConfig,
    Finetuner,
    parse_finetune_config,
    run_finetune,
    template_split,
)

TEMPLATES = {
    "P36": ("the capital of [X] is [Y] .", "[X] capital city is [Y] .", "the capital city of [X] is [Y]"),
    "P37": ("the language of [X] is [Y] .", "in [X] a city speaks [Y]"),
}


@pytest.fixture(scope="module")
def base(pytestconfig, tmp_path_factory) -> dict:
    """A tiny GPT-2 trained on tiny_facts() saved as a model directory, a PARAREL folder with those facts,
    and text files: everything a finetune config points at."""
    from trained import cached, gpt2_tokenizer

    cache = getattr(pytestconfig, "cache", None)
    root = cache.mkdir("legibility-trained") if cache else tmp_path_factory.mktemp("legibility-trained")
    model, _ = cached("gpt2", root)
    work = tmp_path_factory.mktemp("finetune")
    model.save_pretrained(work / "model")
    gpt2_tokenizer().save_pretrained(work / "model")
    pararel = work / "pararel"
    (pararel / "patterns").mkdir(parents=True)
    (pararel / "facts").mkdir()
    for rel, templates in TEMPLATES.items():
        (pararel / "patterns" / f"{rel}.jsonl").write_text(
            "".join(json.dumps({"pattern": t}) + "\n" for t in templates)
        )
        rows = [{"sub_label": f.subject, "obj_label": f.object} for f in tiny_facts() if f.relation == rel]
        (pararel / "facts" / f"{rel}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sentences = [
        t.replace(SUBJECT, f.subject).replace(OBJECT, f.object)
        for f in tiny_facts()
        for t in TEMPLATES[f.relation]
    ]
    (work / "train.txt").write_text("\n".join(sentences) + "\n")
    (work / "held.txt").write_text("\n".join(reversed(sentences)) + "\n")
    return {
        "model": str(work / "model"),
        "update": "ffn",
        "facts": {
            "relations": ["P36"],
            "held_out_relations": ["P37"],
            "per_relation": 4,
            "data_dir": str(pararel),
        },
        "text": {"train": str(work / "train.txt"), "held_out": str(work / "held.txt"), "cost_batches": 2},
        "train": {
            "steps": 6,
            "batch_size": 2,
            "seq_len": 8,
            "warmup": 1,
            "eval_every": 3,
            "checkpoint_every": 2,
        },
    }


def _cfg(base: dict, **over) -> FinetuneConfig:
    data = json.loads(json.dumps(base))
    for key, value in over.items():
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    return parse_finetune_config(data)


def test_template_split_holds_out_a_share_of_each_relation():
    facts = tiny_facts()
    split = template_split(facts, 0.5, seed=0)
    assert sorted(split) == ["P36", "P37"]
    assert len(split["P36"]) == 1 and len(split["P37"]) == 1  # round(1.5) = 2 of 3 held out; 1 of 2
    assert template_split(facts, 0.5, seed=0) == split


def test_config_validation_says_what_is_wrong(base):
    with pytest.raises(LegibilityError, match="P36 cannot be both an objective and a held-out relation"):
        _cfg(base, **{"facts.held_out_relations": ["P36"]})
    with pytest.raises(LegibilityError, match=r"config.update: 'half' is not allowed"):
        _cfg(base, update="half")
    with pytest.raises(LegibilityError, match=r"train.lr = -1.0 is out of range"):
        _cfg(base, **{"train.lr": -1.0})
    assert _cfg(base, **{"train.steps": 0}).train.steps == 0  # scores the original model
    assert _cfg(base).train.weight_decay == 0.0  # finetune defaults, then the config's train keys


def test_fact_groups_are_disjoint_and_objectives_see_only_their_facts(base, tmp_path):
    trainer = Finetuner(_cfg(base), tmp_path, progress=False, device="cpu")
    data = trainer.data
    held, trained, rel = (
        set(f.id for f in data.group(s)) for s in ("", ".trained_facts", ".heldout_relations")
    )
    assert held and trained and rel and not (held & trained or held & rel or trained & rel)
    assert {f.relation for f in data.group(".heldout_relations")} == {"P37"}
    objective = {f.id for f in trainer.corpus.objective_facts}
    assert objective == trained
    usable = set(data.objective_templates["P36"])
    for f in trainer.corpus.objective_facts:  # only the objective templates
        assert len(f.prompts) == len(usable)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_update_modes_train_what_they_say_and_lora_merges_exactly(family):
    lm = tiny_lm(family)
    model = lm.model
    total = sum(p.numel() for p in model.parameters())
    assert configure_updates(model, "full") == total
    n_ffn = configure_updates(model, "ffn", layers=[1])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert n_ffn < total and trainable and all(".1.mlp." in n for n in trainable)
    ids = torch.randint(5, model.config.vocab_size, (2, 6))
    before = model(input_ids=ids).logits.detach()
    configure_updates(model, "lora", rank=2)
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-6)  # B = 0: the same function
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".A", ".B")) for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".B"):
                p.normal_()
    tuned = model(input_ids=ids).logits.detach()
    assert not torch.allclose(tuned, before, atol=1e-3)
    merge_adapters(model)
    assert not any(n.endswith((".A", ".B")) for n, _ in model.named_parameters())
    assert torch.allclose(model(input_ids=ids).logits, tuned, atol=1e-5)


def test_kl_against_a_reference(base, tmp_path):
    """The KL(original || tuned) per token equals torch's kl_div on the same logits."""
    trainer = Finetuner(_cfg(base), tmp_path, progress=False, device="cpu")
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batches = trainer.val[:1]
    got = trainer._kl(batches)
    x = batches[0][:, :-1]
    with torch.no_grad():
        logp = torch.log_softmax(trainer.original().model(input_ids=x).logits, -1).reshape(-1, 35)
        logq = torch.log_softmax(trainer.model(input_ids=x).logits, -1).reshape(-1, 35)
    want = float(torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="batchmean"))
    assert got == pytest.approx(want, rel=1e-5) and got > 1e-4


@pytest.mark.slow
def test_a_finetune_run_costs_scores_and_saves_a_loadable_model(base, tmp_path):
    from transformers import AutoModelForCausalLM

    from legibility.training.experiment import ScoreConfig

    zero = run_finetune(
        _cfg(base, **{"train.steps": 0}), tmp_path / "zero", ScoreConfig(facts=4, ig_steps=4), "cpu", False
    )
    assert zero["train"]["cost_nats"] == 0.0 and zero["train"]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert zero["train"]["facts_lost"] == 0.0 and zero["train"]["facts_lost.heldout_relations"] == 0.0
    cfg = _cfg(base, regularizers=[{"name": "specific_suppressability", "coef": 1.0, "facts_per_step": 2}])
    result = run_finetune(cfg, tmp_path / "run", ScoreConfig(facts=4, ig_steps=4), "cpu", False)
    train = result["train"]
    assert train["step"] == 6 and train["kl"] > 0 and "fact_accuracy.heldout_relations.original" in train
    assert {"suppressability", "suppressability.trained_facts", "suppressability.heldout_relations"} <= set(
        result["metrics"]
    )
    assert json.loads((tmp_path / "run" / "result.json").read_text())["train"]["kl"] == train["kl"]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    lm = load_model(str(tmp_path / "run" / "model"))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(hf(input_ids=ids).logits, lm.model(input_ids=ids).logits)
    again = run_finetune(cfg, tmp_path / "run", ScoreConfig(facts=4, ig_steps=4), "cpu", False)
    assert again.pop("seconds")["train"] > 0 and result.pop("seconds")["score"] > 0  # this call's clocks
    same = json.dumps(again, sort_keys=True) == json.dumps(result, sort_keys=True)  # NaN-safe
    assert same  # a rerun of a finished run reads everything back
    with pytest.raises(LegibilityError, match="holds a run with a different config"):
        run_finetune(_cfg(base, lora_rank=3), tmp_path / "run", None, "cpu", False)


@pytest.mark.slow
def test_finetune_killed_mid_run_resumes_to_the_same_model(base, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cfg = {**base, "regularizers": [{"name": "specific_suppressability", "coef": 1.0, "facts_per_step": 2}]}
    cfg["train"] = {**base["train"], "steps": 12}
    path = tmp_path / "ft.yaml"
    path.write_text(json.dumps(cfg))

    def cmd(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "legibility.cli",
            "finetune",
            str(path),
            "--out",
            str(out),
            "--quiet",
            "--facts",
            "2",
            "--ig-steps",
            "2",
            "--device",
            "cpu",
        ]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list((killed / "checkpoints").glob("step-00000[4-9]")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists()
    for out in (killed, tmp_path / "whole"):
        done = subprocess.run(cmd(out), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    a = (killed / "model" / "model.safetensors").read_bytes()
    b = (tmp_path / "whole" / "model" / "model.safetensors").read_bytes()
    assert a == b
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (killed, tmp_path / "whole"))
    assert json.dumps(ra, sort_keys=True) == json.dumps(rb, sort_keys=True)  # NaN-safe equality


def test_finetune_sweeps_validate_trials_as_finetune_configs(base):
    from legibility.sweeps import parse_sweep

    sweep = {"kind": "finetune", "base": base, "variants": {"original": {"train.steps": 0}, "control": {}}}
    cfg = parse_sweep(sweep)
    assert [t.kind for t in cfg.trials] == ["finetune", "finetune"] and cfg.kind == "finetune"
    assert cfg.trials[0].run_config["train"]["steps"] == 0
    with pytest.raises(LegibilityError, match="variant 'bad'.*config.update: 'half' is not allowed"):
        parse_sweep({**sweep, "variants": {"bad": {"update": "half"}}})
    with pytest.raises(
        LegibilityError, match="sweep kind 'tune' is not allowed; choose one of train, finetune"
    ):
        parse_sweep({**sweep, "kind": "tune"})


@pytest.mark.slow
def test_a_finetune_sweep_records_costs_and_reports_the_frontier(base, tmp_path):
    from legibility.report.html import write_report
    from legibility.sweeps import ResultsStore, parse_sweep, run_sweep

    cfg = parse_sweep(
        {
            "kind": "finetune",
            "base": {**base, "train": {**base["train"], "steps": 2}},
            "variants": {"original": {"train.steps": 0}, "control": {}},
            "score": {"facts": 4, "ig_steps": 4},
        }
    )
    assert run_sweep(cfg, tmp_path, progress=False) == {"done": 2}
    with ResultsStore(tmp_path / "results.duckdb", read_only=True) as store:
        cols, rows = store.query(
            "SELECT variant, cost_nats, kl, facts_lost FROM trials_flat ORDER BY variant"
        )
    assert [r[0] for r in rows] == ["control", "original"]
    assert rows[1][1:] == (0.0, pytest.approx(0.0, abs=1e-7), 0.0) and rows[0][2] > 0
    assert list((tmp_path / "cache").glob("known-*.json"))  # the trials shared one known-fact scan
    write_report(tmp_path)
    assert (tmp_path / "finetune_frontier.png").stat().st_size > 0


def test_the_example_finetune_configs_validate(monkeypatch):
    from legibility.sweeps.config import load_sweep
    from legibility.training.finetune import load_finetune_config

    root = Path(__file__).resolve().parents[2] / "configs"
    text = root.parent / "data" / "wikitext2"  # kept in the repo
    monkeypatch.chdir(
        root.parent
    )  # the configs' data paths are relative to the repo root, where they are run
    assert (text / "wiki_valid.txt").is_file() and (text / "wiki_test.txt").is_file()
    for path in sorted((root / "finetune").glob("*.yaml")):
        assert load_finetune_config(path).model == "smollm2-135m"
    sweep = load_sweep(root / "sweeps" / "finetune.yaml")
    assert sweep.kind == "finetune" and len(sweep.trials) >= 7
    assert {t.variant for t in sweep.trials} >= {"original", "control", "ffn_dropout", "decorrelation"}
