"""The one runner: facts -> known facts -> knowledge neurons -> effects -> independent metrics -> scorecard.

Every front end (the CLI's ``neurons``/``score``, the training lab's scoring, sweeps) calls :func:`run`.
A run lives in one output directory and is keyed by everything that changes its result: the settings
(:class:`RunSettings`), the content hash of the facts (the user's file, or the PARAREL files read) and the
content hashes of the model's weights, config and tokenizer (:mod:`legibility.models.identity`). Rerunning with the same key resumes (finished facts are not recomputed)
and gives the same files, bit for bit, as an uninterrupted run; a different key is refused naming the keys
that differ, or, with ``force=True``, recomputed from scratch.

Everything is validated before anything is written to the output directory, so a failed start never
leaves a half-made run behind. Files: ``run.json`` (the key), ``facts.json`` (the kept facts in order,
and why the others were dropped), ``neurons.jsonl``, ``effects.jsonl`` and ``scorecard.json``. The runner
writes results; figures are the caller's (the CLI draws them with
:func:`legibility.report.figures.draw_run_figures`).

The neuron and effect stages are maps over facts that append one record per fact to a JSONL store
(:func:`legibility.sharding.map_facts`): in this process by default, or spread over Ray workers that load
the model themselves (``shard=ShardConfig("ray", ...)``); other executors plug into its registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legibility.errors import LegibilityError
from legibility.facts.known import KnownConfig
from legibility.models.identity import identity, identity_of, model_ref, sha256_file
from legibility.sharding import ModelSpec, ShardConfig
from legibility.store import (
    atomic_write_json,
    check_files,
    check_writable,
    is_disk_error,
    key_diff,
    read_key,
    run_lock,
)

# This module stays importable without torch (the CLI validates its input with it before heavy imports):
# the stage configs are imported where they are built.
if TYPE_CHECKING:
    from legibility.attribution.base import AttributionConfig
    from legibility.facts.split import PromptSplit
    from legibility.facts.types import Fact, RenderedFact
    from legibility.metrics.effects import EffectConfig
    from legibility.models.loading import LoadedModel
    from legibility.neurons import NeuronConfig

RESULT_FILES = (
    "known.jsonl",
    "facts.json",
    "neurons.jsonl",
    "effects.jsonl",
    "scorecard.json",
    "layers.png",
    "suppression.png",
    "report.html",
)


# Upper bounds of the settings that size memory or work (a typo is refused before anything is allocated).
MAX_STEPS = 4096  # integrated-gradients steps (the paper uses 20)
MAX_CONTROLS = 1000  # control facts per fact
MAX_BATCH = 65536  # prompts or path points per forward pass


def _attribution() -> AttributionConfig:
    from legibility.attribution.base import AttributionConfig

    return AttributionConfig()


def _neurons() -> NeuronConfig:
    from legibility.neurons import NeuronConfig

    return NeuronConfig()


def _effects() -> EffectConfig:
    from legibility.metrics.effects import EffectConfig

    return EffectConfig()


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run except its inputs (facts, model) and where it is written."""

    model: str = "smollm2-135m"  # embedded name, local directory or HF id (ignored when lm= is given)
    site: str = "ffn"  # neuron sites: "ffn" (paper) or "eleuther" (GPT-2 pre-activation)
    method: str = "ig"  # attribution method (see legibility.attribution.METHODS)
    attribution: AttributionConfig = field(default_factory=_attribution)
    neurons: NeuronConfig = field(default_factory=_neurons)  # its min_prompts also filters facts
    known: KnownConfig = field(default_factory=KnownConfig)
    effects: EffectConfig | None = field(default_factory=_effects)  # None: neurons only, no effects
    metrics: tuple[str, ...] = ()  # independent metrics added to the scorecard
    multi_token: bool = False  # allow multi-token targets (gold continuation)
    seed: int = 0  # fact sampling, prompt splits, random controls, metrics
    dtype: str = "float32"  # the model's dtype; anything else gives approximate scores (keyed)
    # share of each fact's prompts held out from selecting its neurons, on which effects are measured
    # (0: select and measure on every prompt, the paper's in-sample protocol)
    holdout: float = 0.5

    @property
    def split(self) -> PromptSplit:
        from legibility.facts.split import PromptSplit

        return PromptSplit(self.holdout, self.seed)

    @property
    def min_prompts(self) -> int:
        """Usable prompts a fact needs: the neuron setting's, and two when prompts are held out."""
        return max(self.neurons.min_prompts, 2 if self.holdout > 0 else 1)

    def validate(self) -> None:
        """Refuse out-of-range settings with one line each (before any work)."""
        a, n, k, e = self.attribution, self.neurons, self.known, self.effects
        checks = [
            (1 <= a.steps <= MAX_STEPS, f"attribution steps must be in [1, {MAX_STEPS}], got {a.steps}"),
            (
                1 <= a.batch_size <= MAX_BATCH,
                f"attribution batch size must be in [1, {MAX_BATCH}], got {a.batch_size}",
            ),
            (0.0 < n.threshold < 1.0, f"neuron threshold must be in (0, 1), got {n.threshold}"),
            (0.0 <= n.share < 1.0, f"refining share must be in [0, 1), got {n.share}"),
            (n.min_prompts >= 1, f"min prompts must be >= 1, got {n.min_prompts}"),
            (k.top_k >= 1, f"known top-k must be >= 1, got {k.top_k}"),
            (0.0 <= k.min_share <= 1.0, f"known share must be in [0, 1], got {k.min_share}"),
            (k.limit is None or k.limit >= 1, f"limit must be >= 1, got {k.limit}"),
            (k.scan >= 1, f"known scan must be >= 1, got {k.scan}"),
            (0.0 <= self.holdout < 1.0, f"holdout must be in [0, 1), got {self.holdout}"),
        ]
        if e is not None:
            checks += [
                (
                    0 <= e.controls <= MAX_CONTROLS,
                    f"controls per tier must be in [0, {MAX_CONTROLS}], got {e.controls}",
                ),
                (
                    e.control_prompts is None or e.control_prompts >= 1,
                    f"control prompts must be >= 1, got {e.control_prompts}",
                ),
                (
                    1 <= e.batch_size <= MAX_BATCH,
                    f"effect batch size must be in [1, {MAX_BATCH}], got {e.batch_size}",
                ),
            ]
        for ok, message in checks:
            if not ok:
                raise LegibilityError(message)
        from legibility.attribution import METHODS

        METHODS[self.method]  # unknown method: LegibilityError listing the known ones
        if self.metrics:
            from legibility.metrics.independent import INDEPENDENT

            for name in self.metrics:
                INDEPENDENT[name]


@dataclass(frozen=True)
class FactSource:
    """Where the facts come from: a user JSONL file, or PARAREL relations (all when ``relations`` is None)."""

    facts_file: str | None = None
    relations: tuple[str, ...] | None = None
    data_dir: str | None = None  # PARAREL folder (None: $LEGIBILITY_PARAREL or ../shared/data/pararel)


@dataclass
class Inputs:
    """Loaded facts and the content hashes that key them."""

    facts: list[Fact]
    hashes: dict[str, str]  # file name -> sha256 of its bytes
    user_file: bool = False  # facts given by the user: each must be usable as given


@dataclass
class RunResult:
    out_dir: Path
    key: dict  # the run key written to run.json
    selection: dict  # facts.json's report: how many facts were kept and why others were dropped
    facts: list[RenderedFact]  # the kept facts, in the saved order
    neuron_records: list[dict]
    effects: list[dict]
    scorecard: dict  # {"metrics": {...}, "settings": key}
    n_layers: int


# ---------------------------------------------------------------------------------------------- inputs


def load_inputs(source: FactSource) -> Inputs:
    """Read and check the facts of ``source``, with the content hashes of the files read."""
    if source.facts_file:
        from legibility.facts.jsonl import load_jsonl_facts

        path = Path(source.facts_file)
        facts = load_jsonl_facts(path)  # a missing or non-UTF-8 file: one line naming it
        return Inputs(facts, {path.name: sha256_file(path)}, user_file=True)
    from legibility.facts.pararel import find_pararel, load_pararel, pararel_relations

    root = find_pararel(source.data_dir)
    available = pararel_relations(root)
    relations = list(source.relations) if source.relations else available
    unknown = [r for r in relations if r not in available]
    if unknown:
        hints = [
            f"{r} (did you mean {', '.join(close)}?)"
            if (close := difflib.get_close_matches(r, available, 3))
            else r
            for r in unknown
        ]
        raise LegibilityError(f"unknown relation(s) {', '.join(hints)}; PARAREL has: {', '.join(available)}")
    facts = load_pararel(root, relations)
    hashes = {}
    for rel in relations:
        for kind in ("patterns", "facts"):
            hashes[f"{kind}/{rel}.jsonl"] = sha256_file(root / kind / f"{rel}.jsonl")
    return Inputs(facts, hashes)


def facts_digest(inputs: Inputs | Sequence[Fact]) -> str:
    """One sha256 over the facts' file hashes, or (for facts given in memory) over the facts themselves."""
    if isinstance(inputs, Inputs):
        blob = json.dumps(sorted(inputs.hashes.items()))
    else:
        blob = json.dumps([[f.id, f.subject, f.relation, f.object, list(f.prompts)] for f in inputs])
    return hashlib.sha256(blob.encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def check_model_name(name: str) -> None:
    """Fail fast on a model name that cannot load: a close match for a misspelt embedded name, and a quick
    error (instead of minutes of hub retries) for a hub id that is neither cached nor reachable. A name that
    passed is not checked again in this process (the hub probe takes up to 2 s)."""
    from legibility.models.embedded import EMBEDDED

    if name in EMBEDDED or Path(name).expanduser().exists():
        return
    close = difflib.get_close_matches(name, list(EMBEDDED), n=3, cutoff=0.6)
    if close:
        raise LegibilityError(f"unknown model {name!r}; did you mean {' or '.join(map(repr, close))}?")
    if Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise LegibilityError(
            f"model path {name!r} does not exist. Give an existing directory, a Hugging Face id such as "
            f"'gpt2', or the embedded model {sorted(EMBEDDED)}."
        )
    if _in_hf_cache(name):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or not _hub_reachable()
    if offline:
        raise LegibilityError(
            f"model {name!r} is not an embedded model ({', '.join(sorted(EMBEDDED))}), not a local directory, "
            "not in the Hugging Face cache, and the hub is offline; give a local directory or an embedded name"
        )


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub library rejects is not cached either
        return False


def _hub_reachable(timeout: float = 2.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def context_length(lm: LoadedModel) -> int | None:
    """The longest sequence the model accepts (None when its config does not say)."""
    cfg = lm.model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def check_context(lm: LoadedModel, facts: Iterable[RenderedFact]) -> None:
    """Refuse a prompt longer than the model's context before it is run (one line, naming the fact)."""
    limit = context_length(lm)
    if limit is None:
        return
    for r in facts:
        for p in r.prompts:
            n = max(len(q.input_ids) for q in p.queries)
            if n > limit:
                raise LegibilityError(
                    f"fact {r.fact.id!r}: a prompt is {n} tokens long, more than the model's context of "
                    f"{limit}; shorten the subject or the prompt"
                )


def check_user_facts(lm: LoadedModel, facts: Sequence[Fact], multi_token: bool, min_prompts: int = 1) -> None:
    """User facts must be usable as given: say which one is not and why, rather than silently drop it."""
    from legibility.facts.render import MULTI_TOKEN, NOT_AT_END, render

    for f in facts:
        r = render(lm, f, multi_token)
        check_context(lm, [r])
        if len(r.prompts) >= min_prompts:
            continue
        if r.prompts:
            raise LegibilityError(
                f"fact {f.id!r} has {len(r.prompts)} usable prompt(s) and needs {min_prompts}: its neurons are "
                "chosen on some paraphrases and measured on others; add paraphrases, or pass --holdout 0 "
                "(measure on the prompts that chose the neurons) and --min-prompts 1"
            )
        if NOT_AT_END in r.skipped:
            raise LegibilityError(
                f"fact {f.id!r}: the object slot [Y] must end every prompt of a causal LM "
                f"(e.g. 'The capital of [X] is [Y].'), but it does not in {f.prompts[0]!r}; reword the prompt"
            )
        if MULTI_TOKEN in r.skipped:
            raise LegibilityError(
                f"fact {f.id!r}: target {f.object!r} is not a single token for this model; "
                "pass --multi-token or choose a single-token object"
            )
        raise LegibilityError(f"fact {f.id!r}: no prompt is usable ({', '.join(r.skipped)})")


# ---------------------------------------------------------------------------------------------- key


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def run_key(settings: RunSettings, facts_hash: str, model: Mapping[str, str]) -> dict:
    """The flat run key: every setting (the model path resolved), the version of the scorecard's definitions
    (a run made under other definitions is recomputed, not mixed), and the content hashes of the facts and
    of the model's weights, config and tokenizer (:func:`legibility.models.identity.identity`)."""
    from legibility.metrics.scorecard import VERSION

    return {
        **_flat(asdict(settings)),
        "model": model_ref(settings.model),
        "version": VERSION,
        "facts_sha256": facts_hash,
        **model,
    }


# ---------------------------------------------------------------------------------------------- run


def run(
    settings: RunSettings,
    out_dir: str | os.PathLike,
    *,
    source: FactSource | Inputs | None = None,
    facts: Sequence[Fact] | None = None,
    lm: LoadedModel | None = None,
    force: bool = False,
    progress: bool = True,
    shard: ShardConfig | None = None,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Run (or resume) the whole job into ``out_dir`` and return its results.

    Facts come from ``source`` (a facts file or PARAREL, or its :func:`load_inputs`) or are given as
    ``facts`` (e.g. a trained model's world); ``lm`` is an already loaded model (else ``settings.model`` is
    loaded). ``force``: when ``out_dir`` holds a run with another key, start it over instead of refusing (a
    run with the same key always resumes). ``shard`` spreads the known-fact, neuron and effect stages over
    workers (Ray); it does not change the result, so it is not part of the key; nor is ``device`` (where
    ``settings.model`` is loaded: "auto", "cpu", "cuda", ...), whereas ``settings.dtype`` is. ``log``
    receives one-line progress notes (the CLI prints them). Raises :class:`LegibilityError` on bad input,
    before anything is written. The CLI makes the cheap checks (``--out``, the facts, the model name) before
    it imports torch; they are these functions, and cost nothing the second time (the hub probe is cached).
    """
    settings.validate()
    out = check_writable(out_dir)
    check_files(out, ("run.json", *RESULT_FILES))
    if (facts is None) == (source is None):
        raise LegibilityError("give the facts either as source= (a file or PARAREL) or as facts=")
    if isinstance(source, Inputs):
        inputs = source
    else:
        inputs = load_inputs(source) if source is not None else Inputs(list(facts or []), {})
    if not inputs.facts:
        raise LegibilityError("no facts to run on")
    facts_hash = facts_digest(inputs if source is not None else inputs.facts)
    if lm is None:
        check_model_name(settings.model)
        known = identity_of(settings.model)
        if known is not None:  # refuse a changed key before spending time on loading the model
            _check_key(out, run_key(settings, facts_hash, known), force)
        if not progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        from legibility.models.loading import load_model

        lm = load_model(settings.model, site=settings.site, device=device, dtype=settings.dtype)
    if lm.precision != settings.dtype:  # a model passed in runs in its own dtype: key the run with it
        settings = dataclasses.replace(settings, dtype=lm.precision)
    if inputs.user_file:
        check_user_facts(lm, inputs.facts, settings.multi_token, settings.min_prompts)
    key = run_key(settings, facts_hash, identity(lm))
    _check_key(out, key, force)
    try:
        with run_lock(out):
            return _run_locked(settings, out, key, inputs.facts, lm, force, progress, shard, log)
    except OSError as e:
        if is_disk_error(e):
            raise LegibilityError(
                f"cannot write to {out}: {e.strerror}; free space or choose another --out"
            ) from e
        raise


def _check_key(out: Path, key: dict, force: bool) -> None:
    path = out / "run.json"
    if not path.exists() or force:
        return
    old = read_key(path)
    if old is None:
        raise LegibilityError(f"{path} is damaged; rerun with --force to start this run over")
    if "weights_sha256" in old and "tokenizer_sha256" not in old:
        raise LegibilityError(
            f"{out} holds a run made by an older legibility whose run key covered the model's weights but not "
            "its config and tokenizer files (nor the resolved model path), so it cannot tell whether they "
            "changed since; rerun with --force to recompute it, or use another --out"
        )
    diff = key_diff(old, key)
    if diff:
        raise LegibilityError(
            f"{out} holds a run with other inputs ({'; '.join(diff)}); use another --out, or --force to recompute"
        )


def _run_locked(
    settings: RunSettings,
    out: Path,
    key: dict,
    facts: list[Fact],
    lm: LoadedModel,
    force: bool,
    progress: bool,
    shard: ShardConfig | None,
    log: Callable[[str], None] | None,
) -> RunResult:
    from legibility import pipeline
    from legibility.pipeline import EFFECT_KEYS, NEURON_KEYS  # noqa: F401

    note = log or (lambda _msg: None)
    _check_key(out, key, force)  # again under the lock: another run may have started meanwhile
    run_json = out / "run.json"
    if not run_json.exists() or read_key(run_json) != key:
        for name in (*RESULT_FILES, "neurons.jsonl.corrupt", "effects.jsonl.corrupt"):
            (out / name).unlink(missing_ok=True)
        atomic_write_json(run_json, key)
    spec = ModelSpec(settings.model, settings.site, dtype=settings.dtype)
    kept, report = _known_facts(settings, out, facts, lm, progress, spec, shard)
    note(f"facts: {report['kept']} known of {report['examined']} examined; dropped: {report['dropped']}")
    if not kept:  # nothing to attribute: an empty scorecard (front ends decide whether that is an error)
        card = pipeline.write_scorecard(out, [], [], key, {})
        return RunResult(out, key, report, [], [], [], card, lm.sites.n_layers)
    check_context(lm, kept)
    records = pipeline.find_neurons(
        lm,
        kept,
        out,
        settings.method,
        settings.attribution,
        settings.neurons,
        progress,
        split=settings.split,
        model=spec,
        shard=shard,
    )
    effects: list[dict] = []
    if settings.effects is not None:
        effects = pipeline.measure_effects(
            lm,
            kept,
            records,
            out,
            settings.effects,
            progress,
            split=settings.split,
            seed=settings.seed,
            method=settings.method,
            model=spec,
            shard=shard,
        )
    extra: dict[str, dict] = {}
    if settings.metrics:
        from legibility.metrics.independent import compute_metrics
        from legibility.metrics.spec import MetricContext

        ctx = MetricContext(
            lm=lm,
            facts=kept,
            neuron_records=records,
            effects=effects,
            seed=settings.seed,
            attribution_method=settings.method,
            attribution=settings.attribution,
        )
        extra = {k: v.to_dict() for k, v in compute_metrics(list(settings.metrics), ctx).items()}
    measured = effects if settings.effects is not None else None
    card = pipeline.write_scorecard(out, records, measured, key, extra, settings.seed)
    return RunResult(out, key, report, kept, records, effects, card, lm.sites.n_layers)


def _known_facts(
    settings: RunSettings,
    out: Path,
    facts: list[Fact],
    lm: LoadedModel,
    progress: bool,
    spec: ModelSpec,
    shard: ShardConfig | None,
) -> tuple[list[RenderedFact], dict]:
    """The kept facts in their saved order (facts.json), selecting them on the first run (each fact's
    answer kept in known.jsonl as it comes, so a killed scan resumes; sharded like the other stages)."""
    from legibility import pipeline
    from legibility.facts.render import render

    path = out / "facts.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            ids, report = list(saved["facts"]), dict(saved["report"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise LegibilityError(f"{path} is damaged; rerun with --force to start this run over") from None
        by_id = {f.id: f for f in facts}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise LegibilityError(
                f"{path} names facts that are not in the input ({missing[0]!r}, ...); rerun with --force"
            )
        return [render(lm, by_id[i], settings.multi_token) for i in ids], report
    selection = pipeline.select_known(
        lm,
        facts,
        settings.known,
        settings.min_prompts,
        settings.multi_token,
        settings.seed,
        progress,
        check=lambda r: check_context(lm, [r]),
        store=out / "known.jsonl",
        model=spec,
        shard=shard,
    )
    pipeline.save_selection(out, selection)
    return selection.kept, selection.report


def settings_from_key(key: Mapping[str, Any]) -> RunSettings:
    """Rebuild the settings of a run from its run.json (for reports and reruns)."""
    from legibility.attribution.base import AttributionConfig
    from legibility.metrics.effects import EffectConfig
    from legibility.neurons import NeuronConfig

    def sub(cls: type, prefix: str) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {
            k[len(prefix) :]: v for k, v in key.items() if k.startswith(prefix) and k[len(prefix) :] in names
        }
        for k, v in kw.items():
            if isinstance(v, list):
                kw[k] = tuple(v)
        return cls(**kw)

    effects = sub(EffectConfig, "effects.") if any(k.startswith("effects.") for k in key) else None
    return RunSettings(
        model=key.get("model", "smollm2-135m"),
        site=key.get("site", "ffn"),
        method=key.get("method", "ig"),
        attribution=sub(AttributionConfig, "attribution."),
        neurons=sub(NeuronConfig, "neurons."),
        known=sub(KnownConfig, "known."),
        effects=effects,
        metrics=tuple(key.get("metrics", ())),
        multi_token=bool(key.get("multi_token", False)),
        seed=int(key.get("seed", 0)),
        dtype=str(key.get("dtype", "float32")),
        holdout=float(key.get("holdout", 0.0)),
    )


def check_finished(out_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
    """The scorecard and neuron records of a finished run, read without changing anything, or a one-line
    error saying what is missing or damaged."""
    out = Path(out_dir)
    path = out / "scorecard.json"
    if not out.is_dir():
        raise LegibilityError(f"{out} is not a directory")
    if not path.exists():
        if (out / "run.json").exists():
            raise LegibilityError(
                f"{out} holds an unfinished run (no scorecard.json yet); rerun its command to finish it"
            )
        raise LegibilityError(f"{out} holds no run (no scorecard.json); run `legibility score --out {out}`")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(card, dict) or not isinstance(card.get("metrics"), dict):
            raise ValueError
    except (OSError, ValueError):
        raise LegibilityError(
            f"{path} is damaged; rerun the run's command with --force to recompute it"
        ) from None
    records = []
    neurons = out / "neurons.jsonl"
    lines = neurons.read_bytes().split(b"\n") if neurons.exists() else []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not {"fact_id", "neurons"} <= set(rec):
                raise ValueError
        except ValueError:
            raise LegibilityError(
                f"{neurons}:{i} is damaged; rerun the run's command to repair the run, then report again"
            ) from None
        records.append(rec)
    return card, records
