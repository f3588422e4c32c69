"""HTML of neuron cards (FFN neurons read as key-value memories), from their JSON form.

A card is computed where the model is (:func:`legibility.editing.memory.neuron_card`, ``cards.json`` of a
run from :func:`legibility.editing.memory.write_run_cards`); here it is only rendered, escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any


def card_html(card: Any) -> str:
    """A self-contained, escaped HTML fragment (class names prefixed ``lg-card``) of a card: a
    :class:`~legibility.editing.memory.NeuronCard` or its ``asdict`` form as stored in ``cards.json``."""
    c: Mapping[str, Any] = asdict(card) if is_dataclass(card) and not isinstance(card, type) else card
    e = html.escape

    def tokens(ts: list[Mapping[str, Any]]) -> str:
        return " ".join(f'<code title="{t["logit"]:+.3f}">{e(str(t["token"]))}</code>' for t in ts)

    rows = "".join(
        f"<tr><td>{x['activation']:+.3f}</td><td>{e(str(x['source']))}</td><td>{e(str(x['text']))}</td>"
        f"<td><code>{e(str(x['next_token']))}</code>{' &#10003;' if x['promoted'] else ''}</td></tr>"
        for x in c["contexts"]
    )
    agreement = (
        f"<p>agreement {c['agreement']:.2f} (chance {c['agreement_chance']:.3f}, {c['n_contexts']} contexts)</p>"
        if c.get("agreement") is not None
        else ""
    )
    notes = "".join(f"<p class='lg-card-note'>{e(str(n))}</p>" for n in c.get("notes") or [])
    return (
        f'<div class="lg-card"><h4>neuron L{c["layer"]}:{c["index"]} <small>{e(str(c["model"]))}, '
        f"|v| = {c['value_norm']:.3f}</small></h4>"
        f"<p>promotes: {tokens(c['promoted'])}</p><p>suppresses: {tokens(c['suppressed'])}</p>{agreement}"
        f'<table class="lg-card-contexts"><tr><th>activation</th><th>source</th><th>context</th>'
        f"<th>next token</th></tr>{rows}</table>{notes}</div>"
    )
