"""Whole-dataset runs spread over workers: one fact at a time, records appended by the driver as they return.

:func:`map_facts` computes one record per fact with a *compute factory* (a picklable callable that, given a
loaded model, returns ``compute(fact) -> record``) and appends every record to a resumable
:class:`~legibility.store.JsonlStore` as soon as it exists, so a run killed at any point and started again
continues where it stopped. Executors live in one registry:

* ``local``: in this process, with the model already loaded or loaded from the :class:`ModelSpec`.
* ``ray``: on a Ray cluster (``address``) or a local Ray runtime (``address=None``). Each worker is a Ray
  actor that loads the model itself from the :class:`ModelSpec` (one worker per GPU when the cluster has
  GPUs, else ``workers`` CPU workers), then takes facts one at a time. Only the driver writes the store. A
  worker that dies mid-fact (preempted node, out of memory, killed) is replaced and its fact given to the
  next free worker, so nothing is lost or written twice; records depend only on the fact (seeds are per
  fact), so the result equals a local run's.

>>> records = map_facts(NeuronStage(...), kept, JsonlStore(out / "neurons.jsonl"),  # doctest: +SKIP
...                     model=ModelSpec("smollm2-135m"), shard=ShardConfig("ray", workers=8))
"""

from __future__ import annotations

import collections
import contextlib
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
class ShardConfig:
    """Where facts are computed."""

    executor: str = "local"  # "local" (this process) or "ray"
    address: str | None = None  # Ray: 'auto', 'ray://host:10001', ...; None starts a local Ray runtime
    workers: int | None = None  # Ray: number of workers (None: one per GPU, else one per CPU of the cluster)
    max_retries: int = 3  # Ray: times one fact is handed to a fresh worker after its worker died


def fact_key(item: Any) -> str:
    """The store key of a fact: ``fact.id`` of a RenderedFact or of a Fact."""
    return str(item.fact.id if hasattr(item, "fact") else item.id)


Record = Callable[[dict], None]
Executor = Callable[
    [
        ComputeFactory,
        Sequence[Any],
        Record,
        "ModelSpec | None",
        "LoadedModel | None",
        ShardConfig,
        Callable[[Any], str],
    ],
    None,
]
EXECUTORS: Registry[Executor] = Registry("fact executor")


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
) -> list[dict]:
    """The records of ``facts`` in fact order, computing (and appending to ``store``) only the missing ones.

    ``factory(lm)`` returns the function that computes one fact's record; the ``local`` executor calls it
    with ``lm`` (or the model loaded from ``model``), each Ray worker with the model it loaded from ``model``.
    A progress bar over all workers shows facts done and the time left.
    """
    cfg = shard or ShardConfig()
    executor = EXECUTORS[cfg.executor]
    if cfg.executor != "local" and model is None:
        raise LegibilityError(
            f"the {cfg.executor} executor loads the model on each worker: pass model=ModelSpec(...)"
        )
    if lm is None and model is None:
        raise LegibilityError("map_facts needs the loaded model (lm=...) or its spec (model=ModelSpec(...))")
    keys = [key(f) for f in facts]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in collections.Counter(keys).items() if n > 1)
        raise LegibilityError(f"fact id {dup!r} appears twice; give every fact its own id")
    todo = [f for f in facts if key(f) not in store]
    with tqdm(
        total=len(facts), initial=len(facts) - len(todo), desc=desc, disable=not progress, unit="fact"
    ) as bar:

        def record(rec: dict) -> None:
            if str(rec[store.key]) in store:  # never twice, whichever worker sent it
                return
            store.append(rec)
            bar.update(1)

        if todo:
            executor(factory, todo, record, model, lm, cfg, key)
    missing = [k for k in keys if k not in store]
    if missing:
        raise LegibilityError(
            f"{len(missing)} facts got no record (first: {missing[0]!r}); rerun to retry them"
        )
    return [store.records[k] for k in keys]


@EXECUTORS.register("local")
def local_executor(
    factory: ComputeFactory,
    facts: Sequence[Any],
    record: Record,
    model: ModelSpec | None,
    lm: LoadedModel | None,
    cfg: ShardConfig,
    key: Callable[[Any], str],
) -> None:
    compute = factory(lm if lm is not None else model.load())  # type: ignore[union-attr]
    for f in facts:
        record(compute(f))


class FactWorker:
    """A Ray actor: loads the model once, then computes one fact per call."""

    def __init__(self, model: ModelSpec, factory: ComputeFactory):
        import ray
        import torch

        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else None
        self._compute = factory(model.load(device))

    def compute(self, fact: Any) -> dict:
        return self._compute(fact)


@EXECUTORS.register("ray")
def ray_executor(
    factory: ComputeFactory,
    facts: Sequence[Any],
    record: Record,
    model: ModelSpec | None,
    lm: LoadedModel | None,
    cfg: ShardConfig,
    key: Callable[[Any], str],
) -> None:
    with ray_runtime(cfg.address) as ray:
        _run_fact_workers(ray, factory, facts, record, model, cfg, key)


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


def _run_fact_workers(
    ray: Any,
    factory: ComputeFactory,
    facts: Sequence[Any],
    record: Record,
    model: ModelSpec | None,
    cfg: ShardConfig,
    key: Callable[[Any], str],
) -> None:
    from ray.exceptions import RayActorError, RayTaskError

    actors: list = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        workers = cfg.workers or gpus or int(resources.get("CPU", 1))
        if workers < 1:
            raise LegibilityError("--workers must be >= 1")
        # A worker holds a whole model; on a GPU cluster each gets a GPU of its own.
        worker_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=0)(FactWorker)
        factory_ref = ray.put(factory)  # shipped once, not once per worker (the effect stage carries facts)
        queue = collections.deque(facts)
        tries: collections.Counter[str] = collections.Counter()
        pending: dict = {}  # object ref -> (actor, fact)

        def submit(actor) -> None:
            fact = queue.popleft()
            pending[actor.compute.remote(fact)] = (actor, fact)

        # More workers than the cluster can place wait for a free CPU/GPU; idle workers are released below.
        for _ in range(min(workers, len(facts))):
            actors.append(worker_cls.remote(model, factory_ref))
            submit(actors[-1])
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, fact = pending.pop(ready[0])
            try:
                rec = ray.get(ready[0])
            except RayTaskError as e:  # the compute's own error: stop, as a local run would
                raise (getattr(e, "cause", None) or e) from None
            except RayActorError as e:  # the worker died: its fact goes to a fresh worker
                k = key(fact)
                tries[k] += 1
                if tries[k] > cfg.max_retries:
                    raise LegibilityError(
                        f"fact {k!r}: its worker died {tries[k]} times ({str(e).splitlines()[0]}); "
                        "rerun the same command to resume"
                    ) from e
                queue.appendleft(fact)
                actors.remove(actor)
                actor = worker_cls.remote(model, factory_ref)
                actors.append(actor)
            else:
                record(rec)
            if queue:
                submit(actor)
            else:  # nothing left for it: free its CPU/GPU for workers still waiting to be scheduled
                actors.remove(actor)
                ray.kill(actor)
    finally:
        for a in actors:
            ray.kill(a)


def shard_config(ray_address: str | None, workers: int | None) -> ShardConfig:
    """The ShardConfig of the command-line flags ``--ray-address`` ('local': a Ray runtime on this machine)
    and ``--workers``."""
    if workers is not None and workers < 1:
        raise LegibilityError("--workers must be >= 1")
    if ray_address is None:
        if workers is not None:
            raise LegibilityError("--workers needs --ray-address (use --ray-address local for this machine)")
        return ShardConfig()
    return ShardConfig("ray", None if ray_address == "local" else ray_address, workers)
