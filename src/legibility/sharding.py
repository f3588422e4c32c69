"""Executors: one registry that runs the facts of a whole-dataset run and the trials of a sweep.

An executor runs a list of *tasks* on workers. A worker calls the task's ``setup(device)`` once (loading a
model, say) and gets back the function it then applies to one item at a time; results come back to the
driver one by one, through callbacks, as soon as they exist. Executors live in :data:`EXECUTORS`:

* ``local``: in this process (``workers`` None or 1), or a pool of ``workers`` processes, each with its share
  of the cores.
* ``ray``: on a Ray cluster (``address``) or a local Ray runtime (``address=None``): one actor per worker
  (one per GPU when the cluster has GPUs, else ``workers`` or one per CPU), each running ``setup`` once. A
  worker that dies mid-item (preempted node, out of memory, killed) is replaced and its item given to the
  next free worker, at most ``max_retries`` times.

:func:`map_facts` runs the runner's stages with them: one record per fact, appended by the driver to a
resumable :class:`~legibility.store.JsonlStore` as it arrives, so a run killed at any point and started again
continues where it stopped; records depend only on the fact (seeds are per fact), so every executor gives
the same result. Sweeps (:mod:`legibility.sweeps.run`) run their trials with the same executors.

>>> records = map_facts(NeuronStage(...), kept, JsonlStore(out / "neurons.jsonl"),  # doctest: +SKIP
...                     model=ModelSpec("smollm2-135m"), shard=ExecutorConfig("ray", workers=8))
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from legibility.errors import LegibilityError
from legibility.registry import Registry
from legibility.store import JsonlStore

if TYPE_CHECKING:  # this module stays importable without torch (the runner's CLI checks come first)
    from legibility.models.loading import LoadedModel

Compute = Callable[[Any], dict]
ComputeFactory = Callable[["LoadedModel"], Compute]  # must pickle for the ray executor


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model itself (plain data, so it travels to other machines)."""

    name: str  # embedded name, local directory or .gguf file (the same path on every node), or hub id
    site: str = "ffn"  # neuron sites, as load_model's ``site``
    device: str | None = None  # None: load_model's default; Ray GPU workers use "cuda"
    dtype: str = "float32"  # as load_model's ``dtype``

    def __post_init__(self) -> None:
        # Workers run in other directories: a relative local path must name the same file there.
        path = Path(self.name).expanduser()
        if path.exists():
            object.__setattr__(self, "name", str(path.resolve()))

    def load(self, device: str | None = None) -> LoadedModel:
        from legibility.models.loading import load_model

        device = device or self.device
        return load_model(self.name, site=self.site, device=device, dtype=self.dtype)


@dataclass(frozen=True)
class ExecutorConfig:
    """Where tasks (facts, trials) are computed."""

    name: str = "local"  # a registered executor: "local" or "ray"
    address: str | None = None  # ray: 'auto', 'ray://host:10001', ...; None starts a local Ray runtime
    # local: processes (None or 1: this process); ray: workers (None: one per GPU, else one per CPU)
    workers: int | None = None
    device: str | None = None  # where workers load models (None: auto); an execution setting, never keyed
    max_retries: int = 3  # ray: times one item is handed to a fresh worker after its worker died


ShardConfig = ExecutorConfig  # the name the runner's API has used


def fact_key(item: Any) -> str:
    """The store key of a fact: ``fact.id`` of a RenderedFact or of a Fact."""
    return str(item.fact.id if hasattr(item, "fact") else item.id)


Setup = Callable[[str | None], Callable[[Any], Any]]  # device -> work(item); must pickle beyond this process


@dataclass
class Callbacks:
    """How an executor reports back to the driver (called in the driver's process)."""

    done: Callable[[Any, Any], None]  # (item, result)
    failed: Callable[[Any, BaseException], None]  # (item, error): record it, or raise to stop the run
    started: Callable[[Any], None] = lambda item: None  # the item was handed to a worker
    key: Callable[[Any], str] = str  # names an item in errors


Executor = Callable[[Setup, Sequence[Any], Callbacks, ExecutorConfig], None]
EXECUTORS: Registry[Executor] = Registry("executor")


@EXECUTORS.register("local")
def local_executor(setup: Setup, items: Sequence[Any], cb: Callbacks, cfg: ExecutorConfig) -> None:
    if not cfg.workers or cfg.workers <= 1:
        work = setup(cfg.device)
        for item in items:
            cb.started(item)
            try:
                result = work(item)
            except Exception as e:  # the callback decides: record and go on, or stop
                cb.failed(item, e)
            else:
                cb.done(item, result)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads and DuckDB
    # each worker gets its share of the cores (torch's default, all cores per worker, oversubscribes them)
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    with cf.ProcessPoolExecutor(
        max_workers=cfg.workers,
        mp_context=ctx,
        initializer=_start_worker,
        initargs=(setup, cfg.device, threads),
    ) as pool:
        futures = {}
        for item in items:
            cb.started(item)
            futures[pool.submit(_work, item)] = item
        for fut in cf.as_completed(futures):
            item = futures[fut]
            try:
                result = fut.result()
            except Exception as e:
                cb.failed(item, e)
            else:
                cb.done(item, result)


_WORK: list[Callable[[Any], Any]] = []  # a process-pool worker's work function (set once per process)


def _start_worker(setup: Setup, device: str | None, threads: int) -> None:
    import torch

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    torch.set_num_threads(threads)
    _WORK.append(setup(device))


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker once its driver is gone (killed, say): the pool would otherwise go on computing the
    items already handed to it, holding the cores a resumed run needs, with nobody to store the results."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(1)


def _work(item: Any) -> Any:
    return _WORK[0](item)


class RayWorker:
    """A Ray actor: runs the task's setup once (on its GPU when Ray gave it one), then one item per call."""

    def __init__(self, setup: Setup, device: str | None):
        import ray

        self._work = setup("cuda" if ray.get_gpu_ids() else device)

    def work(self, item: Any) -> Any:
        return self._work(item)


@EXECUTORS.register("ray")
def ray_executor(setup: Setup, items: Sequence[Any], cb: Callbacks, cfg: ExecutorConfig) -> None:
    with ray_runtime(cfg.address) as ray:
        _run_ray_workers(ray, setup, items, cb, cfg)


class ModelTask:
    """The setup of a runner stage on a worker: the stage's function on the model. In this process that is
    the model already loaded (when there is one); a copy sent to another process or machine leaves it behind
    and loads the model from its spec."""

    def __init__(self, factory: ComputeFactory, model: ModelSpec | None, lm: LoadedModel | None = None):
        self.factory, self.model, self.lm = factory, model, lm

    def __getstate__(self) -> dict:
        return {**self.__dict__, "lm": None}  # a loaded model never travels

    def __call__(self, device: str | None) -> Compute:
        if self.lm is not None:
            return self.factory(self.lm)
        if self.model is None:
            raise LegibilityError("this executor loads the model on its workers: pass model=ModelSpec(...)")
        return self.factory(self.model.load(device))


def map_facts(
    factory: ComputeFactory,
    facts: Sequence[Any],
    store: JsonlStore,
    *,
    model: ModelSpec | None = None,
    lm: LoadedModel | None = None,
    shard: ShardConfig | None = None,
    key: Callable[[Any], str] = fact_key,
    desc: str = "facts",
    progress: bool = True,
    unit: str = "fact",
) -> list[dict]:
    """The records of ``facts`` in fact order, computing (and appending to ``store``) only the missing ones.

    ``factory(lm)`` returns the function that computes one fact's record; the ``local`` executor calls it
    with ``lm`` (or the model loaded from ``model``), each Ray worker with the model it loaded from ``model``.
    A progress bar over all workers shows items done (``unit``: what an item is) and the time left.
    """
    cfg = shard or ExecutorConfig()
    executor = EXECUTORS[cfg.name]
    in_process = cfg.name == "local" and (cfg.workers or 1) == 1
    if not in_process and model is None:
        raise LegibilityError(
            f"the {cfg.name} executor loads the model on each worker: pass model=ModelSpec(...)"
        )
    if lm is None and model is None:
        raise LegibilityError("map_facts needs the loaded model (lm=...) or its spec (model=ModelSpec(...))")
    keys = [key(f) for f in facts]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in collections.Counter(keys).items() if n > 1)
        raise LegibilityError(f"fact id {dup!r} appears twice; give every fact its own id")
    todo = [f for f in facts if key(f) not in store]
    with tqdm(
        total=len(facts), initial=len(facts) - len(todo), desc=desc, disable=not progress, unit=unit
    ) as bar:

        def record(rec: dict) -> None:
            if str(rec[store.key]) in store:  # never twice, whichever worker sent it
                return
            store.append(rec)
            bar.update(1)

        def failed(fact: Any, error: BaseException) -> None:
            raise error  # a fact's own error stops the run, wherever it was computed

        if todo:
            task = ModelTask(factory, model, lm)
            executor(task, todo, Callbacks(lambda f, rec: record(rec), failed, key=key), cfg)
    missing = [k for k in keys if k not in store]
    if missing:
        raise LegibilityError(
            f"{len(missing)} facts got no record (first: {missing[0]!r}); rerun to retry them"
        )
    return [store.records[k] for k in keys]


@contextlib.contextmanager
def ray_runtime(address: str | None) -> Iterator[Any]:
    """The ``ray`` module, connected to ``address`` (None: a local runtime) for the duration; a runtime
    this call started is shut down after. Used by fact sharding and by sweeps."""
    try:
        import ray
    except ImportError as e:
        raise LegibilityError("the ray executor needs Ray: pip install 'legibility[ray]'") from e
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _run_ray_workers(
    ray: Any, setup: Setup, items: Sequence[Any], cb: Callbacks, cfg: ExecutorConfig
) -> None:
    from ray.exceptions import RayActorError, RayTaskError

    actors: list = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if (cfg.device or "cuda").startswith("cuda") else 0
        workers = cfg.workers or gpus or int(resources.get("CPU", 1))
        if workers < 1:
            raise LegibilityError("--workers must be >= 1")
        # A worker holds a whole model; on a GPU cluster each gets a GPU of its own.
        worker_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=0)(RayWorker)
        setup_ref = ray.put(setup)  # shipped once, not once per worker (a stage carries its facts)
        queue = collections.deque(items)
        tries: collections.Counter[str] = collections.Counter()
        pending: dict = {}  # object ref -> (actor, item)

        def submit(actor) -> None:
            item = queue.popleft()
            cb.started(item)
            pending[actor.work.remote(item)] = (actor, item)

        # More workers than the cluster can place wait for a free CPU/GPU; idle workers are released below.
        for _ in range(min(workers, len(items))):
            actors.append(worker_cls.remote(setup_ref, cfg.device))
            submit(actors[-1])
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, item = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayTaskError as e:  # the task's own error: the callback records it or stops the run
                cb.failed(item, getattr(e, "cause", None) or e)
            except RayActorError as e:  # the worker died: its item goes to a fresh worker
                k = cb.key(item)
                tries[k] += 1
                if tries[k] > cfg.max_retries:
                    raise LegibilityError(
                        f"{k!r}: its worker died {tries[k]} times ({str(e).splitlines()[0]}); "
                        "rerun the same command to resume"
                    ) from e
                queue.appendleft(item)
                actors.remove(actor)
                actor = worker_cls.remote(setup_ref, cfg.device)
                actors.append(actor)
            else:
                cb.done(item, result)
            if queue:
                submit(actor)
            else:  # nothing left for it: free its CPU/GPU for workers still waiting to be scheduled
                actors.remove(actor)
                ray.kill(actor)
    finally:
        for a in actors:
            ray.kill(a)


def executor_config(
    ray_address: str | None,
    workers: int | None,
    device: str | None = None,
    base: ExecutorConfig | None = None,
) -> ExecutorConfig:
    """The executor of the command-line flags, over ``base`` (a sweep's own): ``--ray-address`` ('local': a
    Ray runtime on this machine; else the cluster's address) and ``--workers`` (Ray workers, or without
    Ray local processes), ``--device``."""
    import dataclasses

    if workers is not None and workers < 1:
        raise LegibilityError("--workers must be >= 1")
    cfg = base or ExecutorConfig()
    if ray_address is not None:
        cfg = dataclasses.replace(cfg, name="ray", address=None if ray_address == "local" else ray_address)
    if workers is not None:
        cfg = dataclasses.replace(cfg, workers=workers)
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    return cfg


shard_config = executor_config  # the name the runner's CLI has used
