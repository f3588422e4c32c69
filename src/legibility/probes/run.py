"""Probe runs: concept probes (``legibility probe``) and the truth study (``legibility probe --truth``).

A run directory holds ``run.json`` (every setting that changes a result; a rerun with other settings is
refused), ``features/`` (cached activations, safetensors per site and layer), ``results.json`` and figures.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from legibility.errors import LegibilityError
from legibility.facts.pararel import load_pararel, pararel_files
from legibility.metrics.stats import Estimate
from legibility.models.identity import digest_files, identity, identity_of, model_ref, sha256_file
from legibility.models.loading import LoadedModel, load_model
from legibility.probes import causal
from legibility.probes.activations import cached_features, extract
from legibility.probes.concept import ProbeSettings, majority_share, probe_layers
from legibility.probes.data import (
    Example,
    encode_labels,
    load_jsonl_examples,
    pararel_examples,
    truth_statements,
)
from legibility.probes.figures import accuracy_figure, lying_figure, truth_figure
from legibility.probes.linear import accuracy_estimate, group_split
from legibility.probes.truth import (
    TruthSettings,
    first_tokens,
    fit_truth_probes,
    model_margins,
    pair_arrays,
    score_probes,
    top1_hits,
    usable_pairs,
)
from legibility.store import check_files, check_settings, check_writable, clean_temp, run_lock


def model_key(
    name: str, lm: LoadedModel | None = None, device: str | None = None, dtype: str = "float32"
) -> tuple[dict, LoadedModel | None]:
    """What keys the model of a probe run: its resolved name and the content digests of its weights, config
    and tokenizer (:mod:`legibility.models.identity`), from ``lm`` when given, else from its files; a model
    whose files are not here before loading (a hub id) is loaded and returned."""
    found = identity(lm) if lm is not None else identity_of(name)
    if found is None:
        lm = _load(name, device, dtype)
        found = identity(lm)
    return {"model": model_ref(name), **found}, lm


def data_key(cfg_source: str, relations: Sequence[str]) -> dict:
    """The content digest of the data a probe run reads: the JSONL file, or the PARAREL files of its
    relations (a changed file is a changed run)."""
    if cfg_source != "pararel":
        if not Path(cfg_source).is_file():
            what = "is a folder" if Path(cfg_source).is_dir() else "no such file"
            raise LegibilityError(
                f"--data {cfg_source}: {what}; give 'pararel' or a JSONL file of {{text, label}} lines"
            )
        return {"source_hash": sha256_file(cfg_source)}
    root, files = pararel_files(None, list(relations))
    return {"pararel_sha256": digest_files(files, root)}


def check_lengths(lm: LoadedModel, texts: Sequence[str], what: str, fix: str) -> None:
    """Refuse texts longer than the model's context before any of them is run (one line, naming one)."""
    from legibility.run import context_length

    limit = context_length(lm)
    if limit is None:
        return
    for i, t in enumerate(texts):
        if len(t) <= limit:  # a token is at least one character: no need to tokenize
            continue
        n = len(lm.encode(t[: 8 * limit]))  # enough characters to tell, without tokenizing a megabyte
        if n > limit:
            name = f"{what} {i + 1}" if len(texts) > 1 else what
            more = "more than " if len(t) > 8 * limit else ""
            raise LegibilityError(
                f"{name} is {more}{n} tokens long, more than the model's context of {limit}; {fix}"
            )


def _est(e: Estimate) -> dict:
    return e.to_dict()


def _load(model: str | LoadedModel, device: str | None = None, dtype: str = "float32") -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    lm = load_model(model, device=device, dtype=dtype)
    if lm.kind != "causal" and not lm.add_special_tokens:
        lm.add_special_tokens = True
    return lm


# ----------------------------------------------------------------------------------------- concept probes


@dataclass(frozen=True)
class ConceptConfig:
    """A concept-probe run."""

    model: str = "smollm2-135m"  # embedded name, local directory or HF id
    source: str = "pararel"  # "pararel" or a JSONL file of labelled texts
    task: str = "relation"  # PARAREL labels: "relation" or "object"
    relations: tuple[str, ...] = ("P17", "P19", "P36", "P37", "P101", "P103")  # PARAREL relations read
    facts: int = 20  # facts per relation
    position: str = "last"  # "last" token or last "subject" token
    sites: tuple[str, ...] = ("resid", "ffn")
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    dtype: str = "float32"  # the model's dtype (keyed: another dtype reads other activations)


def concept_examples(cfg: ConceptConfig) -> list[Example]:
    if cfg.source == "pararel":
        facts = load_pararel(relations=list(cfg.relations), limit=cfg.facts, seed=cfg.probe.seed)
        return pararel_examples(facts, cfg.task)
    return load_jsonl_examples(cfg.source)


def run_concept(
    cfg: ConceptConfig, out_dir: str | Path, lm: LoadedModel | None = None, device: str | None = None
) -> dict:
    """Probe every layer and site; writes run.json, features/, results.json, accuracy.png. The folder is
    held with :func:`legibility.store.run_lock` while it runs; ``device`` is where ``cfg.model`` is loaded
    (not keyed)."""
    out = check_writable(out_dir)
    check_files(out, ("run.json", "results.json", "accuracy.png"))
    model, lm = model_key(cfg.model, lm, device, cfg.dtype)
    settings = {"kind": "concept", **asdict(cfg), **model, **data_key(cfg.source, cfg.relations)}
    with run_lock(out):
        clean_temp(out, "features")
        check_settings(out, json.loads(json.dumps(settings)))
        return _run_concept(cfg, out, lm, device)


def _run_concept(cfg: ConceptConfig, out: Path, lm: LoadedModel | None, device: str | None) -> dict:
    examples = concept_examples(cfg)
    if not examples:
        raise LegibilityError("no labelled examples to probe (check --relations / --facts / the JSONL file)")
    labels, names = encode_labels(examples)
    if len(names) < 2:
        raise LegibilityError("probing needs at least two labels with enough examples")
    check_folds([e.group for e in examples], labels, names, cfg.probe.folds)
    lm = lm or _load(cfg.model, device, cfg.dtype)
    check_lengths(lm, [e.text for e in examples], "text", "shorten the texts of the --data file")
    feats = cached_features(
        lm,
        out / "features",
        [e.text for e in examples],
        [e.subject for e in examples],
        cfg.position,
        cfg.sites,
    )
    groups, types = [e.group for e in examples], [e.type or e.group for e in examples]
    layers = {
        s: [
            {k: _est(v) for k, v in r.items()}
            for r in probe_layers(feats[s], labels, groups, types, cfg.probe)
        ]
        for s in cfg.sites
    }
    chance = majority_share(labels)
    best = {s: int(np.argmax([r["accuracy"]["value"] for r in rows])) for s, rows in layers.items()}
    results = {
        "kind": "concept",
        "settings": json.loads(json.dumps(asdict(cfg))),
        "n_examples": len(examples),
        "n_groups": len(set(groups)),
        "labels": names,
        "majority": chance,
        "layers": layers,
        "best_layer": best,
    }
    title = f"{cfg.model}: probing {cfg.task if cfg.source == 'pararel' else Path(cfg.source).name}"
    accuracy_figure(layers, chance, out / "accuracy.png", title)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


# ------------------------------------------------------------------------------------------ truth study


@dataclass(frozen=True)
class TruthConfig:
    """A truth study: probes, generalization to held-out relations, steering and the lying condition."""

    model: str = "smollm2-135m"
    relations: tuple[str, ...] = ("P17", "P19", "P36", "P37", "P101", "P103", "P1412", "P30")
    held_out: tuple[str, ...] = ("P1412", "P30")  # relations only tested on
    facts: int = 20  # facts per relation
    templates: int = 2  # templates per fact
    known_only: bool = False  # keep only pairs the model judges right on the plain prompt
    truth: TruthSettings = field(default_factory=TruthSettings)
    steer_scales: tuple[float, ...] = (1.0, 2.0, 4.0)  # multiples of the mass-mean difference
    steer_random: int = 3  # random directions of the same norm
    shots: int = 4  # statements in the few-shot lying / truthful contexts
    judge_examples: int = 4  # labelled statements of the True/False framing
    dtype: str = "float32"  # the model's dtype (keyed)


def check_folds(groups: Sequence[str], labels: Sequence[int], names: Sequence[str], folds: int) -> None:
    """Cross-validation by group needs at least ``folds`` groups (an error otherwise); a label seen in one
    group only can never be learned from the other folds (a warning: its accuracy is meaningless)."""
    n_groups = len(set(groups))
    if folds < 2:
        raise LegibilityError(f"--folds must be >= 2 for cross-validation, got {folds}")
    if n_groups < folds:
        raise LegibilityError(
            f"{n_groups} group(s) of examples cannot be split into {folds} folds (a group never straddles "
            "two); give more examples or groups, or fewer --folds"
        )
    per_label: dict[int, set[str]] = {}
    for g, y in zip(groups, labels, strict=True):
        per_label.setdefault(y, set()).add(g)
    alone = [names[y] for y, gs in sorted(per_label.items()) if len(gs) < 2]
    if alone:
        warnings.warn(
            f"label(s) {', '.join(map(repr, alone[:5]))} occur in one group only: held out, they are never "
            "seen in training, so the accuracies say little; give each label at least two groups",
            RuntimeWarning,
            stacklevel=3,
        )


def _pair_rows(statements: Sequence, facts: set[str]) -> np.ndarray:
    return np.array([s.fact in facts for s in statements])


def run_truth(
    cfg: TruthConfig, out_dir: str | Path, lm: LoadedModel | None = None, device: str | None = None
) -> dict:
    """The whole truth study; writes run.json, features/, results.json and three figures. The folder is
    held with :func:`legibility.store.run_lock` while it runs."""
    out = check_writable(out_dir)
    check_files(out, ("run.json", "results.json", "truth.png", "lying.png"))
    unknown = set(cfg.held_out) - set(cfg.relations)
    if unknown or set(cfg.held_out) == set(cfg.relations):
        raise LegibilityError("--held-out must name some, not all, of the --relations")
    model, lm = model_key(cfg.model, lm, device, cfg.dtype)
    settings = {"kind": "truth", **asdict(cfg), **model, **data_key("pararel", cfg.relations)}
    with run_lock(out):
        clean_temp(out, "features")
        check_settings(out, json.loads(json.dumps(settings)))
        return _run_truth(cfg, out, lm, device)


def _run_truth(cfg: TruthConfig, out: Path, lm: LoadedModel | None, device: str | None) -> dict:
    lm = lm or _load(cfg.model, device, cfg.dtype)
    s = cfg.truth
    facts = load_pararel(relations=list(cfg.relations), limit=cfg.facts, seed=s.seed)
    statements = usable_pairs(lm, truth_statements(facts, cfg.templates, s.seed))
    if not statements:
        raise LegibilityError(
            "no usable true/false statement pairs (the model must tell the objects apart by their first "
            "token); try other --relations or more --facts"
        )
    # the longest prompt: a few-shot context of the longest statements plus the statement itself
    longest = max(statements, key=lambda st: len(st.text)).text
    check_lengths(
        lm,
        ["\n".join([longest] * (max(cfg.shots, cfg.judge_examples) + 1))],
        "a few-shot prompt of the longest statements",
        "lower --shots",
    )
    own, other = first_tokens(lm, statements)
    margins = model_margins(lm, [st.prefix for st in statements], own, other).numpy()
    if cfg.known_only:  # the model prefers the true object for this pair
        keep = [i for i in range(0, len(statements), 2) if margins[i] > 0]
        statements = [statements[j] for i in keep for j in (i, i + 1)]
        margins = np.array([margins[j] for i in keep for j in (i, i + 1)])
        own, other = first_tokens(lm, statements)
    # splits: held-out relations are test only; within the others, 25% of facts are held out
    train_rel = [st for st in statements if st.relation not in cfg.held_out]
    tr_mask, _ = group_split([st.fact for st in train_rel], 0.25, s.seed)
    train_facts = {st.fact for st, m in zip(train_rel, tr_mask, strict=True) if m}
    is_train = _pair_rows(statements, train_facts)
    is_heldrel = np.array([st.relation in cfg.held_out for st in statements])
    is_heldfact = ~is_train & ~is_heldrel
    feats = cached_features(lm, out / "features", [st.text for st in statements], None, "last", ("resid",))[
        "resid"
    ]
    y = torch.tensor([st.true for st in statements], dtype=torch.long)
    tr = np.flatnonzero(is_train)
    pairs_tr = (np.arange(0, len(tr), 2), np.arange(1, len(tr), 2))

    def subset(mask: np.ndarray) -> list:
        return [statements[i] for i in np.flatnonzero(mask)]

    per_layer: dict[str, list] = {"held_out_facts": [], "held_out_relations": []}
    fitted = fit_truth_probes(feats[tr], y[tr], s, pairs_tr)
    for layer, probes in enumerate(fitted):
        x = feats[:, layer]
        for name, mask in (("held_out_facts", is_heldfact), ("held_out_relations", is_heldrel)):
            idx = np.flatnonzero(mask)
            scored = score_probes(probes, x[idx], subset(mask), s.seed)
            per_layer[name].append({m: {k: _est(v) for k, v in d.items()} for m, d in scored.items()})
    ti, fi, pf = pair_arrays(statements)

    def model_est(mask: np.ndarray) -> dict:
        sel = mask[ti]
        return _est(
            accuracy_estimate(margins[ti][sel] > 0, [p for p, k in zip(pf, sel, strict=True) if k], s.seed)
        )

    model_judgement = {"held_out_facts": model_est(is_heldfact), "held_out_relations": model_est(is_heldrel)}
    # best layer chosen on held-out facts of the training relations, never on the held-out relations
    best = int(np.argmax([r["mass_mean"]["pair"]["value"] for r in per_layer["held_out_facts"]]))
    results: dict = {
        "kind": "truth",
        "settings": json.loads(json.dumps(asdict(cfg))),
        "n_pairs": {
            "train": int(is_train.sum() // 2),
            "held_out_facts": int(is_heldfact.sum() // 2),
            "held_out_relations": int(is_heldrel.sum() // 2),
        },
        "layers": per_layer,
        "model_judgement": model_judgement,
        "best_layer": best,
    }
    title = f"{cfg.model}: truth probes, held-out relations {', '.join(cfg.held_out)}"
    truth_figure(
        per_layer["held_out_relations"], model_judgement["held_out_relations"], out / "truth.png", title
    )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    test_mask = ~is_train
    results["steering"] = steering(lm, cfg, statements, feats, y, tr, test_mask, best)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    results["lying"] = lying(lm, cfg, statements, test_mask, fitted, own, other, out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def steering(lm, cfg: TruthConfig, statements, feats, y, tr, test_mask, layer: int) -> dict:
    """Change of m = log p(" True") - log p(" False") when the truth direction (or a random one of the same
    norm) is added at the statement's last token, on test statements; bootstrap over facts."""
    s = cfg.truth
    if layer == 0:
        layer = 1  # hidden_states[0] is the embedding output; steer after the first block at least
    x = feats[tr, layer].double()
    direction = (x[y[tr] == 1].mean(0) - x[y[tr] == 0].mean(0)).float()
    device = next(lm.model.parameters()).device
    train_st = [statements[i] for i in tr]
    rng = np.random.default_rng(s.seed)
    pick = rng.choice(len(train_st) // 2, size=min(cfg.judge_examples, len(train_st) // 2), replace=False)
    examples = [train_st[2 * i + int(rng.integers(2))] for i in sorted(pick)]
    test = [statements[i] for i in np.flatnonzero(test_mask)]
    prompts = causal.judgement_prompts(test, examples)
    truth = np.array([st.true for st in test])
    facts = [st.fact for st in test]
    base = causal.judgements(lm, prompts).numpy()
    out: dict = {
        "layer": layer,
        "direction_norm": float(direction.norm()),
        "examples": [f"{e.text} {'True' if e.true else 'False'}" for e in examples],
        "baseline_accuracy": _est(accuracy_estimate((base > 0) == truth, facts, s.seed)),
        "baseline_margin_true": float(base[truth].mean()),
        "baseline_margin_false": float(base[~truth].mean()),
        "scales": [],
    }
    randoms = causal.random_directions(
        float(direction.norm()), direction.shape[0], cfg.steer_random, s.seed, device
    )
    for scale in cfg.steer_scales:
        row: dict = {"scale": scale}
        for name, vec in (("truth_plus", direction), ("truth_minus", -direction)):
            m = causal.judgements(lm, prompts, layer, scale * vec.to(device)).numpy()
            row[name] = _est(accuracy_estimate(m - base, facts, s.seed))
        deltas = np.mean(
            [causal.judgements(lm, prompts, layer, scale * v).numpy() - base for v in randoms], 0
        )
        row["random"] = _est(accuracy_estimate(deltas, facts, s.seed))
        out["scales"].append(row)
    return out


def lying(lm, cfg: TruthConfig, statements, test_mask, fitted, own, other, out: Path) -> dict:
    """Few-shot truthful vs lying contexts: the model's pair accuracy and top-1 accuracy on the true object,
    and the mass-mean truth probe's pair accuracy per layer on the completed statements in each context."""
    s = cfg.truth
    idx = np.flatnonzero(test_mask)
    test = [statements[i] for i in idx]
    ti = np.arange(0, len(test), 2)
    facts = [test[i].fact for i in ti]
    res: dict = {"model": {}, "probe": {}}
    layers: dict[str, list[dict]] = {}
    for cond in ("plain", "truthful", "lying"):
        ctx = [
            ""
            if cond == "plain"
            else causal.few_shot_context(st, statements, cfg.shots, cond == "lying", s.seed)
            for st in test
        ]
        prefixes = [c + st.prefix for c, st in zip(ctx, test, strict=True)]
        good = [own[i] for i in idx]
        bad = [other[i] for i in idx]
        m = model_margins(lm, [prefixes[i] for i in ti], [good[i] for i in ti], [bad[i] for i in ti]).numpy()
        top1 = top1_hits(lm, [prefixes[i] for i in ti], [good[i] for i in ti])
        feats = extract(lm, [c + st.text for c, st in zip(ctx, test, strict=True)], sites=("resid",))["resid"]
        rows = []
        for layer, probes in enumerate(fitted):
            sc = score_probes({"mass_mean": probes["mass_mean"]}, feats[:, layer], test, s.seed)
            rows.append({k: _est(v) for k, v in sc["mass_mean"].items()})
        layers[cond] = rows
        res["model"][cond] = {
            "pair_accuracy": _est(accuracy_estimate(m > 0, facts, s.seed)),
            "top1_accuracy": _est(accuracy_estimate(top1, facts, s.seed)),
            "mean_margin": float(m.mean()),
        }
    res["probe"] = layers
    lying_figure(
        layers, out / "lying.png", f"{cfg.model}: truth probe in truthful vs lying few-shot contexts"
    )
    return res
