"""PARAREL (Elazar et al., 2021): T-REx facts with paraphrase templates per Wikidata relation.

Looked up in order: the ``data_dir`` argument, $LEGIBILITY_PARAREL, ``../shared/data/pararel`` (from the
working directory and from the source checkout), then the download cache. Online users get the upstream
files downloaded into the cache with :func:`download_pararel`.
"""

from __future__ import annotations

import json
import os
import random
import urllib.request
from pathlib import Path

from legibility.errors import LegibilityError
from legibility.facts.types import Fact, fill
from legibility.models.embedded import cache_dir

RELATIONS = [
    "P1001",
    "P101",
    "P103",
    "P106",
    "P108",
    "P127",
    "P1303",
    "P131",
    "P136",
    "P1376",
    "P138",
    "P140",
    "P1412",
    "P159",
    "P17",
    "P176",
    "P178",
    "P19",
    "P190",
    "P20",
    "P264",
    "P27",
    "P276",
    "P279",
    "P30",
    "P36",
    "P361",
    "P364",
    "P37",
    "P39",
    "P407",
    "P413",
    "P449",
    "P463",
    "P47",
    "P495",
    "P530",
    "P740",
    "P937",
]
PATTERNS_URL = (
    "https://raw.githubusercontent.com/yanaiela/pararel/main/data/pattern_data/graphs_json/{}.jsonl"
)
FACTS_URL = "https://raw.githubusercontent.com/yanaiela/pararel/main/data/trex_lms_vocab/{}.jsonl"
ENV_VAR = "LEGIBILITY_PARAREL"


def _candidates(data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    out = []
    if os.environ.get(ENV_VAR):
        out.append(Path(os.environ[ENV_VAR]))
    out.append(Path.cwd().parent / "shared" / "data" / "pararel")
    out.append(Path(__file__).resolve().parents[4] / "shared" / "data" / "pararel")
    out.append(cache_dir() / "data" / "pararel")
    return out


def find_pararel(data_dir: str | os.PathLike | None = None) -> Path:
    for c in _candidates(data_dir):
        if (c / "patterns").is_dir() and (c / "facts").is_dir():
            return c
    tried = ", ".join(str(c) for c in _candidates(data_dir))
    raise LegibilityError(
        f"PARAREL data not found (looked in: {tried}). Point --data-dir or ${ENV_VAR} at a folder with "
        "patterns/ and facts/, or run `legibility download-pararel` when online."
    )


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise LegibilityError(f"{path}:{i}: not valid JSON ({e.msg})") from e
    return rows


def pararel_relations(data_dir: str | os.PathLike | None = None) -> list[str]:
    root = find_pararel(data_dir)
    return sorted(p.stem for p in (root / "patterns").glob("P*.jsonl"))


def load_pararel(
    data_dir: str | os.PathLike | None = None,
    relations: list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Fact]:
    """Facts of the given relations (all by default), each with all its relation's paraphrases.

    ``limit`` keeps at most that many facts per relation, sampled with ``seed`` (not the first ones, which
    are not representative).
    """
    root = find_pararel(data_dir)
    available = pararel_relations(root)
    relations = relations or available
    unknown = [r for r in relations if r not in available]
    if unknown:
        raise LegibilityError(
            f"unknown relation(s) {', '.join(unknown)}; PARAREL has: {', '.join(available)}"
        )
    facts: list[Fact] = []
    for rel in relations:
        patterns = list(
            dict.fromkeys(row["pattern"] for row in _read_jsonl(root / "patterns" / f"{rel}.jsonl"))
        )
        rows = _read_jsonl(root / "facts" / f"{rel}.jsonl")
        if limit is not None and len(rows) > limit:
            rows = random.Random(f"{seed}-{rel}").sample(rows, limit)
        for row in rows:
            sub, obj = row["sub_label"], row["obj_label"]
            prompts = tuple(fill(p, sub) for p in patterns)
            facts.append(Fact(sub, rel, obj, prompts, id=row.get("uuid") or f"{rel}|{sub}|{obj}"))
    return facts


def pararel_files(data_dir: str | os.PathLike | None, relations: list[str] | None) -> tuple[Path, list[Path]]:
    """(the PARAREL folder, the pattern and fact files that :func:`load_pararel` reads for ``relations``)."""
    root = find_pararel(data_dir)
    rels = relations or pararel_relations(root)
    files = [root / kind / f"{rel}.jsonl" for rel in rels for kind in ("patterns", "facts")]
    return root, [f for f in files if f.is_file()]


def download_pararel(target: str | os.PathLike | None = None, relations: list[str] | None = None) -> Path:
    """Fetch PARAREL patterns and facts from upstream into ``target`` (default: the cache)."""
    from legibility.store import make_dir

    root = Path(target) if target else cache_dir() / "data" / "pararel"
    for sub in ("patterns", "facts"):
        make_dir(root / sub, "--to")
    for rel in relations or RELATIONS:
        for sub, url in (("patterns", PATTERNS_URL), ("facts", FACTS_URL)):
            dest = root / sub / f"{rel}.jsonl"
            if dest.exists():
                continue
            try:
                with urllib.request.urlopen(url.format(rel), timeout=30) as r:
                    data = r.read()
            except OSError as e:
                raise LegibilityError(f"could not download {url.format(rel)}: {e}. Are you online?") from e
            tmp = dest.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.rename(dest)
    return root
