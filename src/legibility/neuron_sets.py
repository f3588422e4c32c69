"""Knowledge-neuron sets as files other tools can read, and comparisons across tools.

The exchange format (``FORMAT``, version ``VERSION``) is one JSON object, documented in docs/interop.md::

    {"format": "legibility.knowledge-neurons", "version": 1,
     "model": "smollm2-135m", "site": "ffn", "method": "ig", "source": "legibility 0.1.0",
     "settings": {...every setting of the run...},
     "facts": [{"fact_id": "...", "relation": "P36", "subject": "France", "object": "Paris",
                "prompts": ["The capital of France is"], "neurons": [[layer, index], ...]}, ...]}

Layers and neuron indices count from 0; ``site`` says which activation a neuron index refers to (see
:mod:`legibility.models.sites`), so two sets are comparable only for the same model and site.

EleutherAI's ``knowledge-neurons`` publishes its PARAREL neurons as ``{uuid: [[layer, index], ...]}`` (files
``<model>_pararel_neurons_<rank>.json``, with relation names in the sibling ``..._pararel_results_<rank>.json``);
:func:`read_neuron_set` reads those too. PARAREL facts here carry the same T-REx uuids as ids, so the two
tools' sets line up fact by fact.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from legibility.errors import LegibilityError
from legibility.metrics.stats import mean_estimate

FORMAT = "legibility.knowledge-neurons"
VERSION = 1
ELEUTHER = "EleutherAI knowledge-neurons"

Neuron = tuple[int, int]


@dataclass(frozen=True)
class FactNeurons:
    """The knowledge neurons of one fact."""

    fact_id: str
    neurons: tuple[Neuron, ...]
    relation: str = ""
    subject: str = ""
    object: str = ""
    prompts: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "fact_id": self.fact_id,
            "relation": self.relation,
            "subject": self.subject,
            "object": self.object,
            "prompts": list(self.prompts),
            "neurons": [list(n) for n in self.neurons],
        }


@dataclass
class NeuronSet:
    """Knowledge neurons of many facts, with what produced them."""

    model: str
    method: str
    facts: dict[str, FactNeurons]  # fact id -> its neurons
    site: str = "ffn"
    settings: dict = field(default_factory=dict)
    source: str = "legibility"

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "site": self.site,
            "method": self.method,
            "source": self.source,
            "settings": self.settings,
            "facts": [f.to_dict() for f in self.facts.values()],
        }


def from_run(run_dir: str | os.PathLike) -> NeuronSet:
    """The neuron set of a ``neurons``/``score`` run directory (its run.json and neurons.jsonl)."""
    from legibility.store import JsonlStore, check_idle

    run = Path(run_dir)
    if not (run / "neurons.jsonl").is_file():
        raise LegibilityError(
            f"{run} has no neurons.jsonl; give the --out directory of `legibility neurons/score`"
        )
    check_idle(run)  # not half-written by a run that is still going
    settings = _read_json(run / "run.json", "a run key") if (run / "run.json").exists() else {}
    if not isinstance(settings, dict):
        raise LegibilityError(
            f"{run / 'run.json'} is not a run key (a JSON object); rerun the run with --force"
        )
    facts = {}
    for rec in JsonlStore(run / "neurons.jsonl"):
        fid = str(rec["fact_id"])
        facts[fid] = FactNeurons(
            fid,
            _neurons(rec["neurons"], fid),
            rec.get("relation", ""),
            rec.get("subject", ""),
            rec.get("object", ""),
            tuple(rec.get("prompts", ())),
        )
    return NeuronSet(
        model=str(settings.get("model", "")),
        method=str(settings.get("method", "ig")),
        facts=facts,
        site=str(settings.get("site") or "ffn"),
        settings=settings,
        source=f"legibility {_version()}",
    )


def write_neuron_set(neuron_set: NeuronSet, path: str | os.PathLike) -> Path:
    """Write ``neuron_set`` in the exchange format (atomically: a temporary file renamed into place)."""
    from legibility.store import write_file

    return write_file(path, json.dumps(neuron_set.to_dict(), indent=1))


def _read_json(path: Path, what: str) -> object:
    """The JSON in ``path``, or a one-line error naming the file and what it should be."""
    if not path.is_file():
        raise LegibilityError(f"{path} does not exist or is not a file; give {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise LegibilityError(f"{path} is not valid JSON ({str(e)[:120]}); give {what}") from None


def read_neuron_set(path: str | os.PathLike, results: str | os.PathLike | None = None) -> NeuronSet:
    """Read a neuron set: a file in the exchange format, an EleutherAI neurons file, or a run directory.

    ``results`` is EleutherAI's companion results file (relation names per uuid); by default the sibling
    ``*_pararel_results_*.json`` is used when it exists.
    """
    p = Path(path)
    if p.is_dir():
        return from_run(p)
    if not p.exists():
        raise LegibilityError(f"{p} does not exist; give a neuron-set JSON file or a run directory")
    data = _read_json(p, "a neuron-set JSON file")
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return _from_exchange(data, p)
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return read_eleuther(p, results)
    raise LegibilityError(
        f"{p} is neither a {FORMAT} file nor an EleutherAI neurons file ({{uuid: [[layer, index], ...]}})"
    )


def _from_exchange(data: dict, p: Path) -> NeuronSet:
    if data.get("version") != VERSION:
        raise LegibilityError(
            f"{p} has format version {data.get('version')!r}; this legibility reads version {VERSION}: upgrade it"
        )
    facts = {}
    rows = data.get("facts", [])
    if not isinstance(rows, list):
        raise LegibilityError(f"{p}: 'facts' must be a list of facts")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "fact_id" not in row or "neurons" not in row:
            raise LegibilityError(f"{p}: fact #{i} lacks 'fact_id' or 'neurons'")
        fid = str(row["fact_id"])
        facts[fid] = FactNeurons(
            fid,
            _neurons(row["neurons"], fid),
            row.get("relation", ""),
            row.get("subject", ""),
            row.get("object", ""),
            tuple(row.get("prompts", ())),
        )
    return NeuronSet(
        model=str(data.get("model", "")),
        method=str(data.get("method", "")),
        facts=facts,
        site=str(data.get("site", "ffn")),
        settings=dict(data.get("settings", {})),
        source=str(data.get("source", "")),
    )


def read_eleuther(path: str | os.PathLike, results: str | os.PathLike | None = None) -> NeuronSet:
    """EleutherAI's ``{uuid: [[layer, index], ...]}`` neurons file as a NeuronSet.

    The model is taken from the file name (``bert-base-uncased_pararel_neurons_0.json``); relation names come
    from the results file when there is one. Their sites are the BERT intermediate activation and, for GPT-2,
    the pre-activation: our ``eleuther`` site variant.
    """
    p = Path(path)
    shape = "an EleutherAI neurons file ({uuid: [[layer, index], ...]})"
    data = _read_json(p, shape)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise LegibilityError(f"{p} is not {shape}")
    relations: dict[str, str] = {}
    res = Path(results) if results else p.with_name(p.name.replace("_neurons_", "_results_"))
    if results and not res.is_file():
        raise LegibilityError(f"--results {res} does not exist; give EleutherAI's *_pararel_results_*.json")
    if res != p and res.exists():
        relations = _eleuther_relations(res, given=bool(results))
    match = re.match(r"(.+?)_pararel_neurons", p.name)
    facts = {
        str(uuid): FactNeurons(str(uuid), _neurons(neurons, str(uuid)), relations.get(str(uuid), ""))
        for uuid, neurons in data.items()
    }
    return NeuronSet(
        model=match.group(1) if match else "",
        method="ig",
        facts=facts,
        site="eleuther",
        settings={"file": p.name},
        source=ELEUTHER,
    )


def _eleuther_relations(path: Path, given: bool) -> dict[str, str]:
    """uuid -> relation name from EleutherAI's results file ``{uuid: {"relation_name": ..., ...}}``."""
    how = "" if given else " (found beside the neurons file; pass --results to name another)"
    shape = "EleutherAI's results file ({uuid: {relation_name: ..., ...}})"
    data = _read_json(path, shape + how)
    if (
        not isinstance(data, dict)
        or data.get("format") == FORMAT
        or not all(isinstance(v, dict) for v in data.values())
    ):
        raise LegibilityError(f"{path} is not {shape}{how}")
    return {str(k): str(v.get("relation_name", "")) for k, v in data.items()}


def _neurons(raw: object, fid: str) -> tuple[Neuron, ...]:
    """Sorted, de-duplicated (layer, index) pairs; a clear error for anything else."""
    try:
        if isinstance(raw, str | bytes | dict):
            raise TypeError(raw)
        pairs = [(int(layer), int(index)) for layer, index in raw]  # type: ignore[attr-defined]
        if any(isinstance(x, bool | float) for pair in raw for x in pair):  # type: ignore[attr-defined]
            raise TypeError(raw)
    except (TypeError, ValueError) as e:
        raise LegibilityError(
            f"fact {fid!r}: neurons must be [[layer, index], ...], got {str(raw)[:80]}"
        ) from e
    if any(layer < 0 or index < 0 for layer, index in pairs):
        raise LegibilityError(f"fact {fid!r}: layers and neuron indices count from 0, got {str(raw)[:80]}")
    return tuple(sorted(set(pairs)))


def jaccard(a: set | frozenset, b: set | frozenset) -> float:
    """|a & b| / |a | b|; 1.0 for two empty sets (both tools agree the fact has no neurons)."""
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def compare(a: NeuronSet, b: NeuronSet) -> dict:
    """How far two neuron sets agree on the facts they share.

    Per fact: the Jaccard index of the two sets, their sizes and intersection. Overall: mean Jaccard with a
    95% bootstrap interval over shared facts, the pooled (micro) Jaccard, the share of facts with identical
    and with disjoint sets, and the mean Jaccard per relation. ``warnings`` says when the sets come from
    different models or sites (then indices name different neurons and the comparison is meaningless).
    """
    shared = [fid for fid in a.facts if fid in b.facts]
    per_fact = []
    inter_total = union_total = 0
    by_relation: dict[str, list[float]] = defaultdict(list)
    for fid in shared:
        x, y = set(a.facts[fid].neurons), set(b.facts[fid].neurons)
        j = jaccard(x, y)
        inter_total += len(x & y)
        union_total += len(x | y)
        rel = a.facts[fid].relation or b.facts[fid].relation
        by_relation[rel].append(j)
        per_fact.append(
            {"fact_id": fid, "relation": rel, "jaccard": j, "a": len(x), "b": len(y), "both": len(x & y)}
        )
    js = np.array([r["jaccard"] for r in per_fact], dtype=float)
    warnings = []
    if a.model and b.model and Path(a.model).name != Path(b.model).name:
        warnings.append(f"different models ({a.model} vs {b.model}): neuron indices are not comparable")
    if a.site != b.site:
        warnings.append(f"different sites ({a.site} vs {b.site}): the same index may name another activation")
    if not shared:
        warnings.append("the two sets share no fact id")
    return {
        "a": {"model": a.model, "site": a.site, "source": a.source, "facts": len(a.facts)},
        "b": {"model": b.model, "site": b.site, "source": b.source, "facts": len(b.facts)},
        "shared_facts": len(shared),
        "only_a": len(a.facts) - len(shared),
        "only_b": len(b.facts) - len(shared),
        "mean_jaccard": mean_estimate(js).to_dict(),
        "micro_jaccard": inter_total / union_total if union_total else float("nan"),
        "identical_share": float(np.mean(js == 1.0)) if len(js) else float("nan"),
        "disjoint_share": float(np.mean(js == 0.0)) if len(js) else float("nan"),
        "by_relation": {rel: float(np.mean(v)) for rel, v in sorted(by_relation.items())},
        "per_fact": per_fact,
        "warnings": warnings,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("legibility")
    except PackageNotFoundError:
        return "dev"
