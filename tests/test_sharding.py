"""Facts sharded over workers: resumable, nothing lost or duplicated, the same result as a local run."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import tiny_facts, tiny_lm
from legibility import LegibilityError
from legibility.attribution import AttributionConfig
from legibility.facts.render import render
from legibility.pipeline import NeuronStage, find_neurons
from legibility.sharding import ModelSpec, ShardConfig, map_facts, shard_config
from legibility.store import JsonlStore

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


@dataclass(frozen=True)
class Item:
    id: str
    x: int


def square_factory(lm):
    return lambda item: {"fact_id": item.id, "y": item.x**2}


def test_local_map_facts_resumes_and_keeps_fact_order(tmp_path):
    items = [Item(f"f{i}", i) for i in range(6)]
    store = JsonlStore(tmp_path / "r.jsonl")
    store.append({"fact_id": "f3", "y": 9})  # finished before a kill
    seen = []

    def factory(lm):
        def compute(item):
            seen.append(item.id)
            return {"fact_id": item.id, "y": item.x**2}

        return compute

    out = map_facts(factory, items, store, lm=object(), progress=False)  # type: ignore[arg-type]
    assert [r["y"] for r in out] == [0, 1, 4, 9, 16, 25]
    assert seen == ["f0", "f1", "f2", "f4", "f5"]  # f3 was not computed again
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["fact_id"] for x in lines) == [f"f{i}" for i in range(6)]
    again = map_facts(factory, items, JsonlStore(tmp_path / "r.jsonl"), lm=object(), progress=False)  # type: ignore[arg-type]
    assert again == out and len(seen) == 5  # a finished run computes nothing


def test_map_facts_refuses_bad_input(tmp_path):
    store = JsonlStore(tmp_path / "r.jsonl")
    with pytest.raises(LegibilityError, match="appears twice"):
        map_facts(square_factory, [Item("a", 1), Item("a", 2)], store, lm=object(), progress=False)  # type: ignore[arg-type]
    with pytest.raises(LegibilityError, match="ModelSpec"):
        map_facts(
            square_factory, [Item("a", 1)], store, shard=ShardConfig("ray"), lm=object(), progress=False
        )  # type: ignore[arg-type]
    with pytest.raises(LegibilityError, match="unknown executor 'dask'"):
        map_facts(
            square_factory, [Item("a", 1)], store, shard=ShardConfig("dask"), lm=object(), progress=False
        )  # type: ignore[arg-type]


def test_shard_config_from_flags(tmp_path):
    assert shard_config(None, None) == ShardConfig()
    assert shard_config("local", 2) == ShardConfig("ray", None, 2)
    assert shard_config("auto", None) == ShardConfig("ray", "auto", None)
    assert shard_config(None, 4) == ShardConfig("local", workers=4)  # without Ray: local processes
    with pytest.raises(LegibilityError, match=">= 1"):
        shard_config("local", 0)
    (tmp_path / "m").mkdir()
    os.chdir(tmp_path)
    assert ModelSpec("m").name == str(tmp_path / "m")  # workers run elsewhere: local paths made absolute
    assert ModelSpec("gpt2").name == "gpt2"


@dataclass(frozen=True)
class DieOnce:
    """Wraps a stage so that the worker computing ``fact_id`` dies (the first time only)."""

    stage: Any
    fact_id: str
    marker: str

    def __call__(self, lm):
        compute = self.stage(lm)

        def run(r):
            if r.fact.id == self.fact_id and not os.path.exists(self.marker):
                Path(self.marker).write_text(str(os.getpid()))
                os._exit(1)  # as a killed or preempted worker: no exception, no result
            return compute(r)

        return run


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    before = os.environ.get("PYTHONPATH")
    # Workers import legibility and this test module (DieOnce) from the source tree.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS), *([before] if before else [])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if before is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_lm("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def one_thread():
    """Ray gives each one-CPU worker one torch thread; the local run must sum in the same order to be
    bit-identical (with other thread counts the scores differ in the last float bits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_ray_run_equals_local_run_even_when_a_worker_dies(ray_runtime, tiny_dir, tmp_path, one_thread):
    spec = ModelSpec(str(tiny_dir))
    lm = spec.load()
    kept = [render(lm, f) for f in tiny_facts()]
    acfg = AttributionConfig(steps=4)
    local = find_neurons(lm, kept, tmp_path / "local", "ig", acfg, progress=False)

    stage = NeuronStage("ig", acfg)
    marker = tmp_path / "died"
    store = JsonlStore(tmp_path / "ray" / "neurons.jsonl")
    sharded = map_facts(
        DieOnce(stage, kept[2].fact.id, str(marker)),
        kept,
        store,
        model=spec,
        shard=ShardConfig("ray", workers=3),  # one more than the runtime's CPUs: it waits for a free one
        progress=False,
    )
    assert marker.exists()  # a worker really died mid-run
    assert sharded == local
    ids = [json.loads(x)["fact_id"] for x in store.path.read_text().splitlines()]
    assert sorted(ids) == sorted(r.fact.id for r in kept)  # each fact once: nothing lost or duplicated


@pytest.mark.slow
def test_score_command_on_ray_writes_the_local_scorecard(ray_runtime, tiny_dir, tmp_path, one_thread):
    from legibility.cli import main

    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": f"f{i}",
                    "subject": f.subject,
                    "relation": f.relation,
                    "object": f.object,
                    "prompts": list(f.prompts),
                }
            )
            for i, f in enumerate(tiny_facts()[:4])
        )
        + "\n"
    )
    common = ["--model", str(tiny_dir), "--facts", str(facts), "--steps", "3", "--metrics", "none"]
    loose = ["--known-top-k", "1000", "--known-share", "0.0", "--no-progress"]
    assert main(["score", *common, *loose, "--out", str(tmp_path / "local")]) == 0
    ray_args = ["--ray-address", "local", "--workers", "2"]
    assert main(["score", *common, *loose, *ray_args, "--out", str(tmp_path / "ray")]) == 0
    cards = [json.loads((tmp_path / d / "scorecard.json").read_text()) for d in ("local", "ray")]
    assert cards[0]["metrics"] == cards[1]["metrics"]
    assert cards[0]["metrics"]["neurons.per_fact"]["n"] == 4


@pytest.mark.slow
def test_ray_known_scan_equals_the_local_scan(ray_runtime, tiny_dir, tmp_path, one_thread):
    from legibility.pipeline import KnownConfig, select_known
    from test_known_scan import many_facts

    spec = ModelSpec(str(tiny_dir))
    lm = spec.load()
    cfg = KnownConfig(top_k=8, min_share=0.5)
    local = select_known(lm, many_facts(), cfg, progress=False, store=tmp_path / "local.jsonl")
    sharded = select_known(
        lm,
        many_facts(),
        cfg,
        progress=False,
        store=tmp_path / "ray.jsonl",
        model=spec,
        shard=ShardConfig("ray", workers=2),
    )
    assert local.kept and [r.fact.id for r in sharded.kept] == [r.fact.id for r in local.kept]
    assert sharded.report == local.report


@pytest.mark.slow  # two spawned processes import torch and load the model (~20 s)
def test_local_worker_processes_equal_the_in_process_run(tiny_dir, tmp_path, one_thread, monkeypatch):
    """The local executor with workers=2 (no Ray): each process loads the model from its spec, and the
    records equal an in-process run's, in fact order."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), str(TESTS)]))
    spec = ModelSpec(str(tiny_dir))
    lm = spec.load()
    kept = [render(lm, f) for f in tiny_facts()]
    acfg = AttributionConfig(steps=4)
    local = find_neurons(lm, kept, tmp_path / "one", "ig", acfg, progress=False)
    pooled = find_neurons(
        lm, kept, tmp_path / "two", "ig", acfg, progress=False, model=spec, shard=ShardConfig(workers=2)
    )
    assert pooled == local


KILLED_DRIVER = """
import os, sys, time
from legibility.sharding import Callbacks, ExecutorConfig, local_executor

class Sleepy:  # setup: every item marks its worker's pid, then takes two minutes
    def __init__(self, folder):
        self.folder = folder

    def __call__(self, device):
        return self.work

    def work(self, item):
        open(os.path.join(self.folder, str(os.getpid())), "w").close()
        time.sleep(120)

if __name__ == "__main__":
    cb = Callbacks(done=lambda item, result: None, failed=lambda item, error: None)
    local_executor(Sleepy(sys.argv[1]), [1, 2, 3, 4], cb, ExecutorConfig(workers=2))
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits for a parent to read it


@pytest.mark.slow  # two spawned worker processes import torch (~10 s)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_local_workers_end_when_the_driver_is_killed(tmp_path):
    """A killed driver leaves no worker computing: they would hold the cores a resumed run needs."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    driver = subprocess.Popen([sys.executable, str(script), str(pids)], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list(pids.iterdir())) < 2:
            assert time.monotonic() < deadline and driver.poll() is None, "the workers did not start"
            time.sleep(0.2)
        workers = [int(p.name) for p in pids.iterdir()]
        assert all(_running(pid) for pid in workers)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 15
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in workers), "workers still run after their driver was killed"
    finally:
        driver.kill()
        for p in pids.iterdir():
            if _running(int(p.name)):
                os.kill(int(p.name), signal.SIGKILL)
