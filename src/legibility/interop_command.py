"""Command line of knowledge-neuron set exchange: export-neurons, import-neurons, compare-neurons."""

from __future__ import annotations

import argparse
import json
import math

from legibility.arguments import number

COMMANDS = ("export-neurons", "import-neurons", "compare-neurons")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-neurons", help="write a run's knowledge neurons as documented JSON (docs/interop.md)"
    )
    p.add_argument("run", help="--out directory of `legibility neurons` or `legibility score`")
    p.add_argument("--to", required=True, help="JSON file to write")
    p = sub.add_parser(
        "import-neurons", help="convert EleutherAI knowledge-neurons' neuron JSON into the exchange format"
    )
    p.add_argument(
        "file", help="e.g. bert-base-uncased_pararel_neurons_0.json ({uuid: [[layer, index], ...]})"
    )
    p.add_argument("--to", required=True, help="JSON file to write")
    p.add_argument(
        "--results", default=None, help="their *_pararel_results_*.json (default: the sibling file)"
    )
    p.add_argument("--model", default=None, help="model name to record (default: from the file name)")
    p = sub.add_parser(
        "compare-neurons", help="agreement of two neuron sets per fact (Jaccard, overlap), e.g. across tools"
    )
    p.add_argument("a", help="run directory, exchange JSON or EleutherAI neuron JSON")
    p.add_argument("b", help="the same kinds as A")
    p.add_argument("--json", default=None, help="also write the full comparison (with per-fact rows) here")
    p.add_argument(
        "--facts",
        type=number(int, 0, 10**6),
        default=10,
        help="per-fact rows to print (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from legibility import neuron_sets as ns
    from legibility.store import check_target, write_file

    for flag in ("to", "json"):  # where the result goes, checked before anything is read
        if getattr(args, flag, None):
            check_target(getattr(args, flag), f"--{flag}")
    if args.command == "export-neurons":
        neuron_set = ns.from_run(args.run)
        path = ns.write_neuron_set(neuron_set, args.to)
        n = sum(len(f.neurons) for f in neuron_set.facts.values())
        print(f"{len(neuron_set.facts)} facts, {n} knowledge neurons ({neuron_set.model}) -> {path}")
        return 0
    if args.command == "import-neurons":
        neuron_set = ns.read_eleuther(args.file, args.results)
        if args.model:
            neuron_set.model = args.model
        path = ns.write_neuron_set(neuron_set, args.to)
        named = sum(bool(f.relation) for f in neuron_set.facts.values())
        print(
            f"{len(neuron_set.facts)} facts ({named} with relation names) from {neuron_set.source} -> {path}"
        )
        return 0
    a, b = ns.read_neuron_set(args.a), ns.read_neuron_set(args.b)
    result = ns.compare(a, b)
    for w in result["warnings"]:
        print(f"warning: {w}")
    print(f"A: {args.a} ({result['a']['facts']} facts, {a.source})")
    print(f"B: {args.b} ({result['b']['facts']} facts, {b.source})")
    print(f"shared facts: {result['shared_facts']} (only A: {result['only_a']}, only B: {result['only_b']})")
    if result["shared_facts"]:
        m = result["mean_jaccard"]
        print(f"mean Jaccard per fact: {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
        print(
            f"pooled Jaccard: {_f(result['micro_jaccard'])}; identical sets: {result['identical_share']:.1%}; "
            f"disjoint sets: {result['disjoint_share']:.1%}"
        )
        for rel, j in result["by_relation"].items():
            print(f"  {rel or '(no relation)':12s} mean Jaccard {j:.3f}")
        rows = sorted(result["per_fact"], key=lambda r: r["jaccard"])[: args.facts]
        if rows:
            print(f"\nlowest agreement ({len(rows)} of {result['shared_facts']} facts):")
            for r in rows:
                print(
                    f"  {r['fact_id']:40s} J={r['jaccard']:.3f}  |A|={r['a']} |B|={r['b']} both={r['both']}"
                )
    if args.json:
        write_file(args.json, json.dumps(result, indent=1), "--json")
        print(f"\nfull comparison in {args.json}")
    return 0


def _f(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"
