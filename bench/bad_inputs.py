"""Bad-input sweep: every command of the CLI on many kinds of bad input, each outcome counted.

    PYTHONPATH=src .venv/bin/python bench/bad_inputs.py --doc docs/reliability.md  # every case; the doc
    PYTHONPATH=src .venv/bin/python bench/bad_inputs.py -k probe     # the cases whose name holds "probe"

The work folder is made fresh: tiny random models (tests/helpers.py), a facts file, and finished runs of
`score`, `neurons`, `train` and `probe` that many cases are pointed at. Each case runs
`legibility.cli.main(argv)` in this process (one interpreter start for the whole sweep) with a time limit,
and ends as one of:

* ``clean``: exit code 2 (or 1) and exactly one ``error:`` line on stderr (plus ``warning:`` lines);
* ``accepted``: exit code 0, for input that is legal (``ok`` cases, the positive controls) or legal but
  meaningless (``warn`` cases, which must also print a ``warning:`` line);
* ``traceback``: an exception escaped ``main`` (or stderr shows a traceback);
* ``messy``: a non-zero exit without exactly one error line;
* ``hang``: the case ran past its time limit;
* ``wrong``: a clean error for an ``ok``/``warn`` case, or exit code 0 for an ``error`` case.

Separately, ``data lost`` counts cases after which a result file of a finished run they touched (json,
jsonl, safetensors, duckdb) changed or disappeared. ``results.jsonl`` in the work folder has one line per
case; the summary and the case table (markdown, for docs/reliability.md) are printed at the end and written
to ``report.md``. PARAREL is found as usual ($LEGIBILITY_PARAREL or ../shared/data/pararel).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "training"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not os.environ.get("LEGIBILITY_PARAREL"):
    for c in (ROOT.parent / "shared/data/pararel", ROOT.parent.parent / "shared/data/pararel"):
        if (c / "patterns").is_dir():
            os.environ["LEGIBILITY_PARAREL"] = str(c)
            break

BEGIN, END = "<!-- bad-inputs: begin -->", "<!-- bad-inputs: end -->"  # where --doc writes
GUARDED = (".json", ".jsonl", ".safetensors", ".duckdb")
LOOSE = ["--known-top-k", "1000", "--known-share", "0.0", "--no-progress"]
ERROR_LINE = re.compile(r"^(error:|legibility[\w -]*: error:)")


class Timeout(BaseException):
    """Raised by the alarm: a BaseException, so that no `except Exception` in the code under test eats it."""


@dataclasses.dataclass
class Case:
    name: str
    argv: list[str]
    expect: str = "error"  # "error" | "ok" | "warn"
    guard: tuple[str, ...] = ()  # folders (relative to the work folder) whose result files must survive
    setup: Callable[[Path, contextlib.ExitStack], None] | None = None
    timeout: int = 120


# ------------------------------------------------------------------------------------------- fixtures


def _facts(path: Path, n: int = 4, **change) -> Path:
    subjects = ["germany", "france", "italy", "spain"]
    objects = ["berlin", "paris", "rome", "madrid"]
    rows = []
    for i in range(n):
        row = {
            "id": f"f{i}",
            "subject": subjects[i % 4],
            "relation": ["P36", "P37"][i % 2],
            "object": objects[(i // 4 + i) % 4],
            "prompts": ["the capital of [X] is [Y] .", "[X] capital city is [Y] .", "the city of [X] is [Y]"],
        }
        row.update(change)
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_fixtures(w: Path) -> None:
    """Models, inputs and finished runs the cases use (made once, before the cases)."""
    import yaml
    from train_helpers import tiny_cfg

    from helpers import tiny_lm
    from legibility.cli import main

    for family, name in (("llama", "m"), ("gpt2", "g")):
        lm = tiny_lm(family)
        lm.model.save_pretrained(w / name)
        lm.tokenizer.save_pretrained(w / name)
    _facts(w / "facts.jsonl")
    run = ["--model", str(w / "m"), "--facts", str(w / "facts.jsonl"), "--steps", "2", *LOOSE]
    score = [*run, "--metrics", "none", "--controls", "1"]
    assert main(["score", *score, "--out", str(w / "score-good")]) == 0
    assert main(["neurons", *run, "--out", str(w / "neurons-good")]) == 0
    cfg = dataclasses.asdict(tiny_cfg(steps=4, eval_every=2, checkpoint_every=2, log_every=2))
    (w / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(w / "train.yaml"), "--out", str(w / "train-good"), "--quiet"]) == 0
    rows = [
        {"text": f"the capital of {s} is", "label": lab, "group": s}
        for s, lab in [("germany", "a"), ("france", "b"), ("italy", "a"), ("spain", "b")]
    ]
    rows += [{"text": f"in {r['group']} a city", "label": r["label"], "group": r["group"]} for r in rows]
    (w / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    probe = [
        "probe",
        "--model",
        str(w / "m"),
        "--data",
        str(w / "probe.jsonl"),
    ]
    assert main([*probe, "--out", str(w / "probe-good")]) == 0
    assert main(["export-neurons", str(w / "score-good"), "--to", str(w / "export.json")]) == 0
    (w / "bert_pararel_neurons_0.json").write_text(json.dumps({"u1": [[1, 2], [3, 4]], "u2": [[0, 5]]}))
    (w / "bert_pararel_results_0.json").write_text(json.dumps({"u1": {"relation_name": "P36"}}))
    sweep = {"name": "s", "base": cfg, "seeds": [0], "score": {"facts": 2, "ig_steps": 2}}
    (w / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    (w / "file").write_text("a plain file\n")
    (w / "binary.bin").write_bytes(bytes(range(256)) * 8)


# ------------------------------------------------------------------------------------------- setups


def copy_of(src: str, dst: str, damage: Callable[[Path], None] | None = None):
    def setup(w: Path, _stack: contextlib.ExitStack) -> None:
        shutil.copytree(w / src, w / dst)
        if damage is not None:
            damage(w / dst)

    return setup


def locked(folder: str, copy: str | None = None):
    def setup(w: Path, stack: contextlib.ExitStack) -> None:
        from legibility.store import run_lock

        if copy:
            shutil.copytree(w / copy, w / folder)
        stack.enter_context(run_lock(w / folder))

    return setup


def write(rel: str, data: str | bytes):
    def setup(w: Path, _stack: contextlib.ExitStack) -> None:
        p = w / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)

    return setup


def mkdirs(*rels: str):
    def setup(w: Path, _stack: contextlib.ExitStack) -> None:
        for rel in rels:
            (w / rel).mkdir(parents=True, exist_ok=True)

    return setup


def both(*setups):
    def setup(w: Path, stack: contextlib.ExitStack) -> None:
        for s in setups:
            s(w, stack)

    return setup


def yaml_with(rel: str, base: str = "train.yaml", **changes):
    """A copy of a YAML config with dotted keys changed (None deletes a key)."""

    def setup(w: Path, _stack: contextlib.ExitStack) -> None:
        import yaml

        data = yaml.safe_load((w / base).read_text())
        for dotted, value in changes.items():
            node = data
            parts = dotted.split("__")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            if value is None:
                node.pop(parts[-1], None)
            else:
                node[parts[-1]] = value
        (w / rel).write_text(yaml.safe_dump(data))

    return setup


def model_copy(dst: str, damage: Callable[[Path], None]):
    return copy_of("m", dst, damage)


def truncate(name: str, size: int):
    def damage(d: Path) -> None:
        with open(d / name, "r+b") as f:
            f.truncate(size)

    return damage


def replace_text(name: str, old: str, new: str):
    def damage(d: Path) -> None:
        p = d / name
        p.write_text(p.read_text().replace(old, new))

    return damage


def put(name: str, data: str | bytes):
    def damage(d: Path) -> None:
        p = d / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)

    return damage


def drop_key(*keys: str):
    """run.json as a legibility older than the model identity wrote it (weights only)."""

    def damage(d: Path) -> None:
        key = json.loads((d / "run.json").read_text())
        for k in keys:
            key.pop(k, None)
        (d / "run.json").write_text(json.dumps(key))

    return damage


def as_dir(name: str):
    def damage(d: Path) -> None:
        p = d / name
        if p.exists():
            p.unlink()
        p.mkdir()

    return damage


def scored_then_retokenized(w: Path, _stack: contextlib.ExitStack) -> None:
    """A finished score run of a copy of the model, whose tokenizer then has two vocabulary ids swapped."""
    from legibility.cli import main

    shutil.copytree(w / "m", w / "m-retok")
    argv = ["score", "--model", str(w / "m-retok"), "--facts", str(w / "facts.jsonl"), "--steps", "2"]
    argv += [*LOOSE, "--metrics", "none", "--controls", "1", "--out", str(w / "score-retok")]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    tok = json.loads((w / "m-retok/tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["paris"], vocab["berlin"] = vocab["berlin"], vocab["paris"]
    (w / "m-retok/tokenizer.json").write_text(json.dumps(tok))


def gguf_cut(w: Path, _stack: contextlib.ExitStack) -> None:
    """The first 2 KB of the embedded GGUF (a download cut short), or a fake GGUF header without it."""
    try:
        from legibility.models.embedded import gguf_path

        head = gguf_path("smollm2-135m").open("rb").read(2048)
    except Exception:
        head = b"GGUF\x03\x00\x00\x00" + bytes(2040)
    (w / "cut.gguf").write_bytes(head)


# ------------------------------------------------------------------------------------------- cases


def cases(w: Path) -> list[Case]:
    m, g, facts = str(w / "m"), str(w / "g"), str(w / "facts.jsonl")
    out = str(w / "o")
    run = ["--model", m, "--facts", facts, "--steps", "2", *LOOSE]
    sc = ["score", *run, "--metrics", "none", "--controls", "1"]
    ne = ["neurons", *run]
    tr = ["train", str(w / "train.yaml")]
    pr = [
        "probe",
        "--model",
        m,
        "--data",
        str(w / "probe.jsonl"),
    ]
    pt = ["probe-truth", "--model", m, "--facts", "2", "--out", out]
    c: list[Case] = []

    def add(name: str, argv: list[str], expect: str = "error", **kw) -> None:
        c.append(Case(name, argv, expect, **kw))

    # ---- score / neurons: numbers
    for flag, values in {
        "--steps": ["0", "-1", "1000000000", "two", "nan"],
        "--threshold": ["0", "1", "1.5", "abc"],
        "--share": ["1", "-0.5"],
        "--min-prompts": ["0", "1000000"],
        "--known-top-k": ["0"],
        "--known-share": ["2", "-1", "nan"],
        "--seed": ["-1", str(2**40)],
        "--limit": ["0", "1000000000"],
        "--workers": ["0", "100000"],
    }.items():
        for v in values:
            add(f"neurons {flag} {v}", [*ne, "--out", out, flag, v])
    for flag, v in (
        ("--controls", "-1"),
        ("--controls", "1000000"),
        ("--holdout", "1"),
        ("--holdout", "-0.1"),
    ):
        add(f"score {flag} {v}", [*sc, "--out", out, flag, v])
    add("score --metrics nope", [*sc, "--out", out, "--metrics", "nope"])
    add("score --metrics all,nope", [*sc, "--out", out, "--metrics", "sparsity,nope"])
    add("neurons --method nope", [*ne, "--out", out, "--method", "nope"])
    add("neurons --relations P999 (PARAREL)", ["neurons", "--model", m, "--relations", "P999", "--out", out])
    add("neurons --relations P36,P10e", ["neurons", "--model", m, "--relations", "P36,P10e", "--out", out])
    add("neurons --data-dir missing", ["neurons", "--model", m, "--data-dir", str(w / "nope"), "--out", out])
    add("neurons --data-dir a file", ["neurons", "--model", m, "--data-dir", str(w / "file"), "--out", out])
    add("neurons --site eleuther on a llama", [*ne, "--out", out, "--site", "eleuther"])
    add("neurons --site nope", [*ne, "--out", out, "--site", "nope"])
    add(
        "neurons --site eleuther on a gpt2 (positive control)",
        ["neurons", "--model", g, *run[2:], "--site", "eleuther", "--out", str(w / "n-gpt2")],
        "ok",
    )
    add("neurons --device nope", [*ne, "--out", out, "--device", "nope"])
    add("neurons --dtype float8", [*ne, "--out", out, "--dtype", "float8"])
    add("neurons --device cuda:7 (absent)", [*ne, "--out", out, "--device", "cuda:7"])
    # ---- score / neurons: facts files
    bad_facts = {
        "missing": None,
        "a folder": "DIR",
        "empty": "",
        "not UTF-8": b"\xff\xfe\x00bad",
        "bad JSON line": '{"subject": "a"\n',
        "a JSON list line": "[1, 2]\n",
        "missing keys": '{"subject": "france"}\n',
        "prompt without [Y]": json.dumps(
            {"subject": "france", "relation": "P36", "object": "paris", "prompts": ["the capital of [X]"]}
        )
        + "\n",
        "[Y] not at the end": json.dumps(
            {
                "subject": "france",
                "relation": "P36",
                "object": "paris",
                "prompts": ["[Y] is the capital of [X]"],
            }
        )
        + "\n",
        "multi-token object": json.dumps(
            {
                "subject": "france",
                "relation": "P36",
                "object": "paris berlin",
                "prompts": ["the capital of [X] is [Y] .", "[X] capital city is [Y] ."],
            }
        )
        + "\n",
        "subject longer than the context": json.dumps(
            {
                "subject": " ".join(["germany"] * 100),
                "relation": "P36",
                "object": "berlin",
                "prompts": ["the capital of [X] is [Y] .", "[X] capital city is [Y] ."],
            }
        )
        + "\n",
        "prompts not a list": json.dumps(
            {
                "subject": "france",
                "relation": "P36",
                "object": "paris",
                "prompts": "the capital of [X] is [Y]",
            }
        )
        + "\n",
        "object a number": json.dumps(
            {"subject": "france", "relation": "P36", "object": 7, "prompts": ["the capital of [X] is [Y]"]}
        )
        + "\n",
        "a 1 MB prompt": json.dumps(
            {
                "subject": "france",
                "relation": "P36",
                "object": "paris",
                "prompts": ["the capital " * 90000 + "of [X] is [Y]"] * 2,
            }
        )
        + "\n",
    }
    for what, content in bad_facts.items():
        rel = f"facts/{what.replace(' ', '-')}.jsonl"
        setup = None
        if content == "DIR":
            setup = mkdirs(rel)
        elif content is not None:
            setup = write(rel, content)
        argv = ["neurons", "--model", m, "--facts", str(w / rel), "--steps", "2", *LOOSE, "--out", out]
        add(f"neurons --facts {what}", argv, setup=setup)
    # ---- score / neurons: models
    models = {
        "missing path": (str(w / "nope"), None),
        "misspelt embedded name": ("smollm2-13m", None),
        "hub id, offline": ("nobody/no-such-model", None),
        "a plain file": (str(w / "file"), None),
        "an empty folder": (str(w / "empty-model"), mkdirs("empty-model")),
        "truncated safetensors": (str(w / "m-cut"), model_copy("m-cut", truncate("model.safetensors", 5000))),
        "garbage config.json": (str(w / "m-cfg"), model_copy("m-cfg", put("config.json", "{not json"))),
        "config of another size": (
            str(w / "m-size"),
            model_copy("m-size", replace_text("config.json", '"hidden_size": 32', '"hidden_size": 64')),
        ),
        "unknown model_type": (
            str(w / "m-type"),
            model_copy(
                "m-type", replace_text("config.json", '"model_type": "llama"', '"model_type": "nope"')
            ),
        ),
        "broken tokenizer.json": (str(w / "m-tok"), model_copy("m-tok", put("tokenizer.json", "{broken"))),
        "no weights": (str(w / "m-now"), model_copy("m-now", put("model.safetensors", b""))),
        "a GGUF cut to 2 KB": (str(w / "cut.gguf"), gguf_cut),
        "two GGUF files": (
            str(w / "two-gguf"),
            both(write("two-gguf/a.gguf", b"GGUF"), write("two-gguf/b.gguf", b"GGUF")),
        ),
        "a .gguf that is text": (str(w / "text.gguf"), write("text.gguf", "not a gguf\n")),
    }
    for what, (model, setup) in models.items():
        argv = ["neurons", "--model", model, "--facts", facts, "--steps", "2", *LOOSE, "--out", out]
        add(f"neurons --model {what}", argv, setup=setup)
    # ---- score / neurons: output folders and existing runs
    add("score --out /proc/x", [*sc, "--out", "/proc/x"])
    add("score --out under a file", [*sc, "--out", str(w / "file" / "x")])
    add("score --out a file", [*sc, "--out", str(w / "file")])
    for name in ("scorecard.json", "effects.jsonl", "run.json", "neurons.jsonl"):
        add(
            f"score --out holding {name} as a folder",
            [*sc, "--out", str(w / f"o-{name}")],
            setup=mkdirs(f"o-{name}/{name}"),
        )
    add("score --out locked by another run", [*sc, "--out", str(w / "o-locked")], setup=locked("o-locked"))
    add(
        "score rerun with other settings",
        [*sc, "--out", str(w / "score-good"), "--steps", "3"],
        guard=("score-good",),
    )
    add(
        "score rerun, same settings (no-op)",
        [*sc, "--out", str(w / "score-good")],
        "ok",
        guard=("score-good",),
    )
    add(
        "score rerun with a changed tokenizer",
        [*sc[:2], str(w / "m-retok"), *sc[3:], "--out", str(w / "score-retok")],
        setup=scored_then_retokenized,
        guard=("score-retok",),
    )
    add(
        "score on a run with damaged run.json",
        [*sc, "--out", str(w / "s-runjson")],
        setup=copy_of("score-good", "s-runjson", put("run.json", "{oops")),
        guard=("s-runjson",),
    )
    add(
        "score on a run with run.json a list",
        [*sc, "--out", str(w / "s-runlist")],
        setup=copy_of("score-good", "s-runlist", put("run.json", "[1, 2]")),
        guard=("s-runlist",),
    )
    add(
        "score on a run with damaged facts.json",
        [*sc, "--out", str(w / "s-facts")],
        setup=copy_of("score-good", "s-facts", put("facts.json", "{oops")),
        guard=("s-facts",),
    )
    add(
        "score on a run with a corrupt middle neurons line",
        [*sc, "--out", str(w / "s-corrupt")],
        "warn",
        setup=copy_of(
            "score-good",
            "s-corrupt",
            lambda d: (d / "neurons.jsonl").write_text("{bad\n" + (d / "neurons.jsonl").read_text()),
        ),
    )
    add(
        "score on a run with a foreign neurons record",
        [*sc, "--out", str(w / "s-foreign")],
        setup=copy_of("score-good", "s-foreign", put("neurons.jsonl", '{"x": 1}\n')),
        guard=("s-foreign",),
    )
    add(
        "score on a run whose key lacks config and tokenizer",
        [*sc, "--out", str(w / "s-v1")],
        setup=copy_of("score-good", "s-v1", drop_key("tokenizer_sha256", "config_sha256")),
        guard=("s-v1",),
    )
    add(
        "neurons, model given by a relative path (same run)",
        ["neurons", "--model", os.path.relpath(m), *run[2:], "--out", str(w / "neurons-good")],
        "ok",
        guard=("neurons-good",),
    )
    # ---- train
    add("train: missing config", ["train", str(w / "nope.yaml"), "--out", out])
    add("train: binary config", ["train", str(w / "binary.bin"), "--out", out])
    yaml_errors = {
        "invalid YAML": "model: [1, 2\n",
        "a YAML list": "- 1\n- 2\n",
        "a scalar": "42\n",
        "unknown key": "modle: {}\n",
        "wrong type": "train: {steps: many}\n",
        "lr < 0": "train: {lr: -1}\n",
        "lr nan": "train: {lr: .nan}\n",
        "huge d_ffn": "model: {d_ffn: 1000000000}\n",
        "huge batch": "train: {batch_size: 100000000}\n",
        "seq_len > context": "model: {context: 16}\ntrain: {seq_len: 32}\n",
        "heads do not divide": "model: {d_model: 30, n_heads: 4}\n",
        "no data source": "data: {world: null}\n",
        "text folder missing": "data: {text: {dir: /nope/text}}\n",
        "unknown regularizer": "regularizers: [{name: nope}]\n",
        "regularizer not a mapping": "regularizers: [3]\n",
        "unknown PARAREL relation": "data: {pararel: {relations: [P999]}}\n",
        "betas of three": "train: {betas: [0.9, 0.9, 0.9]}\n",
        "vocab below the specials": "data: {tokenizer: {vocab_size: 2}}\n",
    }
    for what, text in yaml_errors.items():
        rel = f"yaml/{what.replace(' ', '-')}.yaml"
        add(f"train: {what}", ["train", str(w / rel), "--out", out], setup=write(rel, text))
    add(
        "train: text folder of non-UTF-8 files",
        ["train", str(w / "yaml/t8.yaml"), "--out", out],
        setup=both(
            write("txt-bin/a.txt", bytes(range(256))),
            yaml_with("yaml/t8.yaml", data__text={"dir": str(w / "txt-bin")}),
        ),
    )
    add(
        "train: empty text folder",
        ["train", str(w / "yaml/te.yaml"), "--out", out],
        setup=both(mkdirs("txt-empty"), yaml_with("yaml/te.yaml", data__text={"dir": str(w / "txt-empty")})),
    )
    add(
        "train: held-out text shorter than a sequence",
        ["train", str(w / "yaml/t1.yaml"), "--out", out, "--quiet"],
        setup=both(
            write("txt-short/a.txt", "a b\nc d\ne f\n"),
            yaml_with("yaml/t1.yaml", data__text={"dir": str(w / "txt-short"), "val_lines": 0.5}),
        ),
    )
    add("train --out under a file", [*tr, "--out", str(w / "file" / "x")])
    add("train --out a file", [*tr, "--out", str(w / "file")])
    add("train --out /proc/x", [*tr, "--out", "/proc/x"])
    add("train --out locked by another train", [*tr, "--out", str(w / "t-locked")], setup=locked("t-locked"))
    add("train --device nope", [*tr, "--out", out, "--device", "nope"])
    add("train --device cuda:7 (absent)", [*tr, "--out", out, "--device", "cuda:7"])
    add(
        "train: other config into a finished run",
        ["train", str(w / "yaml/lr.yaml"), "--out", str(w / "train-good")],
        setup=yaml_with("yaml/lr.yaml", train__lr=0.01),
        guard=("train-good",),
    )
    add(
        "train: rerun of a finished run (no-op)",
        [*tr, "--out", str(w / "train-good"), "--quiet"],
        "ok",
        guard=("train-good",),
    )
    add(
        "train: damaged config.json in the run",
        [*tr, "--out", str(w / "t-cfg")],
        setup=copy_of("train-good", "t-cfg", put("config.json", "{oops")),
        guard=("t-cfg",),
    )
    add(
        "train: damaged inputs.json in the run",
        [*tr, "--out", str(w / "t-inp")],
        setup=copy_of("train-good", "t-inp", put("inputs.json", "{oops")),
        guard=("t-inp",),
    )
    add(
        "train: every checkpoint damaged",
        [*tr, "--out", str(w / "t-ck")],
        setup=copy_of(
            "train-good",
            "t-ck",
            lambda d: [truncate("model.safetensors", 10)(p) for p in (d / "checkpoints").glob("step-*")],
        ),
        guard=("t-ck",),
    )
    add(
        "train: leftover temp files of a killed run",
        [*tr, "--out", str(w / "t-tmp"), "--quiet"],
        "ok",
        setup=copy_of(
            "train-good",
            "t-tmp",
            lambda d: [
                (d / ".metrics.jsonl.tmp").write_text("x"),
                (d / "checkpoints" / ".step-000006.tmp").mkdir(),
            ],
        ),
    )
    # ---- sweep
    sw = str(w / "sweep.yaml")
    add("sweep: missing config", ["sweep", str(w / "nope.yaml"), "--out", out])
    add("sweep: binary config", ["sweep", str(w / "binary.bin"), "--out", out])
    add("sweep --out a file", ["sweep", sw, "--out", str(w / "file")])
    add("sweep --out under a file", ["sweep", sw, "--out", str(w / "file" / "x")])
    add("sweep --workers 0", ["sweep", sw, "--out", out, "--workers", "0"])
    add("sweep --device nope", ["sweep", sw, "--out", out, "--device", "nope"])
    add("sweep --out locked", ["sweep", sw, "--out", str(w / "sw-locked")], setup=locked("sw-locked"))
    sweep_changes = {
        "not a mapping": None,
        "unknown key": {"nope": 1},
        "base missing": {"base": "nope.yaml"},
        "base a list": {"base": [1]},
        "grid and random": {"grid": {"train.lr": [0.1]}, "random": {"n": 1, "space": {}}},
        "grid not a mapping": {"grid": [1]},
        "grid empty list": {"grid": {"train.lr": []}},
        "grid key not a section": {"grid": {"train.lr.x": [1]}},
        "grid key a number": {"grid": {1: [1]}},
        "random a list": {"random": [1, 2]},
        "random uniform [0.0]": {"random": {"n": 2, "space": {"model.builtin_dropout": {"uniform": [0.0]}}}},
        "random log_uniform [-1, 1]": {"random": {"n": 2, "space": {"train.lr": {"log_uniform": [-1, 1]}}}},
        "random uniform [1, 0]": {
            "random": {"n": 2, "space": {"model.builtin_dropout": {"uniform": [1.0, 0.0]}}}
        },
        "random choice []": {"random": {"n": 2, "space": {"model.builtin_dropout": {"choice": []}}}},
        "random unknown distribution": {
            "random": {"n": 2, "space": {"model.builtin_dropout": {"normal": [0, 1]}}}
        },
        "random n 0": {"random": {"n": 0, "space": {}}},
        "random n huge": {"random": {"n": 10**9, "space": {}}},
        "random seed a list": {"random": {"n": 1, "seed": [1], "space": {}}},
        "seeds a string": {"seeds": "a"},
        "seeds empty": {"seeds": []},
        "variant name ../x": {"variants": {"../x": {}}},
        "variants a list": {"variants": [1]},
        "variant override out of range": {"variants": {"v": {"model.builtin_dropout": 2.0}}},
        "executor name nope": {"executor": {"name": "nope"}},
        "executor workers 0": {"executor": {"workers": 0}},
        "executor device nope": {"executor": {"device": "nope"}},
        "score ig_steps huge": {"score": {"ig_steps": 10**9}},
        "score unknown key": {"score": {"nope": 1}},
        "too many trials": {
            "grid": {"train.lr": [0.001 * i for i in range(1, 401)]},
            "seeds": list(range(300)),
        },
    }
    for what, change in sweep_changes.items():
        rel = f"sweeps/{re.sub(r'[^A-Za-z0-9]+', '-', what)}.yaml"

        def mk(change=change, rel=rel):
            def setup(w: Path, _stack: contextlib.ExitStack) -> None:
                import yaml

                data = yaml.safe_load((w / "sweep.yaml").read_text())
                (w / rel).parent.mkdir(exist_ok=True)
                if change is None:
                    (w / rel).write_text("- just\n- a list\n")
                    return
                data.update(change)
                (w / rel).write_text(yaml.safe_dump(data))

            return setup

        add(f"sweep: {what}", ["sweep", str(w / rel), "--out", out, "--no-progress"], setup=mk())
    # ---- report / results
    add("report: missing folder", ["report", str(w / "nope")])
    add("report: a file", ["report", str(w / "file")])
    add("report: an empty folder", ["report", str(w / "empty")], setup=mkdirs("empty"))
    add(
        "report: an unfinished run",
        ["report", str(w / "r-unf")],
        setup=copy_of("score-good", "r-unf", lambda d: (d / "scorecard.json").unlink()),
        guard=("r-unf",),
    )
    add(
        "report: a damaged scorecard",
        ["report", str(w / "r-card")],
        setup=copy_of("score-good", "r-card", put("scorecard.json", "{oops")),
        guard=("r-card",),
    )
    add(
        "report: a damaged neurons line",
        ["report", str(w / "r-neu")],
        setup=copy_of("score-good", "r-neu", put("neurons.jsonl", "{oops\n")),
        guard=("r-neu",),
    )
    add("report: a finished run", ["report", str(w / "score-good")], "ok", guard=("score-good",))
    add("report: a probe folder", ["report", str(w / "probe-good")], "ok", guard=("probe-good",))
    add(
        "report: an unfinished probe folder",
        ["report", str(w / "r-probe")],
        setup=copy_of("probe-good", "r-probe", lambda d: (d / "results.json").unlink()),
    )
    add(
        "report: a damaged probe results.json",
        ["report", str(w / "r-probe2")],
        setup=copy_of("probe-good", "r-probe2", put("results.json", "[1]")),
    )
    add("report: a run in use", ["report", str(w / "r-lock")], setup=locked("r-lock", copy="score-good"))
    add("report --cards -1", ["report", str(w / "score-good"), "--cards", "-1"])
    add("results: missing folder", ["results", str(w / "nope")])
    add("results: a run folder (no store)", ["results", str(w / "score-good")])
    # ---- probe
    add("probe --data missing", ["probe", "--model", m, "--data", str(w / "nope.jsonl"), "--out", out])
    add("probe --data a folder", ["probe", "--model", m, "--data", str(w / "score-good"), "--out", out])
    add("probe --data not JSON", ["probe", "--model", m, "--data", str(w / "binary.bin"), "--out", out])
    add(
        "probe --data one label",
        ["probe", "--model", m, "--data", str(w / "pd/one-label.jsonl"), "--out", out],
        setup=write("pd/one-label.jsonl", '{"text": "a b", "label": "x"}\n{"text": "c d", "label": "x"}\n'),
    )
    add(
        "probe --data without text",
        ["probe", "--model", m, "--data", str(w / "pd/notext.jsonl"), "--out", out],
        setup=write("pd/notext.jsonl", '{"label": "x"}\n'),
    )
    add(
        "probe --data a 1 MB text",
        ["probe", "--model", m, "--data", str(w / "pd/long.jsonl"), "--out", out],
        setup=write(
            "pd/long.jsonl",
            "".join(
                json.dumps(
                    {
                        "text": ("the capital " * 90000) if i == 0 else f"text {i}",
                        "label": "ab"[i % 2],
                        "group": str(i),
                    }
                )
                + "\n"
                for i in range(8)
            ),
        ),
    )
    add(
        "probe --data two rows",
        ["probe", "--model", m, "--data", str(w / "pd/two.jsonl"), "--out", out],
        setup=write(
            "pd/two.jsonl", '{"text": "the city", "label": "a"}\n{"text": "a country", "label": "b"}\n'
        ),
    )
    add(
        "probe --data one group per label (warning)",
        ["probe", "--model", m, "--data", str(w / "pd/onegroup.jsonl"), "--out", out],
        "warn",
        setup=write(
            "pd/onegroup.jsonl",
            "".join(
                json.dumps({"text": t, "label": lab, "group": lab}) + "\n"
                for t, lab in [("the city", "a"), ("a city", "a"), ("the country", "b"), ("a country", "b")]
            ),
        ),
    )
    for flag, v in (
        ("--folds", "1"),
        ("--folds", "0"),
        ("--folds", "1000000"),
        ("--facts", "0"),
        ("--seed", "-1"),
    ):
        add(f"probe {flag} {v}", [*pr, "--out", out, flag, v])
    add("probe --sites nope", [*pr, "--out", out, "--sites", "nope"])
    add("probe --sites empty", [*pr, "--out", out, "--sites", ","])
    add("probe --task nope", [*pr, "--out", out, "--task", "nope"])
    add("probe --position nope", [*pr, "--out", out, "--position", "nope"])
    add("probe --model missing", ["probe", "--model", str(w / "nope"), "--out", out])
    add("probe --device nope", [*pr, "--out", out, "--device", "nope"])
    add("probe --dtype float8", [*pr, "--out", out, "--dtype", "float8"])
    add("probe --out a file", [*pr, "--out", str(w / "file")])
    add("probe --out under a file", [*pr, "--out", str(w / "file" / "x")])
    add("probe --out locked", [*pr, "--out", str(w / "p-locked")], setup=locked("p-locked"))
    add("probe --relations P999 (PARAREL)", ["probe", "--model", m, "--relations", "P999", "--out", out])
    add(
        "probe rerun with other settings",
        [*pr, "--out", str(w / "probe-good"), "--seed", "3"],
        guard=("probe-good",),
    )
    add("probe rerun, same settings", [*pr, "--out", str(w / "probe-good")], "ok", guard=("probe-good",))
    add(
        "probe --dtype bfloat16 (positive control)",
        [*pr, "--out", str(w / "p-bf16"), "--dtype", "bfloat16"],
        "ok",
    )
    # ---- probe-truth
    for flag, v in (
        ("--templates", "0"),
        ("--scales", "abc"),
        ("--scales", ","),
        ("--scales", "inf"),
        ("--shots", "-1"),
        ("--shots", "1000"),
        ("--ccs-restarts", "0"),
        ("--facts", "0"),
        ("--seed", "-3"),
    ):
        add(f"probe-truth {flag} {v}", [*pt, flag, v])
    add("probe-truth --held-out not in --relations", [*pt, "--held-out", "P999"])
    add("probe-truth --held-out all of them", [*pt, "--relations", "P36,P37", "--held-out", "P36,P37"])
    add("probe-truth --relations P999", [*pt, "--relations", "P999,P36", "--held-out", "P36"])
    add("probe-truth --device nope", [*pt, "--device", "nope"])
    add("probe-truth --out a file", [*pt[:-1], str(w / "file")])
    add("probe-truth: shots longer than the context", [*pt, "--shots", "60"])
    # ---- probe-checkpoints
    pc = ["probe-checkpoints", "--no-suppressability", "--out", out]
    add("probe-checkpoints: missing run", [*pc, str(w / "nope")])
    add("probe-checkpoints: a score folder", [*pc, str(w / "score-good")])
    add(
        "probe-checkpoints: unfinished train run",
        [*pc, str(w / "pc-unf")],
        setup=copy_of("train-good", "pc-unf", lambda d: shutil.rmtree(d / "model")),
    )
    add(
        "probe-checkpoints: damaged config.json",
        [*pc, str(w / "pc-cfg")],
        setup=copy_of("train-good", "pc-cfg", put("config.json", "{oops")),
    )
    add("probe-checkpoints --every 0", [*pc, str(w / "train-good"), "--every", "0"])
    add("probe-checkpoints --score-facts 0", [*pc, str(w / "train-good"), "--score-facts", "0"])
    add(
        "probe-checkpoints --out a file",
        ["probe-checkpoints", "--out", str(w / "file"), str(w / "train-good")],
    )
    add(
        "probe-checkpoints: two runs of one name",
        [*pc, str(w / "train-good"), str(w / "pcx" / "train-good")],
        setup=copy_of("train-good", "pcx/train-good"),
    )
    # ---- edit / erase / neuron / edit-eval
    ed = ["edit", "--model", m, "--new", "rome", "--collateral", "0"]
    add("edit --fact without bars", [*ed, "--fact", "france paris"])
    add("edit --fact with two parts", [*ed, "--fact", "france|P36"])
    add("edit --fact with an empty part", [*ed, "--fact", "france||paris"])
    add("edit: no --new", ["edit", "--model", m, "--fact", "france|P36|paris"])
    add("edit --lambda-new nan", [*ed, "--fact", "france|P36|paris", "--lambda-new", "nan"])
    add("edit --max-share 0", [*ed, "--fact", "france|P36|paris", "--max-share", "0"])
    add("edit --max-share 2", [*ed, "--fact", "france|P36|paris", "--max-share", "2"])
    add(
        "edit --collateral -1",
        ["edit", "--model", m, "--new", "rome", "--fact", "a|P36|b", "--collateral", "-1"],
    )
    add("edit --save under a file", [*ed, "--fact", "france|P36|paris", "--save", str(w / "file" / "x")])
    add("edit --save a file", [*ed, "--fact", "france|P36|paris", "--save", str(w / "file")])
    add("edit: unknown relation, no --prompt", [*ed, "--fact", "france|P999|paris"])
    add(
        "edit: a fact the model does not know",
        [
            *ed,
            "--fact",
            "france|P36|paris",
            "--prompt",
            "the capital of [X] is [Y] .",
            "--prompt",
            "[X] capital city is [Y] .",
        ],
    )
    add(
        "edit --save (positive control)",
        [
            *ed,
            "--fact",
            "france|P36|paris",
            "--unknown-ok",
            "--prompt",
            "the capital of [X] is [Y] .",
            "--prompt",
            "[X] capital city is [Y] .",
            "--save",
            str(w / "edited"),
        ],
        "ok",
    )
    add("edit --model missing", ["edit", "--model", str(w / "nope"), "--fact", "a|P36|b", "--new", "c"])
    er = ["erase", "--model", m]
    add("erase --relation P999", [*er, "--relation", "P999"])
    add("erase --facts 0", [*er, "--relation", "P36", "--facts", "0"])
    add("erase --top 0", [*er, "--relation", "P36", "--top", "0"])
    add("erase --held-out -1", [*er, "--relation", "P36", "--held-out", "-1"])
    add("erase --other P999", [*er, "--relation", "P36", "--other", "P999"])
    add("erase --mode nope", [*er, "--relation", "P36", "--mode", "nope"])
    add("erase --facts huge", [*er, "--relation", "P36", "--facts", "10000000"])
    nn = ["neuron", m]
    add("neuron x", [*nn, "x"])
    add("neuron 1:2:3", [*nn, "1:2:3"])
    add("neuron layer out of range", [*nn, "99:0", "--relations", ""])
    add("neuron index out of range", [*nn, "0:99999", "--relations", ""])
    add("neuron negative layer", [*nn, "-1:0", "--relations", ""])
    add("neuron --text missing", [*nn, "0:1", "--text", str(w / "nope.txt")])
    add("neuron --text binary", [*nn, "0:1", "--relations", "", "--text", str(w / "binary.bin")])
    add("neuron --html under a file", [*nn, "0:1", "--html", str(w / "file" / "x.html")])
    add("neuron --html a folder", [*nn, "0:1", "--html", str(w)])
    add("neuron --top 0", [*nn, "0:1", "--top", "0"])
    add("neuron --relations P999", [*nn, "0:1", "--relations", "P999"])
    add("neuron 0:1 (positive control)", [*nn, "0:1", "--relations", "", "--top", "2"], "ok")
    ee = ["edit-eval", "--model", m, "--out", out]
    add("edit-eval --facts 0", [*ee, "--facts", "0"])
    add("edit-eval --relation P999", [*ee, "--relation", "P999"])
    add("edit-eval --other P999", [*ee, "--other", "P999", "--facts", "1", "--held-out", "0"])
    add("edit-eval --out a file", ["edit-eval", "--model", m, "--out", str(w / "file")])
    add(
        "edit-eval --out locked",
        ["edit-eval", "--model", m, "--out", str(w / "ee-locked")],
        setup=locked("ee-locked"),
    )
    add("edit-eval --top 0", [*ee, "--top", "0"])
    add("edit-eval --mode nope", [*ee, "--mode", "nope"])
    add("edit-eval: a model that knows no fact", [*ee, "--facts", "1", "--held-out", "0", "--other", ""])
    # ---- interop
    add("export-neurons: missing run", ["export-neurons", str(w / "nope"), "--to", str(w / "x.json")])
    add(
        "export-neurons: a folder without neurons",
        ["export-neurons", str(w / "probe-good"), "--to", str(w / "x.json")],
    )
    add(
        "export-neurons: damaged run.json",
        ["export-neurons", str(w / "ex-rj"), "--to", str(w / "x.json")],
        setup=copy_of("score-good", "ex-rj", put("run.json", "{oops")),
    )
    add(
        "export-neurons: a damaged neurons line",
        ["export-neurons", str(w / "ex-nl"), "--to", str(w / "x.json")],
        setup=copy_of("score-good", "ex-nl", put("neurons.jsonl", '{"fact_id": "a", "neurons": "x"}\n')),
    )
    add(
        "export-neurons --to under a file",
        ["export-neurons", str(w / "score-good"), "--to", str(w / "file" / "x.json")],
    )
    add(
        "export-neurons --to a folder",
        ["export-neurons", str(w / "score-good"), "--to", str(w / "score-good")],
        guard=("score-good",),
    )
    add(
        "export-neurons: a run in use",
        ["export-neurons", str(w / "ex-lock"), "--to", str(w / "y.json")],
        setup=locked("ex-lock", copy="score-good"),
    )
    add(
        "export-neurons (positive control)",
        ["export-neurons", str(w / "score-good"), "--to", str(w / "z.json")],
        "ok",
    )
    im = ["import-neurons", "--to", str(w / "imp.json")]
    bad_imports = {
        "missing file": None,
        "non-JSON": "not json at all",
        "truncated JSON": '{"u1": [[1, 2], [3',
        "a JSON list": "[[1, 2]]",
        "a dict of strings": '{"u1": "1,2"}',
        "string neurons": '{"u1": [["a", "b"]]}',
        "negative indices": '{"u1": [[-1, 2]]}',
        "triples": '{"u1": [[1, 2, 3]]}',
        "not UTF-8": b"\xff\xfe{}",
    }
    for what, content in bad_imports.items():
        rel = f"imp/{what.replace(' ', '-')}_pararel_neurons_0.json"
        setup = None if content is None else write(rel, content)
        add(
            f"import-neurons: {what}",
            ["import-neurons", str(w / rel), "--to", str(w / "imp.json")],
            setup=setup,
        )
    for what, content in {"malformed": "{oops", "wrong shape": '{"u1": 3}', "a list": "[1]"}.items():
        d = f"imp-{what.replace(' ', '-')}"
        add(
            f"import-neurons: {what} results sibling",
            ["import-neurons", str(w / d / "bert_pararel_neurons_0.json"), "--to", str(w / "imp.json")],
            setup=both(
                write(f"{d}/bert_pararel_neurons_0.json", '{"u1": [[1, 2]]}'),
                write(f"{d}/bert_pararel_results_0.json", content),
            ),
        )
    el = str(w / "bert_pararel_neurons_0.json")
    add("import-neurons --results one of ours", [*im[:1], el, *im[1:], "--results", str(w / "export.json")])
    add("import-neurons --results missing", [*im[:1], el, *im[1:], "--results", str(w / "nope.json")])
    add("import-neurons --to under a file", ["import-neurons", el, "--to", str(w / "file" / "x.json")])
    add("import-neurons --to a folder", ["import-neurons", el, "--to", str(w / "score-good")])
    add("import-neurons (positive control)", ["import-neurons", el, "--to", str(w / "imp-ok.json")], "ok")
    cn = ["compare-neurons"]
    add("compare-neurons: missing a", [*cn, str(w / "nope.json"), el])
    add(
        "compare-neurons: malformed results sibling",
        [*cn, str(w / "cmp/bert_pararel_neurons_0.json"), el],
        setup=both(
            write("cmp/bert_pararel_neurons_0.json", '{"u1": [[1, 2]]}'),
            write("cmp/bert_pararel_results_0.json", "{oops"),
        ),
    )
    add(
        "compare-neurons --json in a missing folder (made)",
        [*cn, el, el, "--json", str(w / "newdir" / "c.json")],
        "ok",
    )
    add("compare-neurons --json under a file", [*cn, el, el, "--json", str(w / "file" / "c.json")])
    add("compare-neurons --json a folder", [*cn, el, el, "--json", str(w)])
    add("compare-neurons: a folder without neurons", [*cn, str(w / "probe-good"), el])
    add(
        "compare-neurons: exchange file of another version",
        [*cn, str(w / "v9.json"), el],
        setup=write(
            "v9.json", json.dumps({"format": "legibility.knowledge-neurons", "version": 9, "facts": []})
        ),
    )
    add(
        "compare-neurons: exchange facts not a list",
        [*cn, str(w / "fx.json"), el],
        setup=write(
            "fx.json", json.dumps({"format": "legibility.knowledge-neurons", "version": 1, "facts": 3})
        ),
    )
    add(
        "compare-neurons: exchange fact not an object",
        [*cn, str(w / "fo.json"), el],
        setup=write(
            "fo.json", json.dumps({"format": "legibility.knowledge-neurons", "version": 1, "facts": [3]})
        ),
    )
    add("compare-neurons --facts -1", [*cn, el, el, "--facts", "-1"])
    add("compare-neurons (positive control)", [*cn, str(w / "score-good"), str(w / "export.json")], "ok")
    # ---- the rest
    add("no command", [])
    add("unknown command", ["nope"])
    add("download-pararel --to under a file", ["download-pararel", "--to", str(w / "file" / "x")], timeout=60)
    add("methods (positive control)", ["methods"], "ok")
    return c


# ------------------------------------------------------------------------------------------- running


def snapshot(folders: list[Path]) -> dict[str, str]:
    out = {}
    for d in folders:
        if not d.is_dir():
            continue
        for p in d.rglob("*"):
            if p.is_file() and p.suffix in GUARDED and not p.name.startswith("."):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case: Case, w: Path) -> dict:
    from legibility.cli import main

    out = w / "o"
    if out.exists():
        shutil.rmtree(out)
    err, stdout = io.StringIO(), io.StringIO()
    rec: dict = {"name": case.name, "expect": case.expect, "argv": case.argv}
    with contextlib.ExitStack() as stack:
        if case.setup is not None:
            case.setup(w, stack)
        guarded = [w / g for g in case.guard]
        before = snapshot(guarded)

        def alarm(*_):
            raise Timeout

        signal.signal(signal.SIGALRM, alarm)
        signal.alarm(case.timeout)
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
                rc = main(list(case.argv))
            exc = None
        except Timeout:
            rc, exc = None, "Timeout"
        except BaseException as e:  # what escaped main: the traceback the sweep counts
            rc, exc = None, f"{type(e).__name__}: {e}".splitlines()[0][:300]
        finally:
            signal.alarm(0)
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        after = snapshot(guarded)
    lost = sorted(k for k in before if after.get(k) != before[k])
    text = err.getvalue()
    errors = [ln for ln in text.splitlines() if ERROR_LINE.match(ln)]
    warns = [ln for ln in text.splitlines() if ln.startswith("warning:")]
    rec.update(
        rc=rc,
        error=errors[0] if errors else None,
        warnings=warns[:3],
        lost=[os.path.relpath(p, w) for p in lost],
    )
    if exc == "Timeout":
        outcome = "hang"
    elif exc is not None or "Traceback" in text:
        outcome = "traceback"
        rec["error"] = exc or text.strip().splitlines()[-1]
    elif rc == 0:
        outcome = "accepted"
    elif len(errors) == 1:
        outcome = "clean"
    else:
        outcome = "messy"
        rec["error"] = " | ".join(text.strip().splitlines()[-3:])[:300]
    rec["outcome"] = outcome
    wanted = {"error": {"clean"}, "ok": {"accepted"}, "warn": {"accepted"}}[case.expect]
    rec["as_expected"] = outcome in wanted and (case.expect != "warn" or bool(warns))
    return rec


def markdown(records: list[dict], w: Path) -> str:
    counts = Counter(r["outcome"] for r in records)
    bad = [r for r in records if r["expect"] == "error"]
    legal = [r for r in records if r["expect"] != "error"]
    lines = [
        "| | cases |",
        "|---|---:|",
        f"| bad input, one-line error (`clean`) | {sum(r['outcome'] == 'clean' for r in bad)} of {len(bad)} |",
        f"| legal input accepted (`ok`/`warn`, with its warning) | {sum(r['as_expected'] for r in legal)} of {len(legal)} |",
        f"| tracebacks | {counts['traceback']} |",
        f"| hangs (past the time limit) | {counts['hang']} |",
        f"| messy exits (not one error line) | {counts['messy']} |",
        f"| bad input accepted / legal input refused | {sum(not r['as_expected'] and r['outcome'] in ('accepted', 'clean') for r in records)} |",
        f"| data lost | {sum(bool(r['lost']) for r in records)} |",
        f"| total | {len(records)} |",
        "",
        "| case | expected | outcome | message |",
        "|---|---|---|---|",
    ]
    for r in records:
        msg = (r["error"] or (r["warnings"][0] if r["warnings"] else "")).replace("|", "\\|")
        msg = msg.replace(str(w), "<w>").replace(str(ROOT), ".")
        msg = re.sub(r"\(pid \d+\)", "(pid N)", msg)
        flag = "" if r["as_expected"] else " **!**"
        lost = f" (lost: {', '.join(r['lost'])})" if r["lost"] else ""
        lines.append(f"| {r['name']} | {r['expect']} | {r['outcome']}{flag}{lost} | {msg[:160]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/bad-inputs", help="work folder (deleted and made fresh)")
    ap.add_argument("-k", default="", help="only the cases whose name holds this")
    ap.add_argument("--doc", default=None, help="also write the counts and cases into this markdown file")
    args = ap.parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(1)
    w = Path(args.work).resolve()
    if w.exists():
        shutil.rmtree(w)
    w.mkdir(parents=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        build_fixtures(w)
    todo = [c for c in cases(w) if args.k in c.name]
    names = [c.name for c in todo]
    assert len(names) == len(set(names)), "case names must be unique"
    records = []
    with (w / "results.jsonl").open("w") as sink:
        for case in tqdm(todo, desc="bad inputs", unit="case"):
            rec = run_case(case, w)
            records.append(rec)
            sink.write(json.dumps(rec) + "\n")
            sink.flush()
    report = markdown(records, w)
    (w / "report.md").write_text(report)
    if args.doc:  # the counts and the case table between the markers of the doc
        doc = Path(args.doc)
        text = doc.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        doc.write_text(text[:start] + "\n" + report + text[end:])
    print(report)  # noqa: T201
    for r in records:
        if not r["as_expected"] or r["lost"]:
            print(f"UNEXPECTED: {r['name']}: {r['outcome']} {r['error'] or ''} {r['lost'] or ''}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
