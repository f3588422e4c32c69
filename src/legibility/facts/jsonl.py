"""User facts as JSONL, one fact per line.

Each line: ``{"subject": "Germany", "relation": "P36", "object": "Berlin", "prompts": ["The capital of [X] is [Y]."]}``
Prompts contain ``[Y]`` (the object slot) and usually ``[X]`` (filled with the subject). ``id`` is optional.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from legibility.errors import LegibilityError
from legibility.facts.types import OBJECT, Fact, fill

REQUIRED = {"subject": str, "relation": str, "object": str, "prompts": list}


def load_jsonl_facts(path: str | os.PathLike) -> list[Fact]:
    p = Path(path)
    if not p.is_file():
        raise LegibilityError(f"facts file {p} does not exist")
    facts = []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{i}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LegibilityError(f"{where}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise LegibilityError(f"{where}: expected a JSON object with keys {sorted(REQUIRED)}")
            for key, typ in REQUIRED.items():
                if key not in row:
                    raise LegibilityError(f"{where}: missing key {key!r} (need {sorted(REQUIRED)})")
                if not isinstance(row[key], typ) or (typ is str and not row[key].strip()):
                    raise LegibilityError(f"{where}: {key!r} must be a non-empty {typ.__name__}")
            prompts = row["prompts"]
            if not prompts or not all(isinstance(t, str) for t in prompts):
                raise LegibilityError(f"{where}: 'prompts' must be a non-empty list of strings")
            for t in prompts:
                if t.count(OBJECT) != 1:
                    raise LegibilityError(
                        f"{where}: prompt {t!r} must contain the object slot {OBJECT} exactly once"
                    )
            facts.append(
                Fact(
                    row["subject"],
                    row["relation"],
                    row["object"],
                    tuple(fill(t, row["subject"]) for t in prompts),
                    id=str(row.get("id", "")),
                )
            )
    if not facts:
        raise LegibilityError(f"facts file {p} holds no facts")
    return facts
