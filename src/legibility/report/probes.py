"""HTML page of a probe run (concept, truth or checkpoints): figures embedded as data URIs, tables with CIs,
every user string escaped. Reads only the run's results.json and figures."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from legibility.errors import LegibilityError

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } img { max-width: 100%; border: 1px solid #eee; }
"""


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></p>'


def _ci(e: dict) -> str:
    if e.get("n", 0) == 0:
        return "-"
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _concept(res: dict, run: Path) -> str:
    parts = [
        f"<p>{res['n_examples']} examples, {res['n_groups']} groups, {len(res['labels'])} labels, "
        f"majority class {res['majority']:.3f}.</p>",
        _img(run / "accuracy.png"),
    ]
    for site, rows in res["layers"].items():
        table = [
            [str(i), _ci(r["accuracy"]), _ci(r["control"]), _ci(r["selectivity"])] for i, r in enumerate(rows)
        ]
        parts.append(
            f"<h2>{html.escape(site)}</h2>" + _table(["layer", "accuracy", "control", "selectivity"], table)
        )
    return "".join(parts)


def _truth(res: dict, run: Path) -> str:
    parts = [
        f"<p>pairs: {html.escape(json.dumps(res['n_pairs']))}; best layer {res['best_layer']}.</p>",
        _img(run / "truth.png"),
    ]
    for split, rows in res["layers"].items():
        methods = list(rows[0])
        table = [[str(i)] + [_ci(r[m]["pair"]) for m in methods] for i, r in enumerate(rows)]
        parts.append(
            f"<h2>pair accuracy, {html.escape(split)} (model: {_ci(res['model_judgement'][split])})</h2>"
        )
        parts.append(_table(["layer", *methods], table))
    st = res.get("steering")
    if st:
        table = [
            [str(r["scale"]), _ci(r["truth_plus"]), _ci(r["truth_minus"]), _ci(r["random"])]
            for r in st["scales"]
        ]
        parts.append(f"<h2>steering at layer {st['layer']} (change of log p(True) - log p(False))</h2>")
        parts.append(_table(["scale", "+truth", "-truth", "random"], table))
    ly = res.get("lying")
    if ly:
        table = [[c, _ci(m["pair_accuracy"]), _ci(m["top1_accuracy"])] for c, m in ly["model"].items()]
        parts.append(
            "<h2>lying condition: the model</h2>" + _table(["context", "pair accuracy", "top-1"], table)
        )
        parts.append(_img(run / "lying.png"))
    return "".join(parts)


def _checkpoints(res: dict, run: Path) -> str:
    parts = [_img(run / "checkpoints.png")]
    keys = ["probe.relation", "probe.object", "fact_accuracy", "suppressability"]
    for name, recs in res["runs"].items():
        rows = [[str(r["step"])] + [f"{r.get(k, float('nan')):.3f}" for k in keys] for r in recs]
        parts.append(f"<h2>{html.escape(name)}</h2>" + _table(["step", *keys], rows))
    return "".join(parts)


def write_probe_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.html`` from ``results.json``; returns its path."""
    run = Path(run_dir)
    path = run / "results.json"
    if not path.exists():
        raise LegibilityError(f"{run} has no results.json; run `legibility probe ... --out {run}` first")
    kinds = {"concept": _concept, "truth": _truth, "checkpoints": _checkpoints}
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
        draw = kinds[res["kind"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise LegibilityError(
            f"{path} is damaged or not a probe run's results; rerun its probe command"
        ) from None
    body = draw(res, run)
    title = f"legibility probes: {res['kind']}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style>"
        f"</head><body><h1>{title}</h1>{body}</body></html>"
    )
    out = run / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
