"""docs/extending.md, checked: add a small attribution method, model family (trainable too), scorecard metric,
regularizer and executor, each through its one registration, and see every consumer pick it up."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from helpers import tiny_facts, tiny_lm
from legibility import AttributionConfig, attribute, render
from legibility.metrics.effects import EffectConfig
from legibility.run import KnownConfig, RunSettings, run

LOOSE = KnownConfig(top_k=1000, min_share=0.0)


def _settings(**kw) -> RunSettings:
    return RunSettings(
        attribution=AttributionConfig(steps=2), known=LOOSE, effects=EffectConfig(controls=1), **kw
    )


def test_an_attribution_method_is_one_registration(tmp_path):
    from legibility.attribution import METHODS
    from legibility.attribution.base import MethodInfo
    from legibility.forward import answer_activations

    def activation_size(lm, queries, config):  # a (bad) method: the activation's size at the answer
        return answer_activations(lm, list(queries)).abs()  # [queries, layers, neurons]

    METHODS.register("test-activation-size")(MethodInfo(activation_size, exact=False, description="|a|"))
    out = tmp_path / "run"
    try:
        lm = tiny_lm("llama")
        q = render(lm, tiny_facts()[0]).prompts[0].queries[0]
        assert attribute(lm, [q], "test-activation-size").shape == (1, lm.sites.n_layers, lm.sites.n_neurons)
        result = run(_settings(method="test-activation-size"), out, facts=tiny_facts(), lm=lm, progress=False)
        assert result.neuron_records and "specific_suppressability" in result.scorecard["metrics"]
    finally:
        METHODS.unregister("test-activation-size")


def test_a_model_family_is_a_table_row_and_a_trainable_one_a_config_builder(tmp_path):
    import transformers as tr

    from legibility.attribution.engine import tail_for
    from legibility.models.sites import ARCHITECTURES, FAMILIES, register_family, unregister_family
    from legibility.training.config import ModelConfig
    from legibility.training.model import TRAINABLE, build_model, ffn_weights
    from legibility.training.regularizers.locality import permute_neurons

    class ToyConfig(tr.LlamaConfig):
        model_type = "legibility_toy"

    class ToyForCausalLM(tr.LlamaForCausalLM):
        config_class = ToyConfig

    tr.AutoConfig.register("legibility_toy", ToyConfig, exist_ok=True)
    tr.AutoModelForCausalLM.register(ToyConfig, ToyForCausalLM, exist_ok=True)
    register_family("legibility_toy", FAMILIES["llama"])  # the sites, the engine, training's FFN access

    def toy(cfg, vocab_size, pad_id, eos_id):
        return ToyConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ffn,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_heads,
            max_position_embeddings=cfg.context,
        )

    TRAINABLE.register("legibility_toy")(toy)
    try:
        ref = tiny_lm("llama")
        model = build_model(
            ModelConfig(family="legibility_toy", d_model=32, d_ffn=48, n_heads=4), ref.model.config.vocab_size
        )
        assert type(model) is ToyForCausalLM
        from legibility import load_model

        lm = load_model(model.eval(), ref.tokenizer)
        assert lm.sites.n_neurons == 48 and tail_for(lm) is FAMILIES["legibility_toy"]
        q = render(lm, tiny_facts()[0]).prompts[0].queries[0]
        cfg = AttributionConfig(steps=3)
        torch.testing.assert_close(attribute(lm, [q], "ig", cfg), attribute(lm, [q], "ig-reference", cfg))
        # training reads and permutes its FFN neurons from the table: a permutation keeps the function
        ins, out = ffn_weights(model, 0)
        assert [w.shape for w in ins] == [(48, 32), (48, 32)] and out.shape == (32, 48)
        ids = torch.tensor([q.input_ids])
        with torch.no_grad():
            before = model(input_ids=ids).logits
            permute_neurons(model, 0, torch.randperm(48, generator=torch.Generator().manual_seed(0)))
            torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
    finally:
        TRAINABLE.unregister("legibility_toy")
        unregister_family("legibility_toy")
    assert "legibility_toy" not in FAMILIES and "legibility_toy" not in ARCHITECTURES


def test_a_scorecard_metric_is_one_registration_and_every_view_reads_it():
    from legibility.metrics.scorecard import fact_score, score_metrics
    from legibility.metrics.stats import mean_estimate
    from legibility.metrics.table import METRICS, ScoreInputs, names, register_metric
    from legibility.sweeps.results import view_sql

    def own_drop_squared(inp: ScoreInputs):
        if not inp.effects:
            return None
        return mean_estimate([fact_score(e).own ** 2 for e in inp.effects], seed=inp.seed)

    register_metric(
        "test.own_drop_squared",
        label="own drop squared",
        direction="higher",
        definition="The own drop, squared.",
        views=("card", "column"),
        compute=own_drop_squared,
    )
    try:
        assert "test.own_drop_squared" in names("card")
        assert "AS test_own_drop_squared" in view_sql()
        e = {
            "fact_id": "a",
            "relation": "P1",
            "before": 0.5,
            "own": {op: {"kn": 0.25, "random": 0.5, "activation": 0.5} for op in ("suppress", "amplify")},
            "controls": {},
        }
        rec = {"fact_id": "a", "relation": "P1", "neurons": [[0, 1]], "n_prompts": 2}
        assert score_metrics([rec], [e])["test.own_drop_squared"].value == pytest.approx(0.25)
    finally:
        METRICS.unregister("test.own_drop_squared")


def test_a_regularizer_is_one_registration(tmp_path):
    from legibility.facts.synthetic import WorldConfig
    from legibility.training.config import DataConfig, ModelConfig, RunConfig, TokenizerConfig, TrainConfig
    from legibility.training.regularizers.base import REGULARIZERS, Regularizer, RegularizerConfig, register
    from legibility.training.trainer import train

    @dataclasses.dataclass(frozen=True)
    class SquareConfig(RegularizerConfig):
        """Mean square of the FFN activations."""

    @register("test_square", SquareConfig, "mean square of FFN activations")
    class Square(Regularizer[SquareConfig]):
        needs_activations = True

        def penalty(self, ctx):
            return torch.stack([a.pow(2).mean() for a in ctx.activations.values()]).mean()

    try:
        cfg = RunConfig(
            ModelConfig(n_layers=1, d_model=16, d_ffn=32, n_heads=2, context=16),
            DataConfig(
                world=WorldConfig(n_subjects=10, n_relations=2, n_objects=4),
                n_sentences=300,
                tokenizer=TokenizerConfig(vocab_size=200),
            ),  # fmt: skip
            TrainConfig(
                steps=6, batch_size=4, seq_len=12, warmup=1, eval_every=6, checkpoint_every=6, log_every=2
            ),
            [{"name": "test_square", "coef": 0.1}],
        )
        train(cfg, tmp_path / "run", progress=False)
        lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        logged = [x["reg.test_square"] for x in lines if "reg.test_square" in x]
        assert logged and all(np.isfinite(v) and v > 0 for v in logged)
    finally:
        REGULARIZERS.unregister("test_square")


def test_an_executor_is_one_registration_for_facts_and_trials(tmp_path):
    from legibility.sharding import EXECUTORS, ExecutorConfig
    from legibility.sweeps import parse_sweep, run_sweep
    from legibility.sweeps import run as sweep_run

    seen = []

    def backwards(setup, items, callbacks, cfg):  # a serial executor that works from the end
        work = setup(cfg.device)
        for item in reversed(list(items)):
            seen.append(callbacks.key(item))
            callbacks.started(item)
            callbacks.done(item, work(item))

    EXECUTORS.register("test-backwards")(backwards)
    try:
        facts = tiny_facts()
        shard = ExecutorConfig("test-backwards")
        res = run(
            _settings(), tmp_path / "run", facts=facts, lm=tiny_lm("llama"), progress=False, shard=shard
        )
        assert [r["fact_id"] for r in res.neuron_records] == [r.fact.id for r in res.facts]  # fact order kept
        assert len(seen) >= len(res.facts)

        def fake_trial(run_config, trial_dir, score, device=None, kind="train"):
            return {"train": {"step": 1}, "metrics": {}, "known_facts": 0, "train_s": 0.0, "score_s": 0.0}

        sweep_run.run_trial, real = fake_trial, sweep_run.run_trial
        try:
            data = {"name": "x", "base": {"train": {"steps": 2}}, "variants": {"a": {}}, "seeds": [0, 1]}
            cfg = parse_sweep({**data, "executor": {"name": "test-backwards"}})  # a sweep file may name it
            assert run_sweep(cfg, tmp_path / "sweep", progress=False) == {"done": 2}
        finally:
            sweep_run.run_trial = real
    finally:
        EXECUTORS.unregister("test-backwards")
