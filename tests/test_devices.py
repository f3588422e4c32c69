"""Every tensor the package creates lives on the model's device, checked on CPU without a GPU.

Two independent checks:

* :class:`HostTensorGuard` intercepts every tensor factory (torch.tensor, zeros, arange, ...) and records
  the calls made directly by package code without an explicit ``device=``: on a GPU such a tensor lands on
  the CPU and mixes with the model's tensors (the bug of issue 13). Factories called by transformers or
  torch internals are not ours and are not counted; a factory with a ``generator=`` takes its device from
  the generator (host-side sampling, moved explicitly).
* The model runs on the CPU while the *default* device is ``meta``: a bare factory anywhere on the path
  then makes a meta tensor, and mixing it with the model's CPU tensors raises, as a CPU tensor would next
  to a CUDA model.

Both are shown to catch a planted regression: the old ``forward.make_batch`` (bare factories), compiled
under the package's own file name and patched in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import legibility
from helpers import tiny_facts, tiny_lm
from legibility.attribution import METHODS, AttributionConfig, attribute, attribute_prompts
from legibility.devices import parse_dtype, resolve_device
from legibility.errors import LegibilityError
from legibility.facts.render import render
from legibility.models import sites

PACKAGE = str(Path(legibility.__file__).resolve().parent)
FACTORIES = {
    torch.tensor,
    torch.as_tensor,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.arange,
    torch.linspace,
    torch.logspace,
    torch.eye,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
}
CFG = AttributionConfig(steps=3, batch_size=8, max_rows=16)


class HostTensorGuard(TorchFunctionMode):
    """Records package-code tensor factories called without an explicit device."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None and kwargs.get("generator") is None:
            frame = sys._getframe(1)
            while frame is not None and f"{Path('torch')}/" in frame.f_code.co_filename.replace("\\", "/"):
                frame = frame.f_back  # torch's own Python wrappers
            if frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(PACKAGE):
                where = Path(frame.f_code.co_filename).resolve().relative_to(PACKAGE)
                self.violations.append(f"{where}:{frame.f_lineno} torch.{func.__name__}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_model_device_only() -> Iterator[HostTensorGuard]:
    """Fail if package code creates a tensor without saying where (the model's device)."""
    guard = HostTensorGuard()
    with guard:
        yield guard
    assert not guard.violations, "tensors created without device=: " + ", ".join(
        sorted(set(guard.violations))
    )


@contextlib.contextmanager
def default_device_meta() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def queries(lm, n: int = 3):
    """First queries of the tiny facts' prompts, with the relation's other objects (contrastive IG needs
    them), other subjects' prompts (attribution patching's baselines) and the subject position (subject-token
    IG needs it) filled in by render/with_contrast/with_baselines."""
    from legibility.attribution.contrastive import with_contrast
    from legibility.attribution.patching import with_baselines

    rendered = with_contrast(with_baselines(lm, [render(lm, f) for f in tiny_facts()], 2))
    return [p.queries[0] for r in rendered[:2] for p in r.prompts][:n]


# ----------------------------------------------------------------------------- device and dtype parsing


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(None) is torch.float32
    with pytest.raises(LegibilityError, match="unknown dtype"):
        parse_dtype("float8")
    with pytest.raises(LegibilityError, match="unknown device|unsupported device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LegibilityError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_load_model_places_and_records_device_and_dtype():
    lm = tiny_lm("llama")
    assert lm.device == torch.device("cpu") and lm.dtype is torch.float32 and lm.precision == "float32"
    from legibility import load_model

    half = load_model(lm.model, lm.tokenizer, device="cpu", dtype="bfloat16")
    assert half.dtype is torch.bfloat16 and half.precision == "bfloat16"


def test_load_model_by_path_loads_in_the_requested_dtype(tmp_path):
    lm = tiny_lm("gpt2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    from legibility import load_model

    loaded = load_model(str(tmp_path), device="cpu", dtype="bfloat16")
    assert loaded.dtype is torch.bfloat16 and loaded.device == torch.device("cpu")


# ----------------------------------------------------------------------------- the regression test


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_attribution_method_creates_tensors_on_the_model_device(family, method):
    lm = tiny_lm(family)
    qs = queries(lm)
    with on_model_device_only():
        attribute(lm, qs, method, CFG)
    with default_device_meta():
        scores = attribute(lm, qs, method, CFG)
    assert scores.device == lm.device and scores.shape == (3, lm.sites.n_layers, lm.sites.n_neurons)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_batched_ablations_and_the_known_check_stay_on_the_model_device(family):
    from legibility.attribution.ablation import suppressed_probs
    from legibility.pipeline import FactGroup, KnownConfig, KnownStage

    lm = tiny_lm(family)
    qs = queries(lm)
    sets = [[], [(0, 1), (1, 2)]]
    rows = [(q, s) for q in range(len(qs)) for s in range(2)]
    group = FactGroup.of([render(lm, f) for f in tiny_facts()[:3]])
    for guard in (on_model_device_only, default_device_meta):
        with guard():
            probs = suppressed_probs(lm, qs, sets, rows)
            KnownStage(KnownConfig(top_k=5))(lm)(group)
        assert probs.device == lm.device


def test_generic_engine_fallback_and_prompts_api(monkeypatch):

    lm = tiny_lm("qwen2")
    monkeypatch.setitem(sites.FAMILIES, "qwen2", dataclasses.replace(sites.FAMILIES["qwen2"], engine=False))
    prompts = render(lm, tiny_facts()[0]).prompts
    with on_model_device_only(), torch.no_grad():
        attribute_prompts(lm, prompts, "ig", CFG)
    with default_device_meta():
        attribute_prompts(lm, prompts, "ig", CFG)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_interventions_forward_and_effects(family):
    from legibility.forward import answer_activations, predict
    from legibility.interventions import Intervention
    from legibility.metrics.effects import EffectConfig, EffectRunner, prompt_probs

    lm = tiny_lm(family)
    rendered = [render(lm, f) for f in tiny_facts()]
    qs = queries(lm)
    inputs = lm.tokenizer(["the capital of germany is", "the capital is"], return_tensors="pt", padding=True)
    if family == "bert":
        inputs = lm.tokenizer(
            ["the capital of [MASK] is", "[MASK] capital"], return_tensors="pt", padding=True
        )
    with on_model_device_only(), torch.no_grad():
        predict(lm, qs)
        answer_activations(lm, qs)
        for op, value in (("suppress", None), ("amplify", None), ("scale", 0.5), ("set", 1.0)):
            for where in ("answer", "all"):
                with Intervention({1: (2, 3)}, op, value, where).apply(lm):  # type: ignore[arg-type]
                    lm.model(**inputs)
        prompt_probs(lm, rendered[0].prompts, Intervention({0: (1,)}, "suppress"))
        EffectRunner(lm, rendered, EffectConfig(controls=1)).fact_effects(rendered[0], [(0, 1), (2, 5)])


def test_independent_metrics():
    from legibility.metrics.circuit import CircuitConfig
    from legibility.metrics.electrode import ElectrodeConfig
    from legibility.metrics.independent import MetricContext, compute_metrics
    from legibility.metrics.probes import ProbeConfig

    lm = tiny_lm("llama")
    facts = [render(lm, f) for f in tiny_facts()]
    records = [
        {"fact_id": r.fact.id, "relation": r.fact.relation, "neurons": [[1, i % 3], [2, 7]], "n_prompts": 3}
        for i, r in enumerate(facts)
    ]
    configs = {
        "circuit_size": CircuitConfig(cap=4, max_facts=2),
        "electrode": ElectrodeConfig(block=16, max_electrodes=2, candidates=2, random_draws=1, max_facts=2),
        "probe": ProbeConfig(folds=2),
    }
    ctx = MetricContext(lm=lm, facts=facts, neuron_records=records, configs=configs)
    with on_model_device_only():
        compute_metrics(["all"], ctx)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_editing(family):
    from legibility.editing import EditCase, EditEvaluator, EraseConfig, relation_erase, value_edit
    from legibility.editing.evaluate import evaluate_erase, perplexity
    from legibility.editing.memory import neuron_card

    lm = tiny_lm(family)
    rendered = [render(lm, f) for f in tiny_facts()]
    text = "the capital of germany is berlin .\nthe city is located in italy ."
    with on_model_device_only():
        perplexity(lm, text)
        with value_edit(lm, [(0, 1), (1, 2)], 5, 6).applied(lm):
            perplexity(lm, text)
        with relation_erase(lm, [[(0, 1)], [(0, 1), (1, 2)]], EraseConfig(top=1)).applied(lm):
            pass
        case = EditCase(rendered[0], "paris", [(0, 1), (1, 2)], rendered[1].prompts, rendered[2].prompts)
        EditEvaluator(lm, [case], rendered[4:], text=text).run()
        evaluate_erase(lm, [[(0, 1), (1, 2)], [(0, 1)]], rendered[:4], [], rendered[4:], text=text)
        neuron_card(lm, 1, 5, [p for r in rendered for p in r.prompts])


@pytest.mark.parametrize("method", ["gxa", "ig"])
def test_training_suppressability_objective(method):
    from legibility.forward import make_batch
    from legibility.training.regularizers.suppressability import SuppressabilityConfig, suppressability_loss

    lm = tiny_lm("llama")
    cfg = SuppressabilityConfig(method=method, ig_steps=2, k=3, temperature=0.3, control=True)
    with on_model_device_only():
        batch = make_batch(lm, queries(lm))
        loss = suppressability_loss(lm, batch, cfg, torch.Generator().manual_seed(0))
        loss.backward()
    assert loss.device == lm.device


# ----------------------------------------------------------------------------- the test can fail

OLD_MAKE_BATCH = """
def make_batch(lm, queries):
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    width = max(len(q.input_ids) for q in queries)
    ids = torch.full((len(queries), width), pad, dtype=torch.long)
    mask = torch.zeros((len(queries), width), dtype=torch.long)
    for i, q in enumerate(queries):
        ids[i, : len(q.input_ids)] = torch.tensor(q.input_ids)
        mask[i, : len(q.input_ids)] = 1
    positions = torch.tensor([q.answer_pos for q in queries], dtype=torch.long)
    targets = torch.tensor([q.target_id for q in queries], dtype=torch.long)
    return Batch(ids, mask, positions, targets)
"""


@pytest.fixture
def planted_regression(monkeypatch):
    """forward.make_batch as it was before issue 13, compiled as if it were the package's own code."""
    import legibility.forward as forward

    namespace = {"torch": torch, "Batch": forward.Batch}
    exec(compile(textwrap.dedent(OLD_MAKE_BATCH), inspect.getfile(forward), "exec"), namespace)  # noqa: S102
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("legibility") and getattr(module, "make_batch", None):
            monkeypatch.setattr(module, "make_batch", namespace["make_batch"])


def test_guard_catches_a_planted_bare_factory(planted_regression):
    lm = tiny_lm("llama")
    with (
        pytest.raises(AssertionError, match=r"forward\.py:\d+ torch\.(full|tensor|zeros)"),
        on_model_device_only(),
    ):
        attribute(lm, queries(lm), "ig-reference", CFG)


def test_meta_default_device_catches_a_planted_bare_factory(planted_regression):
    lm = tiny_lm("llama")
    # ig-reference builds its batches with make_batch (grad-x-act now runs on the engine's own batches)
    with pytest.raises((RuntimeError, NotImplementedError)), default_device_meta():
        attribute(lm, queries(lm), "ig-reference", dataclasses.replace(CFG))


# ----------------------------------------------------------------------------- on a GPU, when there is one


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_cuda_scores_equal_cpu_scores(family):
    from legibility import load_model

    cpu = tiny_lm(family)
    qs = queries(cpu)
    expected = {m: attribute(cpu, qs, m, CFG) for m in ("ig", "ig-reference", "grad-x-act")}
    gpu = load_model(cpu.model, cpu.tokenizer, device="cuda")
    assert gpu.device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    for method, ref in expected.items():
        got = attribute(gpu, qs, method, CFG)
        assert got.device.type == "cuda"
        assert (got.cpu() - ref).abs().max() <= 1e-5 * ref.abs().max(), method
    for method in METHODS:
        attribute(gpu, qs, method, CFG)


# ----------------------------------------------------------------------------- training and sweeps

# every regularizer, so each one's tensors are checked: the fact objectives (IG meta-gradients), dropout's
# explicit penalty with gradient noise, decorrelation, sparsity, magnitude masking and neuron swaps
TRAIN_REGULARIZERS = [
    {"name": "ffn_dropout", "p": 0.1},
    {"name": "explicit_dropout", "coef": 0.1, "grad_noise": 1e-3},
    {"name": "decorrelation", "coef": 0.1},
    {"name": "activation_sparsity", "form": "topk", "k": 4, "coef": 0.1},
    {"name": "sparse_connections", "density": 0.5, "coef": 0.1},
    {"name": "locality", "coef": 0.1, "swap_every": 2},
    {
        "name": "suppressability",
        "coef": 0.1,
        "facts_per_step": 2,
        "method": "ig",
        "ig_steps": 2,
        "control": True,
    },
    {"name": "specific_suppressability", "coef": 0.1, "facts_per_step": 2, "control": True},
]


def _train_cfg():
    sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
    from train_helpers import tiny_cfg

    # 4 steps with an evaluation, a log line and a checkpoint every 2: every code path of fit() runs twice
    return tiny_cfg(
        steps=4,
        eval_every=2,
        checkpoint_every=2,
        log_every=2,
        regularizers=TRAIN_REGULARIZERS,
        **{"model.builtin_dropout": 0.1},
    )


@contextlib.contextmanager
def optimizer_on_host(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """torch's AdamW keeps its step count on the host by design (a bare torch.tensor in torch itself): run
    its step with the CPU as default device, everything else of the training step stays under the meta
    default."""
    step = optimizer.step

    def on_host(*args, **kwargs):
        with torch.device("cpu"):
            return step(*args, **kwargs)

    optimizer.step = on_host  # type: ignore[method-assign]
    try:
        yield
    finally:
        del optimizer.step


@pytest.mark.slow
def test_training_with_every_regularizer_creates_tensors_on_the_model_device(tmp_path):
    from legibility.training.trainer import Trainer

    cfg = _train_cfg()
    with on_model_device_only():
        trainer = Trainer(cfg, tmp_path / "guard", progress=False, eval_facts=8, device="cpu")
        final = trainer.fit()
    assert final["step"] == 4 and final["device"] == "cpu"
    assert all(f"reg.{r['name']}" in trainer.train_step(4) for r in TRAIN_REGULARIZERS[1:])
    assert "fact_accuracy" in final and "text_val_loss" not in final
    record = json.loads((tmp_path / "guard" / "model" / "final.json").read_text())
    assert record["device"] == "cpu" and "devices" not in record

    with default_device_meta():
        trainer = Trainer(cfg, tmp_path / "meta", progress=False, eval_facts=8, device="cpu")
        with optimizer_on_host(trainer.optimizer):
            meta_final = trainer.fit()
    assert all(p.device.type == "cpu" for p in trainer.model.parameters())
    assert meta_final == final  # the same run: nothing on the path depended on the default device


def test_guard_catches_a_bare_factory_in_the_training_step(tmp_path, monkeypatch):
    """The guard sees package code of the training stack, not only the engine: a bare arange planted in
    the corpus' batch windows is reported with its file and line."""
    from legibility.training import corpus

    sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
    from train_helpers import tiny_cfg

    source = "def _windows(ids, starts, seq_len):\n    return ids[starts[:, None] + torch.arange(seq_len + 1)[None, :]]\n"
    namespace = {"torch": torch}
    exec(compile(source, inspect.getfile(corpus), "exec"), namespace)  # noqa: S102
    monkeypatch.setattr(corpus, "_windows", namespace["_windows"])
    from legibility.training.trainer import Trainer

    trainer = Trainer(tiny_cfg(steps=1), tmp_path, progress=False, eval_facts=2, device="cpu")
    with pytest.raises(AssertionError, match=r"corpus\.py:\d+ torch\.arange"), on_model_device_only():
        trainer.train_step(0)


@pytest.mark.slow
def test_train_on_cpu_equals_the_default_run_bit_for_bit(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
    from train_helpers import tiny_cfg

    from legibility.training.trainer import train

    if torch.cuda.is_available():
        pytest.skip("the default device is CUDA here")
    cfg = tiny_cfg(steps=6, eval_every=3, checkpoint_every=3, regularizers=[{"name": "explicit_dropout"}])
    default = train(cfg, tmp_path / "default", progress=False)
    cpu = train(cfg, tmp_path / "cpu", progress=False, device="cpu")
    assert default == cpu and cpu["device"] == "cpu"
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "default" / "model" / name).read_bytes() == (
            tmp_path / "cpu" / "model" / name
        ).read_bytes()
    # the device is an execution setting: the run's config (what a resume must match) does not name it
    assert "device" not in (tmp_path / "cpu" / "config.json").read_text()


def test_checkpoint_rng_plumbing_saves_and_restores_the_accelerator_generator(monkeypatch):
    """On CUDA the checkpoint carries the device generator (dropout draws from it); checked without a GPU by
    standing in for torch.cuda's generator functions. A CPU run stores the CPU generator only."""
    from legibility.training.checkpoint import rng_states, set_rng_states

    cuda_state = torch.arange(16, dtype=torch.uint8, device="cpu")
    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_state.clone())
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda s, device="cuda": restored.update(state=s, device=device)
    )
    cpu = rng_states(torch.device("cpu"))
    assert set(cpu) == {"torch"}
    gpu = rng_states(torch.device("cuda:1"))
    assert set(gpu) == {"torch", "cuda"} and torch.equal(gpu["cuda"], cuda_state)
    set_rng_states(
        cpu, torch.device("cuda:1")
    )  # checkpointed on the CPU, resumed on a GPU: nothing to restore
    assert not restored
    set_rng_states(gpu, torch.device("cpu"))  # the reverse: the GPU's state is not used
    assert not restored
    set_rng_states(gpu, torch.device("cuda:1"))
    assert torch.equal(restored["state"], cuda_state) and restored["device"] == torch.device("cuda:1")
    before = torch.rand(3, device="cpu")
    set_rng_states(cpu, torch.device("cpu"))
    assert torch.equal(torch.rand(3, device="cpu"), before)  # the CPU generator is restored


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_unknown_device_is_a_one_line_error(tmp_path, capsys, command):
    from legibility.cli import main

    assert main([command, str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "unknown device 'tpu'" in err[-1]  # usage line + the error
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_device_fails_before_any_work(tmp_path, capsys):
    from legibility.cli import main
    from legibility.training.trainer import Trainer

    sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
    from train_helpers import tiny_cfg

    with pytest.raises(LegibilityError, match="CUDA is not available"):
        Trainer(tiny_cfg(), tmp_path / "run", progress=False, device="cuda")
    assert not (tmp_path / "run" / "config.json").exists()
    sweep = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "tiny.yaml"
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "s"), "--device", "cuda", "--no-progress"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "s" / "results.duckdb").exists()


def test_device_is_not_part_of_trial_ids():
    from legibility.sweeps import parse_sweep

    sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
    data = {"name": "d", "base": {"train": {"steps": 2}}, "variants": {"a": {}}, "seeds": [0, 1]}
    plain = parse_sweep(dict(data))
    on_gpu = parse_sweep({**data, "executor": {"device": "cuda:1"}})
    assert on_gpu.executor.device == "cuda:1" and plain.executor.device is None
    assert [t.id for t in plain.trials] == [t.id for t in on_gpu.trials]
    with pytest.raises(LegibilityError, match="executor.device: unknown device 'tpu'"):
        parse_sweep({**data, "executor": {"device": "tpu"}})


def test_sweep_passes_its_device_to_every_trial(tmp_path, monkeypatch):
    """`--device` reaches train and scoring through the executor; the store records where each trial ran."""
    from legibility.sweeps import ResultsStore, parse_sweep, run, run_sweep

    seen = []

    def fake_trial(run_config, trial_dir, score, device=None, kind="train"):
        seen.append(device)
        return {
            "train": {"step": 1, "device": device},
            "metrics": {},
            "known_facts": 0,
            "train_s": 0.0,
            "score_s": 0.0,
        }

    monkeypatch.setattr(run, "run_trial", fake_trial)
    data = {"name": "d", "base": {"train": {"steps": 2}}, "variants": {"a": {}}, "seeds": [0, 1]}
    cfg = parse_sweep({**data, "executor": {"device": "cpu"}})
    assert run_sweep(cfg, tmp_path, progress=False) == {"done": 2}
    assert seen == ["cpu", "cpu"]
    with ResultsStore(tmp_path / "results.duckdb") as store:
        assert [r["train"]["device"] for r in store.rows()] == ["cpu", "cpu"]


@pytest.mark.slow
def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path):
    """A run checkpointed on cuda:0 (its state says so and its RNG file holds a CUDA generator state, as a GPU
    run writes it) resumes on the CPU: tensors load onto the run's device, the foreign generator state is
    ignored, the switch is warned about and recorded. Only the device bookkeeping differs from a CPU
    checkpoint, so the result equals an uninterrupted CPU run bit for bit."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from legibility.training.checkpoint import CHECKSUMS, FILES, latest_checkpoint
    from legibility.training.trainer import Trainer, train

    sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
    from train_helpers import tiny_cfg

    cfg = tiny_cfg(
        steps=4, eval_every=2, checkpoint_every=2, log_every=2, regularizers=[{"name": "ffn_dropout"}]
    )
    whole = train(cfg, tmp_path / "whole", progress=False, device="cpu")

    def stop(trainer, step):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "moved", progress=False, device="cpu").fit([stop])
    ckpt = latest_checkpoint(tmp_path / "moved" / "checkpoints")
    assert ckpt is not None and ckpt.name == "step-000002"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["devices"] == ["cpu"]
    (ckpt / "state.json").write_text(json.dumps({**state, "devices": ["cuda:0"]}))
    rng = load_file(str(ckpt / "rng.safetensors"))
    save_file(
        {**rng, "cuda": torch.zeros(16, dtype=torch.uint8, device="cpu")}, str(ckpt / "rng.safetensors")
    )
    sums = {f: hashlib.sha256((ckpt / f).read_bytes()).hexdigest() for f in FILES}
    (ckpt / CHECKSUMS).write_text(json.dumps(sums))

    with pytest.warns(RuntimeWarning, match="checkpointed on cuda:0 on cpu"):
        resumed = train(cfg, tmp_path / "moved", progress=False, device="cpu")
    assert resumed["devices"] == ["cuda:0", "cpu"] and resumed["device"] == "cpu"
    assert {k: v for k, v in resumed.items() if k != "devices"} == whole
    for name in ("model.safetensors",):
        assert (tmp_path / "moved" / "model" / name).read_bytes() == (
            tmp_path / "whole" / "model" / name
        ).read_bytes()
