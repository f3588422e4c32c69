"""CLI subcommands ``edit``, ``erase``, ``neuron`` and ``edit-eval``: parse, call the library, format.

The main CLI wires them with :func:`add_parsers` and dispatches to :func:`run`; ``python -m
legibility.editing.command ...`` runs them on their own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from legibility.arguments import number
from legibility.devices import add_device_args
from legibility.errors import LegibilityError

COMMANDS = ("edit", "erase", "neuron", "edit-eval")
# counts of facts, neurons and tokens: each sizes work, so each has an upper bound
COUNT = number(int, 0, 100_000)
POSITIVE = number(int, 1, 100_000)


def add_parsers(subparsers) -> None:
    """Add the editing subcommands to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("edit", help="edit a fact through its knowledge neurons' value vectors")
    p.add_argument("--model", default="smollm2-135m", help="embedded model name, local directory or HF id")
    p.add_argument("--fact", required=True, help='"subject|relation|old object", e.g. "France|P36|Paris"')
    p.add_argument("--new", required=True, help="the new object")
    p.add_argument(
        "--prompt", action="append", help="prompt with [Y] (default: the relation's PARAREL prompts)"
    )
    p.add_argument(
        "--lambda-old",
        type=number(float, -1e6, 1e6),
        default=1.0,
        help="lambda1, weight of E[old] (default 1)",
    )
    p.add_argument(
        "--lambda-new",
        type=number(float, -1e6, 1e6),
        default=8.0,
        help="lambda2, weight of E[new] (default 8)",
    )
    p.add_argument(
        "--embedding", choices=("input", "output"), default="input", help="E = word embedding or unembedding"
    )
    p.add_argument(
        "--relation-facts",
        type=COUNT,
        default=0,
        help="locate neurons of this many other known facts of the relation and leave out neurons shared by "
        "more than --max-share of them (paper protocol; costs one attribution per fact; default 0: off)",
    )
    p.add_argument(
        "--max-share",
        type=number(float, 0.0, 1.0, open_low=True),
        default=0.1,
        help="shared-neuron cut-off in (0, 1] (default 0.1)",
    )
    _collateral_args(p)
    p.add_argument(
        "--unknown-ok",
        action="store_true",
        help="edit even when the model does not know the fact (old object top-1 on under half its prompts)",
    )
    p.add_argument("--save", help="write the edited model copy (save_pretrained) into this directory")
    _common(p)

    p = subparsers.add_parser(
        "erase", help="erase a relation by overwriting its most shared knowledge neurons"
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--relation", required=True, help="PARAREL relation id, e.g. P36")
    p.add_argument(
        "--facts", type=POSITIVE, default=10, help="known facts whose knowledge neurons are located"
    )
    p.add_argument("--top", type=POSITIVE, default=20, help="N: erase the N most shared neurons")
    p.add_argument("--mode", choices=("zero", "unk"), default="zero", help="value vectors set to 0 or E[unk]")
    p.add_argument("--other", default="P37", help="comma-separated relations to check for collateral damage")
    p.add_argument(
        "--held-out",
        type=COUNT,
        default=10,
        help="further known facts of the relation, not used to choose the neurons (does the erase generalize?)",
    )
    p.add_argument("--save", help="write the erased model copy into this directory")
    _common(p)

    p = subparsers.add_parser("neuron", help="print the key-value card of one FFN neuron")
    p.add_argument("model", help="embedded model name, local directory or HF id")
    p.add_argument("neuron", help="LAYER:INDEX, e.g. 17:1043")
    p.add_argument("--relations", default="P36,P1376,P37", help="PARAREL relations whose prompts are read")
    p.add_argument("--facts", type=COUNT, default=20, help="facts per relation read")
    p.add_argument("--text", help="a text file read line by line (default: the built-in sample)")
    p.add_argument("--top", type=POSITIVE, default=10, help="tokens and contexts shown")
    p.add_argument("--html", help="also write the card as an HTML fragment to this file")
    _common(p)

    p = subparsers.add_parser(
        "edit-eval", help="evaluate fact edits and a relation erase against random neurons"
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--relation", default="P36")
    p.add_argument("--facts", type=POSITIVE, default=15, help="known facts located and edited")
    p.add_argument("--held-out", type=COUNT, default=15, help="further known facts for the erase evaluation")
    p.add_argument("--other", default="P37,P103", help="relations for locality")
    p.add_argument("--other-facts", type=COUNT, default=10)
    p.add_argument("--top", type=POSITIVE, default=20, help="erase: N most shared neurons")
    p.add_argument("--mode", choices=("zero", "unk"), default="zero")
    p.add_argument("--out", required=True, help="output directory (attributions are cached there)")
    _common(p)


def _collateral_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--collateral",
        type=COUNT,
        default=10,
        help="known facts of the same relation (other subjects) and of the --collateral-relations whose "
        "p(correct) and top-1 are measured before and after the edit (default 10 each; 0: off)",
    )
    p.add_argument(
        "--collateral-relations",
        default="P37,P103",
        help="comma-separated other relations for the collateral check (default P37,P103)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="PARAREL folder (default: found automatically)")
    p.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0)
    add_device_args(p)
    p.set_defaults(editing_command=p.prog.split()[-1])


def run(args: argparse.Namespace) -> int:
    """Run the subcommand named by ``args.editing_command``; returns the exit status."""
    from legibility.models.loading import load_model

    name = args.editing_command
    _check_outputs(args)  # before minutes of loading and attributing
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    if name == "neuron":
        return _neuron(lm, args)
    if name == "edit":
        return _edit(lm, args)
    if name == "erase":
        return _erase(lm, args)
    if name == "edit-eval":
        return _edit_eval(lm, args)
    raise LegibilityError(f"unknown editing command {name!r}; use one of {', '.join(COMMANDS)}")


def _check_outputs(args: argparse.Namespace) -> None:
    """Inputs and output paths that can be checked without the model: checked first."""
    from legibility.run import check_model_name
    from legibility.store import check_files, check_target, check_writable

    check_model_name(args.model)
    if getattr(args, "save", None):
        check_writable(args.save, "--save")
        check_files(args.save, ("config.json", "model.safetensors"), "--save")
    if getattr(args, "html", None):
        check_target(args.html, "--html")
    if getattr(args, "text", None) and not Path(args.text).is_file():
        raise LegibilityError(f"--text {args.text}: no such file; give a UTF-8 text file")
    if args.editing_command == "edit-eval":
        check_writable(args.out)
        check_files(args.out, ("edits.jsonl", "erase.json", "summary.json"))
    if args.editing_command == "neuron":
        _parse_neuron(args.neuron)
    if args.editing_command == "edit":
        _fact_parts(args.fact)
    relations = [getattr(args, "relation", None) or ""]
    for flag in ("other", "relations"):
        relations += (getattr(args, flag, None) or "").split(",")
    if args.editing_command != "edit" and any(r.strip() for r in relations):
        from legibility.facts.pararel import pararel_relations

        available = pararel_relations(args.data_dir)
        unknown = sorted({r.strip() for r in relations if r.strip()} - set(available))
        if unknown:
            raise LegibilityError(
                f"unknown relation(s) {', '.join(unknown)}; PARAREL has: {', '.join(available)}"
            )


def _save(lm, copy, target: str, what: str) -> None:
    """Write an edited model copy into ``target`` while holding its folder's lock."""
    from legibility.store import run_lock

    with run_lock(target):
        copy.model.save_pretrained(target)
        lm.tokenizer.save_pretrained(target)
    print(f"{what} model written to {target}")


def _parse_neuron(text: str) -> tuple[int, int]:
    try:
        layer, index = (int(x) for x in text.split(":"))
    except ValueError:
        raise LegibilityError(f"neuron {text!r} must be LAYER:INDEX, e.g. 17:1043") from None
    return layer, index


def _neuron(lm, args) -> int:
    from legibility.editing.memory import CardConfig, card_text, neuron_card
    from legibility.facts.pararel import load_pararel
    from legibility.facts.render import render
    from legibility.metrics.text import SAMPLE_TEXT
    from legibility.report.cards import card_html

    layer, index = _parse_neuron(args.neuron)
    relations = [r for r in args.relations.split(",") if r]
    facts = (
        load_pararel(args.data_dir, relations=relations, limit=args.facts, seed=args.seed)
        if relations
        else []
    )
    prompts = [p for f in facts for p in render(lm, f).prompts]
    try:
        text = Path(args.text).read_text(encoding="utf-8") if args.text else SAMPLE_TEXT
    except UnicodeDecodeError as e:
        raise LegibilityError(f"--text {args.text} is not UTF-8 text ({e.reason}); convert it") from None
    card = neuron_card(
        lm, layer, index, prompts, text, CardConfig(top_tokens=args.top, top_contexts=args.top)
    )
    print(card_text(card))
    if args.html:
        from legibility.store import write_file

        write_file(args.html, card_html(card), "--html")
    return 0


def _fact_from(args, lm):
    from legibility.facts.types import Fact

    subject, relation, obj = _fact_parts(args.fact)
    if args.prompt:
        prompts = tuple(p.replace("[X]", subject) for p in args.prompt)
    else:
        from legibility.facts.counterfacts import pararel_wordings

        prompts = tuple(t.replace("[X]", subject) for t in pararel_wordings(relation, args.data_dir))
    others = []
    if args.relation_facts:
        others = _known_facts(lm, args, [relation], args.relation_facts, exclude=subject)
    return Fact(subject, relation, obj, prompts), others


def _fact_parts(text: str) -> tuple[str, str, str]:
    parts = [s.strip() for s in text.split("|")]
    if len(parts) != 3 or not all(parts):
        raise LegibilityError(f'--fact {text!r} must be "subject|relation|object", e.g. "France|P36|Paris"')
    return parts[0], parts[1], parts[2]


def _known_facts(lm, args, relations: list[str], limit: int, exclude: str | None = None) -> list:
    """Up to ``limit`` known PARAREL facts per relation (a seeded sample), leaving out subject ``exclude``."""
    from legibility.facts.pararel import load_pararel
    from legibility.pipeline import KnownConfig, select_known

    if limit <= 0 or not relations:
        return []
    pool = [f for f in load_pararel(args.data_dir, relations=relations) if f.subject != exclude]
    return select_known(lm, pool, KnownConfig(limit=limit), seed=args.seed, progress=False).kept


def _check_count(name: str, value: int, low: int = 0) -> None:
    if value < low:
        raise LegibilityError(f"{name} = {value} is out of range; allowed: >= {low}")


def _locate(lm, rendered, relation):
    """The fact's knowledge neurons (adaptive p, from all its prompts: the edit is judged elsewhere),
    computed by the runner's neuron stage."""
    from legibility.facts.split import PromptSplit
    from legibility.neurons import NeuronConfig
    from legibility.pipeline import NeuronStage

    record = NeuronStage(neurons=NeuronConfig(adaptive=True), split=PromptSplit(holdout=0.0))(lm)(rendered)
    return [tuple(n) for n in record["neurons"]]


def _table(lm, prompts, old_id, new_id) -> list[str]:
    from legibility.editing.evaluate import retarget
    from legibility.forward import predict

    old, new = predict(lm, retarget(prompts, old_id)), predict(lm, retarget(prompts, new_id))
    rows = []
    for i, p in enumerate(prompts):
        top = lm.tokenizer.decode([int(old.top[i])])
        rows.append(
            f"  {p.text[-50:]!r:54s} top={top!r:14s} p(old)={old.prob[i]:.3f} p(new)={new.prob[i]:.3f}"
        )
    return rows


def _edit(lm, args) -> int:
    from legibility.editing.collateral import collateral, top1_share
    from legibility.editing.edit import EditConfig, fact_edit
    from legibility.facts.counterfacts import object_token
    from legibility.facts.render import render

    _check_count("--collateral", args.collateral)
    _check_count("--relation-facts", args.relation_facts)
    if not 0.0 < args.max_share <= 1.0:
        raise LegibilityError(f"--max-share = {args.max_share} is out of range; allowed: in (0, 1]")
    fact, others = _fact_from(args, lm)
    rendered = render(lm, fact)
    if len(rendered.prompts) < 2:
        raise LegibilityError(
            f"fact {fact.id} has {len(rendered.prompts)} usable prompt(s); give --prompt twice or more"
        )
    old_id, new_id = object_token(lm, fact, fact.object), object_token(lm, fact, args.new)
    known = top1_share(lm, rendered.prompts, old_id)
    n = len(rendered.prompts)
    print(
        f"before the edit, {fact.object!r} is the model's top-1 answer on {round(known * n)} of {n} prompts"
    )
    if known < 0.5 and not args.unknown_ok:
        raise LegibilityError(
            f"the model does not know {fact.subject} | {fact.relation} | {fact.object} ({fact.object!r} is "
            f"top-1 on {round(known * n)} of {n} prompts), so an edit's success could not be told from "
            "noise; pick a known fact, or pass --unknown-ok to edit anyway"
        )
    neurons = _locate(lm, rendered, fact.relation)
    relation_sets = [neurons] + [_locate(lm, r, fact.relation) for r in others] if others else None
    cfg = EditConfig(args.lambda_old, args.lambda_new, args.max_share, args.embedding)
    edit = fact_edit(lm, fact, args.new, neurons, relation_sets, cfg)
    print(f"knowledge neurons: {neurons}")
    if relation_sets:
        print(
            f"left out as shared by more than {args.max_share:g} of {len(relation_sets)} facts of "
            f"{fact.relation} (and by at least two): {sorted(set(map(tuple, neurons)) - set(edit.neurons))}"
        )
    print(f"edited neurons:    {list(edit.neurons)}  ({edit.description})")
    if not edit.neurons:
        why = (
            f"every knowledge neuron is shared with other facts of {fact.relation} (raise --max-share or "
            "lower --relation-facts to edit them anyway, knowing that the edit then reaches those facts)"
            if neurons
            else "no knowledge neuron was located"
        )
        print(f"no neuron left to edit: {why}; the model is unchanged")
        return 1
    print("before:", *_table(lm, rendered.prompts, old_id, new_id), sep="\n")
    with edit.applied(lm):
        print("after:", *_table(lm, rendered.prompts, old_id, new_id), sep="\n")
    if args.collateral:
        same = [r for r in others if r.fact.subject != fact.subject][: args.collateral]
        if len(same) < args.collateral:
            same = _known_facts(lm, args, [fact.relation], args.collateral, exclude=fact.subject)
        rels = [r for r in args.collateral_relations.split(",") if r and r != fact.relation]
        other = _known_facts(lm, args, rels, max(1, args.collateral // max(len(rels), 1)))[: args.collateral]
        groups = {f"same relation ({fact.relation})": same, f"other relations ({','.join(rels)})": other}
        print(_collateral_table(collateral(lm, edit, groups, new_id), args.new))
    if args.save:
        _save(lm, edit.copy(lm), args.save, "edited")
    return 0


def _collateral_table(effects, new: str) -> str:
    from legibility.report.editing import collateral_markdown

    if not effects:
        return "collateral: the model knows none of the sampled facts of these relations; nothing to compare"
    return collateral_markdown(effects, new)


def _erase(lm, args) -> int:
    from legibility.editing.erase import EraseConfig, relation_erase, top_shared
    from legibility.editing.evaluate import EvalConfig, evaluate_erase
    from legibility.facts.pararel import load_pararel
    from legibility.pipeline import KnownConfig, select_known

    def known(relations, limit):
        facts = load_pararel(args.data_dir, relations=relations)
        return select_known(lm, facts, KnownConfig(limit=limit), seed=args.seed).kept

    _check_count("--facts", args.facts, 1)
    _check_count("--held-out", args.held_out)
    _check_count("--top", args.top, 1)
    pool = known([args.relation], args.facts + args.held_out)
    located, held_out = pool[: args.facts], pool[args.facts :]
    others = known([r for r in args.other.split(",") if r], args.facts) if args.other else []
    sets = [_locate(lm, r, args.relation) for r in located]
    cfg = EvalConfig(erase=EraseConfig(args.top, args.mode), seed=args.seed)
    print("erased neurons (facts sharing each):", top_shared(sets, args.top))
    print(
        f"facts: {len(located)} located ({args.relation}), {len(held_out)} held out ({args.relation}, same "
        f"relation, not used to choose neurons), {len(others)} of other relations ({args.other})"
    )
    kn, rnd = evaluate_erase(lm, sets, located, held_out, others, config=cfg)
    for key in kn:
        if key not in ("arm", "neurons"):
            print(f"  {key:24s} knowledge neurons {kn[key]!s:>22}   random {rnd.get(key)!s:>22}")
    if args.save:
        _save(lm, relation_erase(lm, sets, cfg.erase).copy(lm), args.save, "erased")
    return 0


def _edit_eval(lm, args) -> int:
    from legibility.editing.erase import EraseConfig
    from legibility.editing.evaluate import EvalConfig
    from legibility.editing.experiment import ExperimentConfig, run_experiment
    from legibility.report.editing import summary_markdown

    cfg = ExperimentConfig(
        relation=args.relation,
        n_facts=args.facts,
        held_out=args.held_out,
        others=tuple(r for r in args.other.split(",") if r),
        n_others=args.other_facts,
        eval=EvalConfig(erase=EraseConfig(args.top, args.mode), seed=args.seed),
        data_dir=args.data_dir,
    )
    summary = run_experiment(lm, args.out, cfg)
    print(summary_markdown(summary))
    print(
        json.dumps({k: summary[k] for k in ("n_located", "n_held_out", "n_other_facts", "neurons_per_fact")})
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="legibility")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LegibilityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
