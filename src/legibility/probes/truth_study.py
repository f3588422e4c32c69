"""The truth study (``legibility probe-truth``): truth probes on true/false PARAREL statements, object-identity
controls, the model's own judgement, steering with the truth direction and the lying condition.

Facts. ``scan`` facts per relation are drawn (seeded); by default only those the model answers correctly are
kept (:func:`legibility.probes.truth.known_facts`), at most ``facts`` per relation.

Splits, all by fact. The ``held_out`` relations are test only (``held_out_relations``). The facts of the
other relations are split within each relation into ``train`` (the probes are fit on them), ``validation``
(the layer of every probe is chosen on them) and ``held_out_facts`` (test). Test facts never choose anything.

False statements. ``balanced`` (default): within each split and relation the false objects are a
permutation of the true ones (:func:`legibility.probes.data.balanced_false_objects`), so every object is
claimed as often falsely as truly and its identity carries no label information; ``uniform``: one false
object drawn uniformly from the relation's other objects (the original construction, where rare objects are
mostly false).

Headline. For every probe: pair accuracy on the test splits at the layer chosen on validation, with a 95%
BCa bootstrap interval over test facts; beside it the score at the layer fixed in advance (2/3 depth), the
object-identity controls and the model's own judgement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from legibility.errors import LegibilityError
from legibility.facts.pararel import load_pararel
from legibility.facts.types import Fact
from legibility.models.loading import LoadedModel
from legibility.probes import causal
from legibility.probes.activations import cached_features, extract
from legibility.probes.data import (
    Statement,
    balanced_false_objects,
    statement_prefixes,
    truth_statements,
    uniform_false_objects,
)
from legibility.probes.figures import lying_figure, truth_figure
from legibility.probes.keys import check_lengths, data_key, load_probe_model, model_key
from legibility.probes.selection import choose_layer, fixed_layer, split_by_relation
from legibility.probes.stats import accuracy_estimate, paired_difference
from legibility.probes.truth import (
    KNOWN,
    TruthSettings,
    first_token,
    first_tokens,
    fit_truth_probes,
    known_facts,
    next_token_readout,
    object_controls,
    object_embeddings,
    object_onehot,
    pair_arrays,
    pair_correct,
    score_probes,
    usable_pairs,
)
from legibility.store import (
    atomic_write_json,
    check_files,
    check_settings,
    check_writable,
    clean_temp,
    run_lock,
)

SPLITS = ("train", "validation", "held_out_facts", "held_out_relations")
TESTS = ("held_out_facts", "held_out_relations")
FALSE_OBJECTS = ("balanced", "uniform")


@dataclass(frozen=True)
class TruthConfig:
    """A truth study: probes, generalization to held-out relations, steering and the lying condition."""

    model: str = "smollm2-135m"  # embedded name, local directory or HF id
    relations: tuple[str, ...] = ("P17", "P19", "P36", "P37", "P101", "P103", "P1412", "P30")
    held_out: tuple[str, ...] = ("P1412", "P30")  # relations only tested on
    facts: int = 20  # facts kept per relation (at most; known ones unless known="all")
    scan: int = 100  # facts drawn per relation to find them among
    templates: int = 2  # templates per fact
    known: str = "candidates"  # which facts: "candidates", "top1" or "all" (see truth.known_facts)
    false_objects: str = "balanced"  # "balanced" (each object as often false as true) or "uniform"
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)  # train / validation / test shares, per relation
    fixed_depth: float = 2 / 3  # the layer fixed in advance, as a share of the depth
    truth: TruthSettings = field(default_factory=TruthSettings)
    steer_scales: tuple[float, ...] = (
        1.0,
        2.0,
        4.0,
    )  # multiples of the mass-mean difference; () = no steering
    steer_random: int = 3  # random directions of the same norm
    shots: int = 4  # statements in the few-shot lying / truthful contexts; 0 = no lying condition
    judge_examples: int = 4  # labelled statements of the True/False framing
    dtype: str = "float32"  # the model's dtype (keyed)


def _est(e) -> dict:
    return e.to_dict()


def check_config(cfg: TruthConfig) -> None:
    """One-line errors for settings the study cannot run with."""
    unknown = set(cfg.held_out) - set(cfg.relations)
    if unknown or set(cfg.held_out) == set(cfg.relations):
        raise LegibilityError("--held-out must name some, not all, of the --relations")
    if cfg.known not in KNOWN:
        raise LegibilityError(f"--known must be one of {', '.join(KNOWN)} (got {cfg.known!r})")
    if cfg.false_objects not in FALSE_OBJECTS:
        raise LegibilityError(f"--false-objects must be one of {', '.join(FALSE_OBJECTS)}")
    if len(cfg.split) != 3 or min(cfg.split) <= 0:
        raise LegibilityError("the train / validation / test split needs three positive shares")
    if cfg.facts < 4 or cfg.scan < cfg.facts:
        raise LegibilityError("--facts must be >= 4 (to split each relation three ways) and <= --scan")


def select_facts(
    lm: LoadedModel, cfg: TruthConfig, cache: Path | None = None
) -> tuple[dict[str, list[Fact]], dict]:
    """Split name -> facts (known ones unless ``known="all"``), and the known-facts report. With ``cache``
    (a file in the run directory, which its settings key), the known facts are read back from a previous
    (e.g. killed) run instead of asking the model again."""
    s = cfg.truth
    pool = load_pararel(relations=list(cfg.relations), limit=cfg.scan, seed=s.seed)

    def ask() -> dict:
        kept, report = known_facts(lm, pool, cfg.templates, cfg.known, cfg.facts)
        return {"ids": [f.id for f in kept], "report": report}

    got = ask() if cache is None else _stage(cache, ask)
    ids = set(got["ids"])
    kept, report = [f for f in pool if f.id in ids], got["report"]
    by_rel: dict[str, list[str]] = {}
    for f in kept:
        if f.relation not in cfg.held_out:
            by_rel.setdefault(f.relation, []).append(f.id)
    parts = split_by_relation(by_rel, cfg.split, s.seed)
    names = dict(zip(SPLITS[:3], parts, strict=True))
    out: dict[str, list[Fact]] = {k: [] for k in SPLITS}
    for f in kept:
        if f.relation in cfg.held_out:
            out["held_out_relations"].append(f)
        else:
            out[next(k for k, ids in names.items() if f.id in ids)].append(f)
    return out, report


def build_statements(
    lm: LoadedModel, cfg: TruthConfig, facts: dict[str, list[Fact]]
) -> tuple[list[Statement], np.ndarray]:
    """Statements of every split (true, false, true, false, ...; train first) and each one's split name."""
    s = cfg.truth
    everything = [f for k in SPLITS for f in facts[k]]
    uniform = uniform_false_objects(everything, s.seed)  # across splits, as in the original construction

    def key(f: Fact) -> int:  # group by first token: no pair's two objects share it
        return first_token(lm, statement_prefixes(f, cfg.templates)[0], f.object)

    statements: list[Statement] = []
    split: list[str] = []
    for name in SPLITS:
        fs = [f for f in facts[name] if statement_prefixes(f, cfg.templates)]
        chosen = balanced_false_objects(fs, s.seed, key) if cfg.false_objects == "balanced" else uniform
        got = usable_pairs(lm, truth_statements(fs, cfg.templates, s.seed, chosen))
        statements += got
        split += [name] * len(got)
    return statements, np.array(split)


def object_balance(statements: Sequence[Statement]) -> float:
    """sum over objects |claimed truly - claimed falsely| / statements: 0 when identity carries no label."""
    counts: dict[str, int] = {}
    for st in statements:
        counts[st.obj] = counts.get(st.obj, 0) + (1 if st.true else -1)
    return float(sum(abs(c) for c in counts.values()) / max(len(statements), 1))


def score_layers(
    fitted: Sequence[dict[str, object]],
    feats: Tensor,
    statements: Sequence[Statement],
    split: np.ndarray,
    splits: Sequence[str],
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Split name -> per layer -> probe -> {"statement", "pair"} accuracy (dicts with CIs over facts) of the
    probes ``fitted[layer]`` on the rows of ``feats`` [n, layers, d] in that split."""
    out: dict[str, list[dict]] = {k: [] for k in splits}
    for layer, probes in enumerate(fitted):
        for name in splits:
            idx = np.flatnonzero(split == name)
            sc = score_probes(probes, feats[idx, layer], [statements[int(i)] for i in idx], seed)
            out[name].append({m: {k: _est(v) for k, v in d.items()} for m, d in sc.items()})
    return out


def truth_headline(per_layer: dict[str, list[dict]], fixed: int) -> dict[str, dict]:
    """Per probe: the layer with the best validation pair accuracy, its validation and test scores there,
    and the test scores at the ``fixed`` layer. Test scores never choose the layer."""
    out = {}
    for method in per_layer["validation"][0]:
        chosen = choose_layer([r[method]["pair"]["value"] for r in per_layer["validation"]])
        out[method] = {
            "chosen_layer": chosen,
            "validation": per_layer["validation"][chosen][method],
            **{k: per_layer[k][chosen][method] for k in TESTS},
            "fixed_layer": fixed,
            "fixed": {k: per_layer[k][fixed][method] for k in TESTS},
        }
    return out


def run_truth(
    cfg: TruthConfig, out_dir: str | Path, lm: LoadedModel | None = None, device: str | None = None
) -> dict:
    """The whole truth study; writes run.json, features/, results.json and two figures. The folder is held
    with :func:`legibility.store.run_lock` while it runs; ``device`` is where ``cfg.model`` is loaded (not
    keyed)."""
    out = check_writable(out_dir)
    check_files(out, ("run.json", "results.json", "known.json", "truth.png", "lying.png"))
    check_config(cfg)
    model, lm = model_key(cfg.model, lm, device, cfg.dtype)
    settings = {"kind": "truth", **asdict(cfg), **model, **data_key("pararel", cfg.relations)}
    with run_lock(out):
        clean_temp(out, "features")
        check_settings(out, json.loads(json.dumps(settings)))
        return _run_truth(cfg, out, lm, device)


def _run_truth(cfg: TruthConfig, out: Path, lm: LoadedModel | None, device: str | None) -> dict:
    lm = lm or load_probe_model(cfg.model, device, cfg.dtype)
    s = cfg.truth
    facts, known_report = select_facts(lm, cfg, out / "known.json")
    statements, split = build_statements(lm, cfg, facts)
    if not all((split == k).any() for k in SPLITS):
        empty = [k for k in SPLITS if not (split == k).any()]
        raise LegibilityError(
            f"no usable statements in split(s) {', '.join(empty)}: raise --facts or --scan, or use --known all"
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
    ti, _, pf = pair_arrays(statements)
    # log p(true) - log p(false) after each pair's prompt (shared by its two statements)
    margins = next_token_readout(
        lm, [statements[i].prefix for i in ti], [own[i] for i in ti], [other[i] for i in ti]
    )[0].numpy()
    feats = cached_features(lm, out / "features", [st.text for st in statements], None, "last", ("resid",))[
        "resid"
    ]
    y = torch.tensor([st.true for st in statements], dtype=torch.long)
    tr = np.flatnonzero(split == "train")
    pairs_tr = (np.arange(0, len(tr), 2), np.arange(1, len(tr), 2))
    fitted = fit_truth_probes(feats[tr], y[tr], s, pairs_tr)

    def subset(name: str) -> list[Statement]:
        return [statements[i] for i in np.flatnonzero(split == name)]

    scored_splits = ("validation", *TESTS)
    per_layer = score_layers(fitted, feats, statements, split, scored_splits, s.seed)
    n_layers = len(fitted)
    fixed = fixed_layer(n_layers, cfg.fixed_depth)
    headline = truth_headline(per_layer, fixed)
    # object-identity controls: probes that see only the claimed object
    vocab = sorted({statements[i].obj for i in tr})
    control_feats = {
        "object_onehot": object_onehot(statements, vocab),
        "object_embedding": object_embeddings(lm, statements),
    }
    controls = object_controls(control_feats, tr, y, s.weight_decay)
    control_scores = {
        name: {
            k: rows[0][name]
            for k, rows in score_layers(
                [{name: probe}], control_feats[name][:, None], statements, split, scored_splits, s.seed
            ).items()
        }
        for name, probe in controls.items()
    }

    def model_est(name: str) -> dict:
        sel = split[ti] == name
        return _est(
            accuracy_estimate(margins[sel] > 0, [p for p, k in zip(pf, sel, strict=True) if k], s.seed)
        )

    results: dict = {
        "kind": "truth",
        "settings": json.loads(json.dumps(asdict(cfg))),
        "known_facts": known_report,
        "n_facts": {k: len({st.fact for st in subset(k)}) for k in SPLITS},
        "n_pairs": {k: int((split == k).sum() // 2) for k in SPLITS},
        "object_imbalance": {k: object_balance(subset(k)) for k in SPLITS},
        "n_layers": n_layers,
        "fixed_layer": fixed,
        "layers": per_layer,
        "headline": headline,
        "controls": control_scores,
        "model_judgement": {k: model_est(k) for k in scored_splits},
    }
    title = f"{cfg.model}: truth probes ({cfg.known} facts, {cfg.false_objects} false objects)"
    truth_figure(per_layer, headline, results["model_judgement"], control_scores, out / "truth.png", title)
    atomic_write_json(out / "results.json", results)
    test_mask = np.isin(split, TESTS)
    mm_layer = headline["mass_mean"]["chosen_layer"]
    if cfg.steer_scales:
        results["steering"] = _stage(
            out / "steering.json", lambda: steering(lm, cfg, statements, feats, y, tr, test_mask, mm_layer)
        )
        atomic_write_json(out / "results.json", results)
    if cfg.shots > 0:
        results["lying"] = _stage(
            out / "lying.json",
            lambda: lying(lm, cfg, statements, test_mask, fitted, mm_layer, own, other, feats[test_mask]),
        )
        lying_figure(
            results["lying"]["probe"],
            mm_layer,
            out / "lying.png",
            f"{cfg.model}: mass-mean truth probe in plain, truthful and lying few-shot contexts",
        )
        atomic_write_json(out / "results.json", results)
    return results


def _stage(path: Path, compute) -> dict:
    """A slow stage's result, read back when a killed or repeated run already wrote it (the run directory is
    keyed by its settings, so the file belongs to this run)."""
    if path.exists():
        return json.loads(path.read_text())
    res = compute()
    atomic_write_json(path, res)
    return res


def steering(lm, cfg: TruthConfig, statements, feats: Tensor, y: Tensor, tr, test_mask, layer: int) -> dict:
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
    for scale in tqdm(cfg.steer_scales, desc="steering with the truth direction", unit="scale"):
        row: dict = {"scale": scale}
        moved = {}
        for name, vec in (("truth_plus", direction), ("truth_minus", -direction)):
            moved[name] = causal.judgements(lm, prompts, layer, scale * vec.to(device)).numpy() - base
            row[name] = _est(accuracy_estimate(moved[name], facts, s.seed))
        deltas = np.mean(
            [causal.judgements(lm, prompts, layer, scale * v).numpy() - base for v in randoms], 0
        )
        row["random"] = _est(accuracy_estimate(deltas, facts, s.seed))
        # paired on the same statements: the truth direction's change minus the random directions' change
        row["truth_plus_vs_random"] = paired_difference(deltas, moved["truth_plus"], facts, s.seed)[
            "difference"
        ]
        out["scales"].append(row)
    return out


CONDITIONS = ("plain", "truthful", "lying")
COMPARISONS = (("truthful", "lying"), ("plain", "lying"), ("plain", "truthful"))


def lying(lm, cfg: TruthConfig, statements, test_mask, fitted, layer: int, own, other, plain: Tensor) -> dict:
    """Few-shot truthful vs lying contexts on the test statements: the model's pair accuracy and top-1
    accuracy on the true object, and the mass-mean truth probe's pair accuracy per layer on the completed
    statements in each context. ``paired``: every comparison of two contexts on the same pairs (difference
    b - a over facts with a BCa bootstrap, McNemar's exact test on the pairs), for the model and for the
    probe at ``layer`` (its layer chosen on validation). ``plain``: the features [n_test, layers, d] of the test
    statements without context."""
    s = cfg.truth
    idx = np.flatnonzero(test_mask)
    test = [statements[i] for i in idx]
    ti = np.arange(0, len(test), 2)
    facts = [test[i].fact for i in ti]
    good, bad = [own[i] for i in idx], [other[i] for i in idx]
    outcomes: dict[str, dict[str, np.ndarray]] = {}
    res: dict = {"model": {}, "probe": {}, "layer": layer, "paired": {}}
    for cond in tqdm(CONDITIONS, desc="lying condition", unit="context"):
        ctx = [
            ""
            if cond == "plain"
            else causal.few_shot_context(st, statements, cfg.shots, cond == "lying", s.seed)
            for st in test
        ]
        prefixes = [c + st.prefix for c, st in zip(ctx, test, strict=True)]
        margin, top1 = next_token_readout(
            lm, [prefixes[i] for i in ti], [good[i] for i in ti], [bad[i] for i in ti]
        )
        m = margin.numpy()
        if cond == "plain":  # the study's own features of these statements (same texts, no context)
            feats = plain
        else:
            texts = [c + st.text for c, st in zip(ctx, test, strict=True)]
            feats = extract(lm, texts, sites=("resid",))["resid"]
        rows = []
        for li, probes in enumerate(fitted):
            sc = score_probes({"mass_mean": probes["mass_mean"]}, feats[:, li], test, s.seed)
            rows.append({k: _est(v) for k, v in sc["mass_mean"].items()})
        score = fitted[layer]["mass_mean"].scores(feats[:, layer])[:, 0].cpu().numpy()
        outcomes[cond] = {
            "model_pair": (m > 0).astype(float),
            "model_top1": top1.astype(float),
            "probe_pair": pair_correct(score[ti], score[ti + 1]).astype(float),
        }
        res["probe"][cond] = rows
        res["model"][cond] = {
            "pair_accuracy": _est(accuracy_estimate(outcomes[cond]["model_pair"], facts, s.seed)),
            "top1_accuracy": _est(accuracy_estimate(outcomes[cond]["model_top1"], facts, s.seed)),
            "mean_margin": float(m.mean()),
            "probe_pair_accuracy": _est(accuracy_estimate(outcomes[cond]["probe_pair"], facts, s.seed)),
        }
    for a, b in COMPARISONS:
        res["paired"][f"{b}-{a}"] = {
            k: paired_difference(outcomes[a][k], outcomes[b][k], facts, s.seed) for k in outcomes[a]
        }
    return res
