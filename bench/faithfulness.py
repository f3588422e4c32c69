"""Which attribution method finds neurons that actually remove the fact: fast methods against exact IG and
against ground truth, on SmolLM2-135M and PARAREL (issue 21).

    PYTHONPATH=src python bench/faithfulness.py --facts 36 --out runs/faithfulness

Sample: known facts (top-1 on at least half of their usable prompts) from every PARAREL relation, at most
``--per-relation`` per relation (the control pool), of which ``--facts`` are drawn (seeded). Each fact's
prompts are split as the runner splits them (:class:`legibility.facts.split.PromptSplit`): the *selection*
prompts are attributed, every effect is measured on the *held-out* prompts.

Per fact and method (all methods of a fact back to back, in an order rotated per fact, one torch thread):
* time to attribute the selection prompts (``attribute_prompts``, as the neuron stage calls it);
* Spearman of the scores with exact ``ig``'s (per selection prompt, over all neurons) and Jaccard of the
  refined knowledge-neuron sets (paper thresholds, as ``NeuronStage``);
* true per-neuron effect: each neuron of the union of every method's top ``--candidates`` (mean score over
  the selection prompts) zeroed alone, the relative drop (p_before - p_after) / p_before of mean p(correct)
  over the held-out prompts; each method's Spearman with it over those candidates;
* for each k of ``--ks`` (default 1..32), the method's top-k neurons zeroed: own drop (held-out), drop with
  as many random neurons per layer, collateral drop on each control tier (same relation, same object, same
  subject, other relation: up to ``--controls`` facts per tier, ``--control-prompts`` prompts each), and the
  v2 specific headline s_f = clip(own - random, 0, 1) * prod (1 - collateral) from
  ``legibility.metrics.scorecard`` (its ``drop`` and ``FactScore``); the same for the method's refined set,
  and for its top-k at k = the size of exact IG's refined set of that fact.
Aggregates: means over facts with 95% BCa bootstrap intervals (``legibility.metrics.stats``), and paired
differences from ``ig`` with their intervals. Ablations run on the engine (``suppressed_probs``: prefix
cached, the answer token alone per ablation), checked against the plain intervention on the first fact.

Writes one JSON per fact into ``OUT/facts/`` as it finishes (a rerun resumes), then ``OUT/results.json``,
a markdown summary (``OUT/summary.md``) and the figure ``--figure``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from legibility import load_model, load_pararel
from legibility.attribution import AttributionConfig, attribute_prompts, prepare_facts
from legibility.attribution.ablation import suppressed_probs
from legibility.facts.split import PromptSplit
from legibility.facts.types import PromptQueries, RenderedFact
from legibility.forward import predict
from legibility.interventions import Intervention, group_by_layer
from legibility.metrics.effects import control_tier, random_neurons
from legibility.metrics.scorecard import TIERS, FactScore, drop
from legibility.metrics.stats import mean_estimate
from legibility.neurons import NeuronConfig, knowledge_neurons
from legibility.pipeline import KnownConfig, select_known

# "name:first" is ig-prefilter with that first stage
METHODS = [
    "ig",
    "ig-prefilter:relp",
    "ig-prefilter:grad-x-act",
    "relp",
    "relp-mean",
    "relp-corrupt",
    "grad-x-act",
    "atp-mean",
    "atp-corrupt",
]
EXACT = "ig"


def top_neurons(mean: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The k neurons [(layer, index)] with the largest mean score."""
    idx = torch.topk(mean.flatten(), k).indices.tolist()
    width = mean.shape[1]
    return [(i // width, i % width) for i in idx]


def controls_of(fact: RenderedFact, pool: Sequence[RenderedFact], n: int, seed: int) -> dict[str, list]:
    """Up to n control facts per tier (as the effect runner picks them: seeded by the fact)."""
    rng = random.Random(f"{seed}|{fact.fact.id}")
    tiers: dict[str, list[RenderedFact]] = {t: [] for t in TIERS}
    for r in pool:
        if (tier := control_tier(fact.fact, r.fact)) is not None:
            tiers[tier].append(r)
    return {t: rng.sample(c, min(n, len(c))) for t, c in tiers.items()}


class Measure:
    """Mean p(correct) of prompt groups under many neuron sets, in one batched ablation call."""

    def __init__(self, lm, groups: dict[str, list[PromptQueries]]):
        self.lm = lm
        self.groups = groups
        self.queries = []
        self.owner: list[tuple[str, int]] = []  # query -> (group, prompt index)
        for name, prompts in groups.items():
            for i, p in enumerate(prompts):
                for q in p.queries:
                    self.queries.append(q)
                    self.owner.append((name, i))
        self.sets: list[tuple[tuple[int, int], ...]] = [()]
        self.index: dict[tuple, int] = {(): 0}
        self.wanted: set[tuple[int, str]] = {(0, g) for g in groups}

    def add(self, neurons: Sequence[tuple[int, int]], groups: Sequence[str]) -> int:
        key = tuple(sorted(set(map(tuple, neurons))))
        if key not in self.index:
            self.index[key] = len(self.sets)
            self.sets.append(key)
        s = self.index[key]
        self.wanted |= {(s, g) for g in groups}
        return s

    def run(self) -> dict[tuple[int, str], float]:
        rows = [
            (qi, s)
            for s in range(len(self.sets))
            for qi, (g, _) in enumerate(self.owner)
            if (s, g) in self.wanted
        ]
        probs = suppressed_probs(self.lm, self.queries, [list(x) for x in self.sets], rows).cpu().numpy()
        per_prompt: dict[tuple[int, str, int], float] = {}
        for (qi, s), p in zip(rows, probs, strict=True):
            g, i = self.owner[qi]
            per_prompt[(s, g, i)] = per_prompt.get((s, g, i), 1.0) * float(p)  # product over target tokens
        out: dict[tuple[int, str], list[float]] = {}
        for (s, g, _), p in per_prompt.items():
            out.setdefault((s, g), []).append(p)
        return {k: float(np.mean(v)) for k, v in out.items()}


def check_ablation(lm, prompts: list[PromptQueries], neurons: list[tuple[int, int]]) -> None:
    """The batched ablation equals the plain intervention (run once, on the first fact)."""
    m = Measure(lm, {"own": prompts})
    s = m.add(neurons, ["own"])
    got = m.run()[(s, "own")]
    with Intervention(group_by_layer(neurons), "suppress").apply(lm):
        probs = predict(lm, [q for p in prompts for q in p.queries]).prob
    expected = float(probs.mean())  # single-token prompts
    assert abs(got - expected) <= 1e-4 * max(expected, 1e-12), (got, expected)


def score_set(p: dict, before: dict, s: int, r: int, tiers: dict[str, list[str]]) -> dict:
    """Own, random and tier drops of set s (random counterpart r) and the v2 terms."""
    own = drop(before["own"], p[(s, "own")])
    rnd = drop(before["own"], p[(r, "own")])
    collateral = {
        t: float(np.mean([drop(before[g], p[(s, g)]) for g in groups]))
        for t, groups in tiers.items()
        if groups
    }
    fs = FactScore(own, rnd, collateral)
    return {"own": own, "random": rnd, **collateral, "own_excess": fs.own_excess, "specific": fs.specific}


def measure_fact(lm, fact, pool, methods, args, split, cfg, check: bool) -> dict:
    sel, held = split.split(fact)
    ncfg = NeuronConfig(min_prompts=1)  # as the neuron stage: refined over the selection prompts
    order = (
        methods[fact_index(fact, args) % len(methods) :] + methods[: fact_index(fact, args) % len(methods)]
    )
    times, scores = {}, {}
    for m in order:
        name, _, first = m.partition(":")
        mcfg = dataclasses.replace(cfg, prefilter=first) if first else cfg
        t = time.perf_counter()
        scores[m] = attribute_prompts(lm, sel, name, mcfg).cpu()  # [selection prompts, layers, neurons]
        times[m] = time.perf_counter() - t
    means = {m: s.mean(0) for m, s in scores.items()}
    refined = {
        m: [tuple(n) for n in knowledge_neurons(fact.fact.id, fact.fact.relation, s, ncfg).neurons]
        for m, s in scores.items()
    }
    # control prompt groups
    controls = controls_of(fact, pool, args.controls, args.seed)
    groups: dict[str, list[PromptQueries]] = {"own": list(held)}
    tiers: dict[str, list[str]] = {}
    for tier, facts in controls.items():
        tiers[tier] = []
        for c in facts:
            rng = random.Random(f"{args.seed}|{c.fact.id}|controls")
            chosen = sorted(rng.sample(range(len(c.prompts)), min(args.control_prompts, len(c.prompts))))
            groups[c.fact.id] = [c.prompts[i] for i in chosen]
            tiers[tier].append(c.fact.id)
    control_groups = [g for gs in tiers.values() for g in gs]
    if check:
        check_ablation(lm, list(held), top_neurons(means[EXACT], 8))
    measure = Measure(lm, groups)
    # true per-neuron effects over the union of the methods' top candidates
    candidates = sorted({n for m in methods for n in top_neurons(means[m], args.candidates)})
    single = {n: measure.add([n], ["own"]) for n in candidates}
    # top-k sets, refined sets, top-k at IG's refined size
    ig_k = len(refined[EXACT])
    named: dict[str, dict[str, tuple[int, int]]] = {m: {} for m in methods}
    for m in methods:
        sets = {f"top{k}": top_neurons(means[m], k) for k in args.ks}
        sets["refined"] = refined[m]
        if ig_k:
            sets["top_ig_k"] = top_neurons(means[m], ig_k)
        for name, neurons in sets.items():
            if not neurons:
                continue
            seed = f"{args.seed}|{fact.fact.id}|{m}|{name}"
            s = measure.add(neurons, ["own", *control_groups])
            r = measure.add(random_neurons(neurons, lm.sites.n_neurons, seed), ["own"])
            named[m][name] = (s, r)
    p = measure.run()
    before = {g: p[(0, g)] for g in groups}
    true = np.array([(before["own"] - p[(single[n], "own")]) / max(before["own"], 1e-30) for n in candidates])
    out: dict = {
        "fact_id": fact.fact.id,
        "relation": fact.fact.relation,
        "n_selection": len(sel),
        "n_heldout": len(held),
        "controls": {t: len(g) for t, g in tiers.items()},
        "p_before": before["own"],
        "n_candidates": len(candidates),
        "ig_refined_size": ig_k,
        "methods": {},
    }
    ref_sets = set(refined[EXACT])
    for m in methods:
        cand_scores = np.array([float(means[m][layer, i]) for layer, i in candidates])
        rho_true = spearmanr(cand_scores, true).statistic if np.ptp(cand_scores) > 0 else float("nan")
        rho_ig = [
            float(spearmanr(scores[m][i].flatten().numpy(), scores[EXACT][i].flatten().numpy()).statistic)
            for i in range(len(sel))
        ]
        sets_m = set(refined[m])
        union = sets_m | ref_sets
        entry = {
            "time": times[m],
            "spearman_true": float(rho_true),
            "spearman_ig": float(np.median(rho_ig)),
            "jaccard_ig": len(sets_m & ref_sets) / len(union) if union else 1.0,
            "refined_size": len(refined[m]),
            "sets": {},
        }
        for name, (s, r) in named[m].items():
            entry["sets"][name] = score_set(p, before, s, r, tiers)
        if not refined[m]:  # no knowledge neurons: the fact scores 0 (scorecard v2)
            entry["sets"]["refined"] = {"own": 0.0, "random": 0.0, "own_excess": 0.0, "specific": 0.0}
        out["methods"][m] = entry
    return out


def fact_index(fact, args) -> int:
    return args._order[fact.fact.id]


def sample_facts(lm, args):
    """Known facts of every relation (the control pool) and the sample drawn from them (cached)."""
    path = Path(args.out) / "sample.json"
    facts = load_pararel()
    split = PromptSplit(seed=args.seed)
    if path.exists():
        saved = json.loads(path.read_text())
        by_id = {f.id: f for f in facts}
        from legibility.facts.render import render

        pool = [render(lm, by_id[i]) for i in saved["pool"]]
        return pool, saved["sample"], saved["report"]
    known = KnownConfig(limit=args.per_relation, scan=args.scan)
    sel = select_known(
        lm,
        facts,
        known,
        min_prompts=max(2, split.min_prompts),
        seed=args.seed,
        store=Path(args.out) / "known.jsonl",  # a killed scan resumes
    )
    # relations with one known fact have no same-relation control and no other subject for atp's baselines
    subjects: dict[str, set[str]] = {}
    for r in sel.kept:
        subjects.setdefault(r.fact.relation, set()).add(r.fact.subject)
    sel.kept = [r for r in sel.kept if len(subjects[r.fact.relation]) > 1]
    ids = [r.fact.id for r in sel.kept]
    sample = sorted(random.Random(args.seed).sample(ids, min(args.facts, len(ids))), key=ids.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pool": ids, "sample": sample, "report": sel.report}, indent=1))
    return sel.kept, sample, sel.report


def aggregate(records: list[dict], methods: list[str], ks: list[int]) -> dict:
    """Means over facts with BCa intervals, and paired differences from exact IG."""

    def est(values) -> dict:
        e = mean_estimate([v for v in values if v == v], seed=0)  # NaN (undefined Spearman) left out
        return e.to_dict()

    out: dict = {"n_facts": len(records), "methods": {}}
    total = {m: sum(r["methods"][m]["time"] for r in records) for m in methods}
    for m in methods:
        rows = [r["methods"][m] for r in records]
        entry: dict = {
            "seconds_per_fact": total[m] / len(records),
            "facts_per_hour": 3600 * len(records) / total[m],
            "speedup_vs_ig": total[EXACT] / total[m],
            "spearman_true": est([x["spearman_true"] for x in rows]),
            "spearman_ig": est([x["spearman_ig"] for x in rows]),
            "jaccard_ig": est([x["jaccard_ig"] for x in rows]),
            "refined_size": est([x["refined_size"] for x in rows]),
            "sets": {},
        }
        names = [f"top{k}" for k in ks] + ["refined", "top_ig_k"]
        for name in names:
            have = [
                r for r in records if name in r["methods"][m]["sets"] and name in r["methods"][EXACT]["sets"]
            ]
            if not have:
                continue
            metrics = {}
            for key in ("own", "random", "own_excess", "specific", *TIERS):
                vals = [r["methods"][m]["sets"][name].get(key) for r in have]
                ig_vals = [r["methods"][EXACT]["sets"][name].get(key) for r in have]
                pairs = [
                    (a, b) for a, b in zip(vals, ig_vals, strict=True) if a is not None and b is not None
                ]
                if not pairs:
                    continue
                metrics[key] = {
                    "mean": est([a for a, _ in pairs]),
                    "minus_ig": est([a - b for a, b in pairs]),
                }
            entry["sets"][name] = metrics
        out["methods"][m] = entry
    return out


def fmt(e: dict) -> str:
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def summary(agg: dict, methods: list[str], report: dict, args) -> str:
    ig = agg["methods"][EXACT]
    lines = [
        f"{agg['n_facts']} known facts (pool: {report['kept']} known of {report['examined']} examined, at most "
        f"{args.per_relation} per relation); ks {args.ks[0]}..{args.ks[-1]}; 95% BCa intervals over facts",
        "",
        "| method | s/fact | facts/hour | x ig | Spearman vs true effect | Spearman vs ig | Jaccard vs ig | "
        "refined size | own drop (refined) | specific (refined) | own drop (top-k, k = ig's refined size) | "
        "specific (same k) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        e = agg["methods"][m]
        ref, at = e["sets"].get("refined", {}), e["sets"].get("top_ig_k", {})
        lines.append(
            f"| `{m}` | {e['seconds_per_fact']:.2f} | {e['facts_per_hour']:.0f} | {e['speedup_vs_ig']:.1f} | "
            f"{fmt(e['spearman_true'])} | {fmt(e['spearman_ig'])} | {fmt(e['jaccard_ig'])} | "
            f"{fmt(e['refined_size'])} | {fmt(ref['own']['mean'])} | {fmt(ref['specific']['mean'])} | "
            f"{fmt(at['own']['mean'])} | {fmt(at['specific']['mean'])} |"
        )
    lines += ["", "Paired difference from `ig` (method - ig), same facts:", ""]
    lines += [
        "| method | own drop (refined) | specific (refined) | own drop (k = ig's refined size) | specific (same k) |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        if m == EXACT:
            continue
        e = agg["methods"][m]
        ref, at = e["sets"]["refined"], e["sets"].get("top_ig_k", {})
        lines.append(
            f"| `{m}` | {fmt(ref['own']['minus_ig'])} | {fmt(ref['specific']['minus_ig'])} | "
            f"{fmt(at['own']['minus_ig'])} | {fmt(at['specific']['minus_ig'])} |"
        )
    lines += ["", "Top-k curves (mean over facts; ig's 95% interval in brackets):", ""]
    show = [k for k in args.ks if k in (1, 2, 4, 8, 16, 32)]
    for key in ("own", "specific", "same_relation", "other_relation"):
        lines += [f"{key}:", "", "| method | " + " | ".join(f"k={k}" for k in show) + " |"]
        lines.append("|---|" + "---|" * len(show))
        for m in methods:
            cells = []
            for k in show:
                v = agg["methods"][m]["sets"].get(f"top{k}", {}).get(key)
                if v is None:
                    cells.append("")
                elif m == EXACT:
                    cells.append(fmt(v["mean"]))
                else:
                    cells.append(f"{v['mean']['value']:.3f}")
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        lines.append("")
    del ig
    return "\n".join(lines)


def figure(agg: dict, methods: list[str], ks: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("own", "own drop (held-out)"),
        ("specific", "specific s_f (v2)"),
        ("same_relation", "same-relation drop"),
        ("other_relation", "other-relation drop"),
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    for ax, (key, title) in zip(axes, keys, strict=True):
        for m in methods:
            pts = [(k, agg["methods"][m]["sets"].get(f"top{k}", {}).get(key)) for k in ks]
            pts = [(k, v["mean"]) for k, v in pts if v is not None]
            if not pts:
                continue
            xs = [k for k, _ in pts]
            ax.plot(xs, [v["value"] for _, v in pts], label=m, lw=2 if m == EXACT else 1.2)
            if m == EXACT:
                ax.fill_between(xs, [v["ci_low"] for _, v in pts], [v["ci_high"] for _, v in pts], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("top-k neurons zeroed")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=36, help="facts in the sample")
    ap.add_argument("--per-relation", type=int, default=5, help="known facts per relation in the pool")
    ap.add_argument(
        "--scan", type=int, default=20, help="candidates examined per kept fact (KnownConfig.scan)"
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ks", default="1-32", help="k values: '1-32' or a comma list")
    ap.add_argument("--candidates", type=int, default=32, help="top neurons per method for the true effects")
    ap.add_argument("--controls", type=int, default=2, help="control facts per tier")
    ap.add_argument("--control-prompts", type=int, default=2, help="prompts per control fact")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/faithfulness")
    ap.add_argument("--figure", default="docs/figures/faithfulness.png")
    args = ap.parse_args()
    a, _, b = args.ks.partition("-")
    args.ks = list(range(int(a), int(b) + 1)) if b else [int(x) for x in args.ks.split(",")]
    methods = args.methods.split(",")
    assert methods[0] == EXACT, "the first method must be the exact reference 'ig'"
    # the folder is keyed by every setting that changes a result: a rerun with others is refused, not mixed in
    from legibility.store import check_settings

    check_settings(Path(args.out), {k: v for k, v in vars(args).items() if k not in ("out", "figure")})
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("highest")
    lm = load_model("smollm2-135m")
    pool, sample, report = sample_facts(lm, args)
    cfg = AttributionConfig(steps=args.steps)
    prepared = prepare_facts(lm, pool, "atp-mean", cfg)  # baselines for atp-*, relp-*; others ignore them
    by_id = {r.fact.id: r for r in prepared}
    args._order = {fid: i for i, fid in enumerate(sample)}
    split = PromptSplit(seed=args.seed)
    out = Path(args.out) / "facts"
    out.mkdir(parents=True, exist_ok=True)
    records = []
    from tqdm.auto import tqdm

    for i, fid in enumerate(tqdm(sample, desc="facts", unit="fact")):
        path = out / f"{i:03d}.json"
        if path.exists():
            records.append(json.loads(path.read_text()))
            continue
        rec = measure_fact(lm, by_id[fid], prepared, methods, args, split, cfg, check=not records)
        path.write_text(json.dumps(rec))
        records.append(rec)
    agg = aggregate(records, methods, args.ks)
    agg["settings"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    agg["torch_threads"] = torch.get_num_threads()
    agg["load_average_at_end"] = os.getloadavg()
    Path(args.out, "results.json").write_text(json.dumps(agg, indent=1))
    text = summary(agg, methods, report, args)
    Path(args.out, "summary.md").write_text(text)
    figure(agg, methods, args.ks, Path(args.figure))
    print(text)


if __name__ == "__main__":
    main()
