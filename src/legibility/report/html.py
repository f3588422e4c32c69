"""A self-contained HTML report of a sweep: figures embedded as data URIs, every user string escaped."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from legibility.errors import LegibilityError
from legibility.metrics.table import label, names
from legibility.report.frontier import (
    agreement_figure,
    by_variant,
    cost_figure,
    frontier_figure,
    has_costs,
    trial_metrics,
)

if TYPE_CHECKING:
    from legibility.report.study import StudyPlan

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 8px 12px; width: 330px; font-size: 0.85em; }
.card.failed { border-color: #c33; background: #fff4f4; }
.card pre { white-space: pre-wrap; font-size: 0.85em; }
"""


# Marks <body> with data-images-ok="true" once every figure has decoded (what the browser test reads).
IMAGES_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.imagesOk = String(imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0));
});
</script>"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _fmt(a: np.ndarray) -> str:
    if len(a) == 0:
        return "&ndash;"
    return f"{a.mean():.3f} &plusmn; {a.std():.3f} <small>(n={len(a)})</small>"


def _summary_table(rows: Sequence[dict]) -> str:
    variants = sorted({r["variant"] for r in rows})
    cols = {k: by_variant(rows, k) for k in names("summary")}
    head = "".join(f"<th>{html.escape(k)}</th>" for k in names("summary"))
    body = []
    for v in variants:
        cells = "".join(f"<td>{_fmt(cols[k].get(v, np.array([])))}</td>" for k in names("summary"))
        body.append(f'<tr><td class="name">{html.escape(v)}</td>{cells}</tr>')
    return f"<table><tr><th>variant</th>{head}</tr>{''.join(body)}</table>"


def _card(row: dict) -> str:
    status = str(row.get("status"))
    metrics = trial_metrics(row)
    lines = "".join(
        f"<tr><td class='name'>{html.escape(k)}</td><td>{metrics[k]:.4g}</td></tr>"
        for k in names("summary")
        if k in metrics
    )
    overrides = html.escape(json.dumps(row.get("overrides") or {}, indent=1))
    timing = ""
    if row.get("train_s") is not None:
        timing = f"<p>train {row['train_s']:.0f} s, score {row.get('score_s') or 0:.0f} s</p>"
    error = f"<pre>{html.escape(str(row['error']))}</pre>" if row.get("error") else ""
    return (
        f'<div class="card {html.escape(status)}"><h4>{html.escape(str(row["trial_id"]))}</h4>'
        f"<p>variant <b>{html.escape(str(row['variant']))}</b>, seed {int(row['seed'])}, status <b>{html.escape(status)}</b></p>"
        f"<pre>{overrides}</pre><table>{lines}</table>{timing}{error}</div>"
    )


def _study_section(study: dict | None) -> str:
    """The study's per-cell table and hypothesis sentences (markdown bold/code turned into HTML)."""
    if not study:
        return ""
    import re

    from legibility.report.study import study_markdown

    parts, table = [], []
    for line in [*study_markdown(study).splitlines(), ""]:  # the blank line flushes a closing table
        if line.startswith("|"):
            if not line.startswith("|---"):
                table.append(line.strip("|").split("|"))
            continue
        if table:
            head, *body = table
            cells = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body
            )
            parts.append(f"<table><tr>{cells}</tr>{rows}</table>")
            table = []
        if line.strip():
            text = html.escape(line.removeprefix("- "))
            text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
            text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
            parts.append(f"<p>{text}</p>")
    return "<h2>Study: variants against the baseline</h2>" + "".join(parts)


def render_report(
    rows: Sequence[dict], title: str, figures: Sequence[tuple[Path, str]], study: dict | None = None
) -> str:
    done = [r for r in rows if r.get("status") == "done"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    status = ", ".join(f"{v} {html.escape(k)}" for k, v in sorted(counts.items()))
    figs = "".join(f"<h2>{html.escape(caption)}</h2>{_img(p, caption)}" for p, caption in figures)
    cards = "".join(_card(r) for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} trials: {status}. Values are mean &plusmn; standard deviation over seeds.</p>
{_summary_table(done)}
{_study_section(study)}
{figs}
<h2>Trials</h2><div class="cards">{cards}</div>
{IMAGES_CHECK}
</body></html>
"""


def no_finished_trials(db: Path, rows: Sequence[dict]) -> str:
    """Why a sweep store has nothing to plot, in one line."""
    if not rows:
        return f"no trials in {db}: the sweep has not started; run `legibility sweep SWEEP.yaml --out {db.parent}`"
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
    what = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    failed = [r for r in rows if r["status"] == "failed" and r.get("error")]
    why = ""
    if failed:
        first = str(failed[0]["error"]).splitlines()[0][:200]
        why = f"; trial {failed[0]['trial_id']} failed with: {first}"
    todo = counts.get("pending", 0) + counts.get("running", 0)
    hint = (
        f"; rerun `legibility sweep SWEEP.yaml --out {db.parent}` to finish the {todo} unfinished"
        if todo
        else ""
    )
    return f"no finished trials in {db} ({what}){why}{hint}"


def write_report(
    sweep_dir: str | Path,
    title: str | None = None,
    baseline: str | None = None,
    plan: StudyPlan | None = None,
) -> Path:
    """Write report.html, frontier.png and agreement.png into ``sweep_dir`` from its results store.

    A sweep with a ``baseline`` variant (default ``none``; a named one must exist) also gets the study
    analysis (:mod:`legibility.report.study`) with the hypotheses of ``plan``: study.json, study.md,
    study_frontier.png and, with one numeric grid axis, study_width.png."""
    from legibility.sweeps.results import STALE, ResultsStore

    out = Path(sweep_dir)
    db = out / "results.duckdb"
    if not db.exists():
        raise LegibilityError(
            f"{out} has no results.duckdb; run `legibility sweep SWEEP.yaml --out {out}` first"
        )
    import duckdb

    with ResultsStore(db, read_only=True) as store:
        try:
            rows = store.rows()
        except duckdb.Error as e:
            raise LegibilityError(
                f"{db} has no readable trials table ({' '.join(str(e).split())[:120]}); rerun the sweep "
                "into a new --out folder"
            ) from e
    rows = [r for r in rows if not str(r["status"]).startswith(STALE)]
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        raise LegibilityError(no_finished_trials(db, rows))
    figures = [
        (
            frontier_figure(done, out / ("frontier.png" if i == 0 else f"frontier_{key}.png"), x_key=key),
            f"{label(key)} vs performance: the interpretability-performance frontier",
        )
        for i, key in enumerate(names("frontier"))
    ]
    figures += [
        (
            agreement_figure(done, out / "agreement.png"),
            "Agreement between interpretability metrics across trials",
        ),
    ]
    if has_costs(done):
        figures.insert(
            0,
            (
                cost_figure(done, out / "finetune_frontier.png"),
                "Finetune frontier: specific suppressability on held-out facts against its cost",
            ),
        )
    study = None
    variants = sorted({r["variant"] for r in done})
    if baseline is not None and baseline not in variants:
        raise LegibilityError(
            f"--baseline {baseline!r} is not a variant with finished trials; choose one of {', '.join(variants)}"
        )
    baseline = baseline or "none"
    if baseline in variants:
        from legibility.report.study import (
            analyse_study,
            study_frontier_figure,
            study_markdown,
            study_width_figure,
        )

        study = analyse_study(done, baseline, plan)
        (out / "study.json").write_text(json.dumps(study, indent=1) + "\n", encoding="utf-8")
        (out / "study.md").write_text(study_markdown(study), encoding="utf-8")
        extra = [
            (
                study_frontier_figure(study, out / "study_frontier.png"),
                "Study frontier: specific suppressability against the cost in nats",
            )
        ]
        width = study_width_figure(study, out / "study_width.png")
        if width:
            extra.append((width, "Study: against the grid axis"))
        figures = extra + figures
    name = title or (rows[0].get("sweep") or out.name)
    page = out / "report.html"
    page.write_text(render_report(rows, f"legibility sweep report: {name}", figures, study), encoding="utf-8")
    return page
