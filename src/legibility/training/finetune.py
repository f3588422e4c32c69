"""Finetune a pretrained model with the training lab's objectives, and measure what it costs.

``legibility finetune CONFIG.yaml --out DIR`` continues training a pretrained causal LM (the embedded
SmolLM2-135M by default, anything ``--model`` accepts) with the regularizers of
:mod:`legibility.training.regularizers` (the fact-specific objective, FFN-neuron dropout, explicit dropout,
decorrelation, ...) on general English text, then measures its cost and scores it. A run with no
regularizer is the plain continued-training control on the same data; ``train.steps: 0`` scores the
original model itself.

Data, with honest splits:

* **Facts**: PARAREL facts the *original* model knows (top-1 on at least half of its usable prompts), at most
  ``facts.per_relation`` per relation. ``facts.held_out_relations`` are never seen by an objective; in the
  other relations ``facts.fact_split`` holds out a share of the facts (never seen by an objective) and
  ``facts.held_out_templates`` a share of each relation's templates (never seen by an objective, for any
  fact). The objectives train on the objective facts' remaining templates only.
* **Text**: the language-model loss reads ``text.train``; cost is measured on ``text.held_out`` (other
  documents, never trained on).

Cost, measured two ways on the held-out text: the change of mean NLL in nats per token (``cost_nats`` =
``text_nll`` - ``text_nll.original``) and ``kl`` = KL(original || tuned) per token; plus, per fact group,
top-1 accuracy on held-out templates before and after and ``facts_lost``: the share of the group's facts
(all known before) that the tuned model no longer knows by the same criterion.

Scores, one scorecard run per group on the tuned model: held-out facts under the bare metric names (the
claim), objective facts with ``.trained_facts`` appended, held-out relations with ``.heldout_relations``.

The run is keyed: ``config.json`` (the config) and ``inputs.json`` (sha256 of the base model's weights, the
text files and the PARAREL files read); a folder holding another key is refused. Training resumes from its
last checkpoint after ``kill -9`` and ends bit-identical to an uninterrupted run (the trainer's guarantee);
cost and scores are written once each and reused. The tuned model is saved to ``DIR/model`` with
``save_pretrained`` (safetensors, adapters merged): ``legibility score --model DIR/model`` and plain
``transformers`` load it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from legibility.errors import LegibilityError
from legibility.facts.types import Fact
from legibility.metrics.table import TRAINED_FACTS
from legibility.models.loading import LoadedModel
from legibility.training.adapters import configure_updates, merge_adapters
from legibility.training.config import RANGES, FactSplit, TrainConfig, check_range, from_dict
from legibility.training.corpus import Corpus, split_facts
from legibility.training.regularizers import canonical_regularizers, parse_regularizers
from legibility.training.trainer import Trainer

HELDOUT_RELATIONS = ".heldout_relations"
GROUPS = ("", TRAINED_FACTS, HELDOUT_RELATIONS)  # metric suffixes of the three fact groups


@dataclass(frozen=True)
class FinetuneFacts:
    """PARAREL facts the original model knows, split for the objectives."""

    relations: list[str] = field(default_factory=lambda: ["P36", "P1376", "P103", "P37", "P1412", "P364"])
    held_out_relations: list[str] = field(default_factory=lambda: ["P30"])  # no objective sees them
    per_relation: int = 24  # known facts kept per relation (at most)
    scan: int = 20  # examine at most per_relation * scan candidate facts per relation
    fact_split: FactSplit = field(default_factory=FactSplit)  # held-out facts in the objective relations
    held_out_templates: float = 0.3  # share of each relation's templates no objective sees
    data_dir: str | None = None  # PARAREL folder (default: the usual search path)


@dataclass(frozen=True)
class FinetuneText:
    """General English text: what the LM loss trains on, and held-out documents for the cost."""

    train: str = "data/wikitext2/wiki_valid.txt"  # a .txt file or a folder of them
    held_out: str = "data/wikitext2/wiki_test.txt"  # other documents, never trained on
    cost_batches: int = 16  # held-out batches (train.batch_size x train.seq_len tokens) for NLL and KL


def _finetune_train() -> TrainConfig:
    return TrainConfig(
        steps=100,
        batch_size=4,
        seq_len=64,
        lr=3e-5,
        min_lr_ratio=0.1,
        warmup=10,
        weight_decay=0.0,
        log_every=5,
        eval_every=50,
        eval_batches=4,
        checkpoint_every=25,
        keep_checkpoints=1,
    )


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a `legibility finetune` run needs."""

    model: str = "smollm2-135m"  # embedded name, local directory or HF id: the model to continue training
    update: Literal["full", "ffn", "lora"] = "ffn"  # which parameters train (legibility.training.adapters)
    layers: list[int] | None = None  # layers whose FFN trains (ffn, lora; None: all)
    lora_rank: int = 8  # rank of the adapters (update: lora)
    facts: FinetuneFacts = field(default_factory=FinetuneFacts)
    text: FinetuneText = field(default_factory=FinetuneText)
    train: TrainConfig = field(default_factory=_finetune_train)  # steps may be 0: score the original
    regularizers: list[dict] = field(default_factory=list)  # as in a run config


def parse_finetune_config(data: dict) -> FinetuneConfig:
    """Validate a mapping (the YAML document) into a FinetuneConfig; errors name the offending key."""
    base = dataclasses.asdict(FinetuneConfig())
    merged = {**base, **(data or {})}
    if isinstance((data or {}).get("train"), dict):  # train keys override the finetune defaults one by one
        merged["train"] = {**base["train"], **data["train"]}
    cfg = from_dict(FinetuneConfig, merged, "config")
    parse_regularizers(cfg.regularizers)
    cfg = dataclasses.replace(cfg, regularizers=canonical_regularizers(cfg.regularizers))
    # data paths resolved before anything keys the run: a relative and an absolute path to the same file
    # are one run (their content is keyed as well, in inputs.json)
    text = dataclasses.replace(
        cfg.text, train=_resolved(cfg.text.train), held_out=_resolved(cfg.text.held_out)
    )
    facts = dataclasses.replace(
        cfg.facts, data_dir=_resolved(cfg.facts.data_dir) if cfg.facts.data_dir else None
    )
    cfg = dataclasses.replace(cfg, text=text, facts=facts)
    check_finetune(cfg)
    return cfg


def _resolved(path: str) -> str:
    p = Path(path).expanduser()
    return (
        str(p.resolve()) if p.exists() else path
    )  # a missing path stays as given, for check_finetune's error


def load_finetune_config(path: str | Path) -> FinetuneConfig:
    from legibility.training.run_config import read_yaml

    return parse_finetune_config(read_yaml(path))


def check_finetune(cfg: FinetuneConfig) -> None:
    """Range checks of the numeric fields (train.steps may be 0) and of the fact and text settings."""
    for key, lo, hi, lo_in, hi_in in RANGES:
        if key.startswith("train.") and key != "train.steps":
            check_range(key, getattr(cfg.train, key.split(".", 1)[1]), lo, hi, lo_in, hi_in)
    check_range("train.steps", cfg.train.steps, 0, None)
    f = cfg.facts
    check_range("facts.per_relation", f.per_relation, 1, None)
    check_range("facts.scan", f.scan, 1, None)
    check_range("facts.fact_split.held_out", f.fact_split.held_out, 0.0, 1.0, False, False)
    check_range("facts.held_out_templates", f.held_out_templates, 0.0, 1.0, False, False)
    check_range("text.cost_batches", cfg.text.cost_batches, 1, None)
    check_range("lora_rank", cfg.lora_rank, 1, None)
    if not f.relations:
        raise LegibilityError("facts.relations: give at least one PARAREL relation for the objectives")
    both = sorted(set(f.relations) & set(f.held_out_relations))
    if both:
        raise LegibilityError(f"facts: {', '.join(both)} cannot be both an objective and a held-out relation")
    if len(cfg.train.betas) != 2:
        raise LegibilityError(f"train.betas must be two numbers, got {cfg.train.betas}")


# ---------------------------------------------------------------------------------------------- data


@dataclass
class FactData:
    """The original model's known facts (every template) and how they are split."""

    facts: list[Fact]  # known facts with all their prompts, in a fixed order
    held_out: frozenset[str]  # held-out facts of the objective relations
    heldout_relations: frozenset[str]  # facts of the held-out relations
    objective_templates: dict[str, list[int]]  # relation -> indices of the templates objectives may use

    def group(self, suffix: str) -> list[Fact]:
        """The facts of one group: ``""`` held-out, ``.trained_facts``, ``.heldout_relations``."""
        if suffix == HELDOUT_RELATIONS:
            return [f for f in self.facts if f.id in self.heldout_relations]
        if suffix == TRAINED_FACTS:
            return [f for f in self.facts if f.id not in self.held_out | self.heldout_relations]
        return [f for f in self.facts if f.id in self.held_out]


def template_split(facts: Sequence[Fact], share: float, seed: int) -> dict[str, list[int]]:
    """relation -> sorted indices of the templates objectives may use: round(share * n) of each relation's
    n templates are held out (at least one; at least one left when n >= 2), drawn with ``seed``."""
    out: dict[str, list[int]] = {}
    for rel in sorted({f.relation for f in facts}):
        n = min(len(f.prompts) for f in facts if f.relation == rel)
        k = 0 if n < 2 else min(max(round(share * n), 1), n - 1)
        held = set(random.Random(f"templates|{seed}|{rel}").sample(range(n), k))
        out[rel] = [i for i in range(n) if i not in held]
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    h.update(path.read_bytes())
    return h.hexdigest()


def _text_files(spec: str, what: str) -> list[Path]:
    p = Path(spec).expanduser()
    files = sorted(p.rglob("*.txt")) if p.is_dir() else [p] if p.is_file() else []
    if not files:
        raise LegibilityError(
            f"{what}: {spec} is not a .txt file or a folder of them (see bench/finetune_text.py for the "
            "WikiText-2 text the docs use)"
        )
    return files


def _lines(files: list[Path]) -> list[str]:
    lines: list[str] = []
    for f in files:
        try:
            lines += [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise LegibilityError(f"{f} is not UTF-8 text ({e.reason}); convert or remove it") from e
    return lines


def _stream(lm: LoadedModel, lines: list[str]) -> Tensor:
    tok: Any = lm.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    ids = tok(lines, add_special_tokens=False)["input_ids"]
    return torch.tensor([t for row in ids for t in (*row, eos)], dtype=torch.long)


def input_digests(cfg: FinetuneConfig) -> dict:
    """The content a finetune reads besides its config: the base model's content digests (weights, config,
    tokenizer; its name for a hub id not in the cache), the PARAREL files' and the text files' sha256. Keys the run (``inputs.json``; the trainer refuses
    a folder whose run read other content) and a sweep's trial ids."""
    from legibility.models.identity import identity_of
    from legibility.run import FactSource, load_inputs

    f = cfg.facts
    pararel = load_inputs(
        FactSource(relations=tuple(f.relations + f.held_out_relations), data_dir=f.data_dir)
    )
    return {
        "model": identity_of(cfg.model) or {"name": cfg.model},  # weights, config, tokenizer digests
        "pararel": pararel.hashes,
        "text": {str(p): _sha256(p) for p in _text_files(cfg.text.train, "text.train")},
        "held_out_text": {str(p): _sha256(p) for p in _text_files(cfg.text.held_out, "text.held_out")},
    }


def known_facts(cfg: FinetuneConfig, lm: LoadedModel, cache: Path, progress: bool) -> tuple[list[Fact], dict]:
    """The facts the original model knows (cached in ``cache`` under a key of the model's content digests,
    the PARAREL files and the fact settings), with the key."""
    from legibility.models.identity import identity
    from legibility.neurons import NeuronConfig
    from legibility.pipeline import select_known
    from legibility.run import FactSource, KnownConfig, load_inputs

    f = cfg.facts
    inputs = load_inputs(FactSource(relations=tuple(f.relations + f.held_out_relations), data_dir=f.data_dir))
    key = {
        "model": identity(lm),
        "pararel": inputs.hashes,
        "relations": f.relations + f.held_out_relations,
        "per_relation": f.per_relation,
        "scan": f.scan,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = cache / f"known-{digest[:16]}.json"
    by_id = {x.id: x for x in inputs.facts}
    if path.is_file():
        ids = json.loads(path.read_text())["facts"]
    else:
        selection = select_known(
            lm,
            inputs.facts,
            KnownConfig(limit=f.per_relation, scan=f.scan),
            NeuronConfig().min_prompts,
            progress=progress,
        )
        ids = [r.fact.id for r in selection.kept]
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "facts": ids, "report": selection.report}, indent=1))
        tmp.replace(path)
    return [by_id[i] for i in ids], key


def build_fact_data(cfg: FinetuneConfig, facts: list[Fact]) -> FactData:
    f = cfg.facts
    relation_facts = frozenset(x.id for x in facts if x.relation in f.held_out_relations)
    in_objective = [x for x in facts if x.relation in f.relations]
    held = split_facts(in_objective, f.fact_split) if in_objective else frozenset()
    templates = template_split(in_objective, f.held_out_templates, f.fact_split.seed)
    return FactData(facts, held, relation_facts, templates)


def finetune_corpus(cfg: FinetuneConfig, lm: LoadedModel, data: FactData) -> Corpus:
    """The trainer's corpus: text streams, objective-template facts (train_facts) and held-out-template
    facts (eval_facts); every fact outside the objective facts is in ``held_out_ids``."""
    train = _lines(_text_files(cfg.text.train, "text.train"))
    held = _lines(_text_files(cfg.text.held_out, "text.held_out"))
    train_facts, eval_facts = [], []
    for x in data.facts:
        use = data.objective_templates.get(x.relation, list(range(len(x.prompts))))
        rest = [i for i in range(len(x.prompts)) if i not in use]
        train_facts.append(Fact(x.subject, x.relation, x.object, tuple(x.prompts[i] for i in use), x.id))
        eval_facts.append(
            Fact(x.subject, x.relation, x.object, tuple(x.prompts[i] for i in rest or use), x.id)
        )
    hidden = data.held_out | data.heldout_relations
    return Corpus(lm.tokenizer, _stream(lm, train), _stream(lm, held), train_facts, eval_facts, None, hidden)


# ---------------------------------------------------------------------------------------------- trainer


class Finetuner(Trainer):
    """The trainer on a pretrained model: the same steps, schedule, regularizers, checkpoints and resume."""

    DATA_PATHS = ("text.train", "text.held_out", "facts.data_dir")

    def __init__(
        self,
        config: FinetuneConfig,
        out_dir: str | Path,
        progress: bool = True,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        eval_facts: int = 200,
    ):
        self.cache = Path(cache_dir) if cache_dir is not None else Path(out_dir) / "cache"
        super().__init__(config, out_dir, progress, eval_facts=eval_facts, device=device)
        self._original: LoadedModel | None = None

    def _validate(self, config: Any) -> None:
        check_finetune(config)

    def _build(self, corpus: Corpus | None) -> tuple[Corpus, LoadedModel]:
        from legibility.models.loading import load_model
        from legibility.run import check_model_name

        cfg: FinetuneConfig = self.cfg
        check_model_name(cfg.model)
        lm = load_model(cfg.model, device=self.device)
        facts, _ = known_facts(cfg, lm, self.cache, self.progress)
        self.data = build_fact_data(cfg, facts)
        built = corpus or finetune_corpus(cfg, lm, self.data)
        configure_updates(lm.model, cfg.update, cfg.layers, cfg.lora_rank, seed=cfg.train.seed)
        return built, lm

    def _input_digests(self) -> dict:
        return input_digests(self.cfg)

    def _eval_queries(self, eval_facts: int) -> dict[str, list]:
        from legibility.facts.render import render

        out: dict[str, list] = {}
        eval_by_id = {f.id: f for f in self.corpus.eval_facts}
        for suffix in GROUPS:
            facts = [eval_by_id[f.id] for f in self.data.group(suffix)]
            rng = random.Random(f"eval|{self.cfg.train.seed}{suffix}")
            chosen = rng.sample(facts, min(eval_facts, len(facts)))
            out[suffix] = [pq.queries[0] for f in chosen for pq in render(self.lm, f).prompts]
        return out

    def original(self) -> LoadedModel:
        """The model as it was before finetuning (loaded once, eval mode), for KL and the before numbers."""
        if self._original is None:
            from legibility.models.loading import load_model

            self._original = load_model(self.cfg.model, device=self.device)
        return self._original

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The trainer's evaluation (``val_loss`` = held-out text NLL) plus ``kl`` = KL(original || tuned)."""
        out = super().evaluate()
        out["kl"] = self._kl(self.val)
        return out

    @torch.no_grad()
    def _kl(self, batches: Sequence[Tensor]) -> float:
        orig = self.original().model
        self.model.eval()
        total, count = 0.0, 0
        for b in batches:
            x = b[:, :-1].to(self.device)
            logp = F.log_softmax(orig(input_ids=x).logits.float(), -1)
            logq = F.log_softmax(self.model(input_ids=x).logits.float(), -1)
            total += float((logp.exp() * (logp - logq)).sum())
            count += x.numel()
        return total / count

    @torch.no_grad()
    def cost(self) -> dict:
        """Cost of the finetune on the held-out text (``cost_batches`` batches) and on each fact group."""
        from legibility.forward import predict
        from legibility.neurons import NeuronConfig
        from legibility.pipeline import select_known
        from legibility.run import KnownConfig

        cfg: FinetuneConfig = self.cfg
        batches = self.corpus.val_batches(cfg.text.cost_batches, cfg.train.batch_size, cfg.train.seq_len)
        self.model.eval()
        out: dict = {"text_nll": self._mean_loss(batches)}
        tuned = self.model
        self.model = self.original().model
        out["text_nll.original"] = self._mean_loss(batches)
        self.model = tuned
        out["cost_nats"] = out["text_nll"] - out["text_nll.original"]
        out["kl"] = self._kl(batches)
        out["cost_tokens"] = sum(b[:, 1:].numel() for b in batches)
        for suffix, lm in (("", self.lm), (".original", self.original())):
            for group, queries in self.eval_queries.items():
                if queries:
                    pred = predict(lm, queries)
                    out[f"fact_accuracy{group}{suffix}"] = float((pred.rank == 0).float().mean())
        for group in GROUPS:
            facts = self.data.group(group)
            if facts:
                min_prompts = NeuronConfig().min_prompts  # the criterion that selected them on the original
                kept = select_known(self.lm, facts, KnownConfig(), min_prompts, progress=False).kept
                out[f"facts_lost{group}"] = 1.0 - len(kept) / len(facts)
                out[f"facts{group}"] = len(facts)
        return out

    def export(self) -> Path:
        """Save the tuned model (adapters merged) and its tokenizer with save_pretrained into ``<out>/model``."""
        merge_adapters(self.model)
        return super().export()


# ---------------------------------------------------------------------------------------------- run


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def run_finetune(
    config: FinetuneConfig,
    out_dir: str | Path,
    score: Any = None,
    device: str | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> dict:
    """Finetune (or resume), measure the cost, score every fact group; returns ``{"train": final metrics
    with the cost, "metrics": scorecards by group, "known_facts...": n}``, also in ``<out>/result.json``.
    ``score`` is a :class:`legibility.training.experiment.ScoreConfig` (default: its defaults)."""
    from legibility.store import clean_temp, run_lock

    out = Path(out_dir)
    check_finetune(config)
    with run_lock(out) as lock:  # a second finetune into the folder is refused, not interleaved
        clean_temp(lock.parent, "checkpoints")
        return _run_locked(config, out, score, device, progress, cache_dir)


def _run_locked(
    config: FinetuneConfig,
    out: Path,
    score: Any,
    device: str | None,
    progress: bool,
    cache_dir: str | Path | None,
) -> dict:
    import time

    from legibility.training.experiment import ScoreConfig, score_dir, score_model

    result_path = out / "result.json"
    t0 = time.perf_counter()
    trainer = Finetuner(config, out, progress=progress, device=device, cache_dir=cache_dir)
    final = trainer.fit()
    t1 = time.perf_counter()
    cost_path = out / "cost.json"
    if cost_path.is_file():
        cost = json.loads(cost_path.read_text())
    else:
        cost = trainer.cost()
        _atomic_json(cost_path, cost)
    data = trainer.data
    del trainer  # free the two models before scoring loads the tuned one
    sc = score or ScoreConfig()
    metrics: dict = {}
    known: dict = {}
    for suffix in GROUPS:
        facts = data.group(suffix)
        if not facts:
            continue
        scored = score_model(out / "model", facts, score_dir(out, suffix), sc, device, special_tokens=None)
        metrics.update({f"{k}{suffix}": v for k, v in scored["metrics"].items()})
        known[f"known_facts{suffix}"] = scored["known_facts"]
    seconds = {"train": t1 - t0, "score": time.perf_counter() - t1}  # of this invocation (a resume: less)
    result = {"train": {**final, **cost}, "metrics": metrics, **known}
    _atomic_json(result_path, result)
    return {**result, "seconds": seconds}
