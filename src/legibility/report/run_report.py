"""A self-contained HTML report of one scoring run (`legibility score --out DIR`): the scorecard, its
figures, and key-value cards of the knowledge neurons of a few facts (from the run's ``cards.json``; this
module reads files and loads no model)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from legibility.errors import LegibilityError
from legibility.metrics.table import names
from legibility.report.cards import card_html
from legibility.report.html import CSS, IMAGES_CHECK, _img
from legibility.run import check_finished


def _table(metrics: dict[str, dict], keys: list[str]) -> str:
    rows = "".join(
        f"<tr><td class='name'>{html.escape(k)}</td><td>{m['value']:.3f}</td>"
        f"<td>[{m['ci_low']:.3f}, {m['ci_high']:.3f}]</td><td>{m['n']}</td></tr>"
        for k in keys
        if (m := metrics.get(k)) is not None
    )
    return f"<table><tr><th>metric</th><th>value</th><th>95% CI</th><th>n</th></tr>{rows}</table>"


def _cards(run: Path) -> str:
    """The neuron cards of ``cards.json`` (written by :func:`legibility.editing.memory.write_run_cards`)."""
    path = run / "cards.json"
    if not path.exists():
        return ""
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
        parts = []
        for f in facts:
            head = " — ".join(str(x) for x in f["fact"])
            body = "".join(card_html(c) for c in f["cards"])
            parts.append(f"<h3>{html.escape(head)}</h3><div class='cards'>{body}</div>")
    except (OSError, ValueError, KeyError, TypeError):
        raise LegibilityError(f"{path} is damaged; delete it and rerun `legibility report {run}`") from None
    return "".join(parts)


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into a scoring run directory from its files (with the neuron cards of
    ``cards.json`` when the run has one)."""
    run = Path(run_dir)
    card, records = check_finished(run)
    metrics, settings = card["metrics"], card.get("settings", {})
    relations = sorted({k.split("@")[1] for k in metrics if "@" in k})
    per_rel = [
        f"{m}@{r}"
        for r in relations
        for m in (
            "specific_suppressability",
            "suppression.own.ratio_of_means",
            "suppression.random.ratio_of_means",
            "collateral.same_relation",
            "collateral.other_relation",
            "amplification.own.ratio_of_means",
        )
    ]
    figs = "".join(
        f"<h2>{html.escape(caption)}</h2>{_img(run / name, caption)}"
        for name, caption in (
            ("suppression.png", "Suppression and amplification with controls"),
            ("layers.png", "Where the knowledge neurons are"),
        )
        if (run / name).exists()
    )
    cards_html = _cards(run)
    title = f"legibility scorecard: {settings.get('model', run.name)}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{len(records)} facts; settings: <code>{html.escape(json.dumps(settings, sort_keys=True))}</code></p>
<h2>Scorecard</h2>{_table(metrics, list(names("card")))}
{figs}
<h2>Per relation</h2>{_table(metrics, per_rel)}
{"<h2>Knowledge neurons as key-value memories</h2>" + cards_html if cards_html else ""}
{IMAGES_CHECK}
</body></html>
"""
    out = run / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
