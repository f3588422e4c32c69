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


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _concept(res: dict, run: Path) -> str:
    parts = [
        f"<p>{res['n_examples']} examples, {res['n_groups']} groups ({res.get('n_test_groups', '?')} test), "
        f"{len(res['labels'])} labels, majority class {res['majority']:.3f}. The layer is chosen on validation "
        "accuracy (cross-validated on the development facts); the headline is the test-fact accuracy there.</p>",
        _img(run / "accuracy.png"),
    ]
    head = [
        [
            site,
            str(h["chosen_layer"]),
            _ci(h["validation"]),
            _ci(h["accuracy"]),
            _ci(h["control"]),
            _ci(h["selectivity"]),
            str(h["fixed_layer"]),
            _ci(h["fixed"]["accuracy"]),
            _ci(h["fixed"]["selectivity"]),
        ]
        for site, h in res["headline"].items()
    ]
    parts.append(
        "<h2>headline (test facts)</h2>"
        + _table(
            [
                "site",
                "chosen layer",
                "validation",
                "test accuracy",
                "control",
                "selectivity",
                "fixed layer",
                "accuracy (fixed)",
                "selectivity (fixed)",
            ],
            head,
        )
    )
    for site, rows in res["layers"].items():
        table = [
            [str(i), _ci(r["validation"]), _ci(r["accuracy"]), _ci(r["control"]), _ci(r["selectivity"])]
            for i, r in enumerate(rows)
        ]
        parts.append(
            f"<h2>{html.escape(site)}: every layer (test columns for reference, not for choosing)</h2>"
            + _table(["layer", "validation", "test accuracy", "test control", "test selectivity"], table)
        )
    return "".join(parts)


def _truth(res: dict, run: Path) -> str:
    splits = ("held_out_facts", "held_out_relations")
    parts = [
        f"<p>facts: {html.escape(json.dumps(res['n_facts']))}; pairs: {html.escape(json.dumps(res['n_pairs']))}; "
        f"object imbalance (0 = every object as often false as true): "
        f"{html.escape(json.dumps({k: round(v, 3) for k, v in res['object_imbalance'].items()}))}.</p>",
        _img(run / "truth.png"),
    ]
    head = [
        [
            m,
            str(h["chosen_layer"]),
            _ci(h["validation"]["pair"]),
            *[_ci(h[k]["pair"]) for k in splits],
            *[_ci(h["fixed"][k]["pair"]) for k in splits],
        ]
        for m, h in res["headline"].items()
    ]
    head += [
        [
            f"control: {name}",
            "-",
            _ci(c["validation"]["pair"]),
            *[_ci(c[k]["pair"]) for k in splits],
            "-",
            "-",
        ]
        for name, c in res["controls"].items()
    ]
    mj = res["model_judgement"]
    head.append(
        ["model's own judgement", "-", _ci(mj["validation"]), *[_ci(mj[k]) for k in splits], "-", "-"]
    )
    fixed = res["fixed_layer"]
    parts.append(
        "<h2>pair accuracy: headline (layer chosen on validation facts, scored on test facts)</h2>"
        + _table(
            [
                "probe",
                "chosen layer",
                "validation",
                "held-out facts",
                "held-out relations",
                f"held-out facts, layer {fixed}",
                f"held-out relations, layer {fixed}",
            ],
            head,
        )
    )
    for split, rows in res["layers"].items():
        methods = list(rows[0])
        table = [[str(i)] + [_ci(r[m]["pair"]) for m in methods] for i, r in enumerate(rows)]
        parts.append(f"<h2>pair accuracy by layer, {html.escape(split)}</h2>")
        parts.append(_table(["layer", *methods], table))
    st = res.get("steering")
    if st:
        table = [
            [
                str(r["scale"]),
                _ci(r["truth_plus"]),
                _ci(r["truth_minus"]),
                _ci(r["random"]),
                _ci(r["truth_plus_vs_random"]),
            ]
            for r in st["scales"]
        ]
        parts.append(f"<h2>steering at layer {st['layer']} (change of log p(True) - log p(False))</h2>")
        parts.append(_table(["scale", "+truth", "-truth", "random", "+truth - random (paired)"], table))
    ly = res.get("lying")
    if ly:
        table = [
            [c, _ci(m["pair_accuracy"]), _ci(m["top1_accuracy"]), _ci(m["probe_pair_accuracy"])]
            for c, m in ly["model"].items()
        ]
        parts.append(
            "<h2>lying condition</h2>"
            + _table(["context", "model pair accuracy", "model top-1", f"probe (layer {ly['layer']})"], table)
        )
        paired = [
            [
                comp,
                what,
                _ci(d["difference"]),
                "-" if d["mcnemar"] is None else f"{d['mcnemar']['a_only']} / {d['mcnemar']['b_only']}",
                "-" if d["mcnemar"] is None else _p(d["mcnemar"]["pvalue"]),
            ]
            for comp, per in ly["paired"].items()
            for what, d in per.items()
        ]
        parts.append(
            "<h2>lying condition, paired on the same facts</h2>"
            + _table(
                ["contexts (b - a)", "outcome", "difference", "discordant a-only / b-only", "McNemar p"],
                paired,
            )
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
