"""User facts as JSONL, one fact per line.

Each line: ``{"subject": "Germany", "relation": "P36", "object": "Berlin", "prompts": ["The capital of [X] is [Y]."]}``
Prompts contain ``[Y]`` (the object slot) and usually ``[X]`` (filled with the subject). ``id`` is optional.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from legibility.errors import LegibilityError
from legibility.facts.types import OBJECT, Fact, fill

REQUIRED = {"subject": str, "relation": str, "object": str, "prompts": list}


def jsonl_objects(path: str | os.PathLike, what: str, keys: str) -> Iterator[tuple[str, int, dict]]:
    """(``file:line``, line number, object) of each non-blank line of a user's JSONL file; a missing file,
    a file that is not UTF-8, a line that is not JSON or not an object is an error naming file and line.
    ``what`` names the file in messages ("facts file"), ``keys`` says what an object holds."""
    p = Path(path)
    if not p.is_file():
        raise LegibilityError(f"{what} {p} {'is a folder, not a file' if p.is_dir() else 'does not exist'}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise LegibilityError(
            f"{what} {p} is not UTF-8 text (byte {e.start}); save it as UTF-8 and rerun"
        ) from e
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LegibilityError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise LegibilityError(f"{where}: expected a JSON object with {keys}")
        yield where, i, row


def load_jsonl_facts(path: str | os.PathLike) -> list[Fact]:
    facts = []
    for where, _, row in jsonl_objects(path, "facts file", f"keys {sorted(REQUIRED)}"):
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
        raise LegibilityError(f"facts file {path} holds no facts")
    return facts
