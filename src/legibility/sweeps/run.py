"""Run a sweep: every trial trains a model then scores it; results land in the DuckDB store.

Trials run on the runner's executors (:data:`legibility.sharding.EXECUTORS`): ``local`` (in this process, or
a pool of ``workers`` processes) and ``ray`` (a Ray cluster at ``address``, or a local Ray runtime). A rerun skips finished trials, reruns those that were
running when the sweep was killed (the trainer resumes from its last checkpoint) and, unless asked, leaves
failed trials failed with their error recorded.

A trial's id hashes its full resolved config (base, overrides, seed, score settings) and the content of the
data files it reads (text folder, PARAREL), so editing the sweep's ``base`` or ``score``, or its data, starts
new trials. The sweep folder is held with :func:`legibility.store.run_lock` while the sweep runs. The device (``executor.device``, ``--device``) is an execution
setting like ``workers``: it is not in the id, so a sweep may continue on another device; each trial's
``train`` record says where it trained (``device``). Rows of the same sweep name that the current config no longer
produces are kept but marked ``stale:<status>`` (the report and the counts leave them out); going back to
the old config revives them.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from legibility.errors import LegibilityError
from legibility.sharding import EXECUTORS, Callbacks, Executor
from legibility.store import check_writable, run_lock
from legibility.sweeps.config import SweepConfig, Trial
from legibility.sweeps.results import ResultsStore


def run_trial(
    run_config: dict, trial_dir: str, score: dict, device: str | None = None, kind: str = "train"
) -> dict:
    """Train and score one trial on ``device`` (default ``"auto"``; runs in a worker: arguments and
    result are plain data). Held-out facts and objective facts are scored apart
    (:func:`legibility.training.experiment.score_groups`): bare metric names are held-out facts, names
    ending in ``.trained_facts`` the facts the objectives trained on. ``kind="finetune"``: the trial is a
    :func:`legibility.training.finetune.run_finetune` (its known-fact cache shared by the sweep's trials)."""
    from legibility.training.experiment import ScoreConfig, score_groups
    from legibility.training.run_config import parse_run_config
    from legibility.training.trainer import train

    if kind == "finetune":
        return _finetune_trial(run_config, Path(trial_dir), ScoreConfig(**score), device)

    cfg = parse_run_config(run_config)
    out = Path(trial_dir)
    t0 = time.perf_counter()
    final = train(cfg, out / "train", progress=False, device=device)
    t1 = time.perf_counter()
    # the runner computes the default independent metrics with the scorecard, on the model it loaded
    scored = score_groups(out / "train" / "model", cfg, out, ScoreConfig(**score), device)
    metrics = scored["metrics"]
    t2 = time.perf_counter()
    return {
        "train": final,
        "metrics": metrics,
        "known_facts": scored["known_facts"],
        "train_s": t1 - t0,
        "score_s": t2 - t1,
    }


def _finetune_trial(run_config: dict, out: Path, score, device: str | None) -> dict:
    from legibility.training.finetune import parse_finetune_config, run_finetune

    t0 = time.perf_counter()
    cfg = parse_finetune_config(run_config)
    result = run_finetune(cfg, out, score, device, progress=False, cache_dir=out.parent.parent / "cache")
    return {
        "train": result["train"],
        "metrics": result["metrics"],
        "known_facts": result.get("known_facts"),
        "train_s": result.get("seconds", {}).get("train", time.perf_counter() - t0),
        "score_s": result.get("seconds", {}).get("score"),
    }


def _error(e: BaseException) -> str:

    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}\n" + "".join(tb[-3:])


@dataclass(frozen=True)
class TrialJob:
    """One trial as a worker receives it (plain data)."""

    id: str
    run_config: dict
    trial_dir: str
    score: dict
    kind: str = "train"


class TrialTask:
    """The setup of a sweep's workers (:mod:`legibility.sharding` executors): nothing to load up front;
    each trial trains and scores its own model on the worker's device."""

    def __call__(self, device: str | None) -> Callable[[TrialJob], dict]:
        return functools.partial(_run_job, device=device)


def _run_job(job: TrialJob, device: str | None) -> dict:
    kind = {"kind": job.kind} if job.kind != "train" else {}  # only trials that are not plain training runs
    return run_trial(job.run_config, job.trial_dir, job.score, device, **kind)


def trial_dir(out: Path, trial: Trial) -> Path:
    """``<out>/trials/<trial id>``, refused if it would lie outside ``<out>/trials`` (ids come from sanitized
    variant names, so this guards against a hand-made Trial)."""
    root = (out / "trials").resolve()
    path = (root / trial.id).resolve()
    if path.parent != root:
        raise LegibilityError(f"trial id {trial.id!r} would write outside {root}; rename the variant")
    return path


def run_sweep(
    cfg: SweepConfig, out_dir: str | Path, retry_failed: bool = False, progress: bool = True
) -> dict:
    """Run the trials not finished yet; returns counts by status."""
    out = check_writable(out_dir)
    executor = EXECUTORS[cfg.executor.name]  # an unknown executor fails here, before anything is written
    if cfg.executor.name == "local" and cfg.executor.device is not None:
        from legibility.devices import resolve_device

        resolve_device(cfg.executor.device)  # an unavailable device fails here, not once per trial
    dirs = {t.id: trial_dir(out, t) for t in cfg.trials}  # before anything is written
    with run_lock(out):
        return _run_locked(cfg, out, executor, dirs, retry_failed, progress)


def _run_locked(
    cfg: SweepConfig,
    out: Path,
    executor: Executor,
    dirs: dict[str, Path],
    retry_failed: bool,
    progress: bool,
) -> dict:
    with ResultsStore(out / "results.duckdb") as store:
        for t in cfg.trials:
            store.add_pending(cfg.name, t)
        store.mark_stale(cfg.name, [t.id for t in cfg.trials])
        status = store.status()
        skip = {"done"} | (set() if retry_failed else {"failed"})
        todo = [t for t in cfg.trials if status.get(t.id) not in skip]
        # seed-major order: a sweep stopped part-way has every variant and grid point at its first seeds
        seed_rank = {s: i for i, s in enumerate(dict.fromkeys(t.seed for t in cfg.trials))}
        todo.sort(key=lambda t: seed_rank[t.seed])
        bar = tqdm(
            total=len(cfg.trials),
            initial=len(cfg.trials) - len(todo),
            desc=f"sweep {cfg.name}",
            disable=not progress,
            unit="trial",
        )

        def on_done(job: TrialJob, result: dict) -> None:
            store.mark_done(job.id, result)
            bar.update(1)

        def on_fail(job: TrialJob, error: BaseException) -> None:  # recorded; the other trials go on
            store.mark_failed(job.id, _error(error))
            bar.update(1)

        jobs = [TrialJob(t.id, t.run_config, str(dirs[t.id]), cfg.score, t.kind) for t in todo]
        callbacks = Callbacks(
            on_done, on_fail, started=lambda job: store.mark_running(job.id), key=lambda j: j.id
        )
        try:
            executor(TrialTask(), jobs, callbacks, cfg.executor)
        finally:
            bar.close()
        counts: dict[str, int] = {}
        current = {t.id for t in cfg.trials}
        for tid, s in store.status().items():
            if tid in current:
                counts[s] = counts.get(s, 0) + 1
    return counts
