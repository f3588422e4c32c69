"""The results store of a sweep: one DuckDB file, one row per trial, queryable with SQL.

Only the sweep's parent process writes (workers return results), so the single-writer rule of DuckDB holds.
Columns: trial_id, sweep, variant, seed, status (pending|running|done|failed), overrides/config/train/metrics
(JSON), started/finished (UTC), train_s/score_s (seconds), error. A view ``trials_flat`` adds the headline
numbers as columns. Fact metrics are on held-out facts (no objective saw them; ``data.fact_split``); the
columns ending in ``_trained_facts`` are the same metrics on the facts the objectives trained on.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from legibility.errors import LegibilityError

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
  trial_id VARCHAR PRIMARY KEY, sweep VARCHAR, variant VARCHAR, seed INTEGER, status VARCHAR,
  overrides JSON, config JSON, train JSON, metrics JSON,
  started TIMESTAMP, finished TIMESTAMP, train_s DOUBLE, score_s DOUBLE, error VARCHAR
);
"""


def view_sql() -> str:
    """The SQL view ``trials_flat``: the trial's columns and one column per metric of the table's
    ``column`` view (dots become underscores), read from the training record or the scorecard; a metric of
    facts has a second column for the objective facts (``..._trained_facts``)."""
    from legibility.metrics.table import TRAINED_FACTS, info, names

    cols = []
    for base in names("column"):
        entry = info(base)
        # fact metrics: the held-out facts' (bare name) and the objective facts' (+ .trained_facts)
        for name in (base, base + TRAINED_FACTS) if entry.fact_groups else (base,):
            path = f'$."{name}"' if "." in name else f"$.{name}"
            if entry.source == "train":
                expr = f"json_extract(train, '{path}')"
            else:
                expr = f"json_extract(metrics, '{path}.value')"
            cols.append(f"  CAST({expr} AS DOUBLE) AS {name.replace('.', '_')}")
    head = "  trial_id, sweep, variant, seed, status, train_s, score_s, error"
    return "CREATE OR REPLACE VIEW trials_flat AS SELECT\n" + ",\n".join([head, *cols]) + "\nFROM trials;"


STALE = "stale:"  # status prefix of rows the sweep's current config no longer produces


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class ResultsStore:
    """Trial rows of a sweep in ``<dir>/results.duckdb``.

    ``read_only=True`` opens the file read-only with DuckDB's file system access turned off (no COPY TO,
    ATTACH, INSTALL or reading other files); :meth:`query` always runs on such a connection."""

    def __init__(self, path: str | os.PathLike, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise LegibilityError(f"{self.path} does not exist; run the sweep first")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = self._connect(read_only)
        if not read_only:
            self.con.execute(SCHEMA)
            self.con.execute(view_sql())

    def _connect(self, read_only: bool):
        import duckdb

        config: dict[str, str | bool | int | float | list[str]] = {}
        if read_only:
            config["enable_external_access"] = False
        try:
            return duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.Error as e:
            raise LegibilityError(f"cannot open {self.path} ({e}); is another sweep writing to it?") from e

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> dict[str, str]:
        return dict(self.con.execute("SELECT trial_id, status FROM trials").fetchall())

    def add_pending(self, sweep: str, trial: Any) -> None:
        self.con.execute(
            "INSERT INTO trials (trial_id, sweep, variant, seed, status, overrides, config) VALUES (?, ?, ?, ?, "
            "'pending', ?, ?) ON CONFLICT (trial_id) DO NOTHING",
            [
                trial.id,
                sweep,
                trial.variant,
                trial.seed,
                json.dumps(trial.overrides),
                json.dumps(trial.run_config),
            ],
        )

    def mark_stale(self, sweep: str, current: list[str]) -> None:
        """Mark rows of ``sweep`` whose id is not in ``current`` as ``stale:<status>``; revive current ones."""
        keep = set(current)
        for tid, status in self.con.execute(
            "SELECT trial_id, status FROM trials WHERE sweep = ?", [sweep]
        ).fetchall():
            stale = status.startswith(STALE)
            if tid in keep and stale:
                new = status[len(STALE) :]
            elif tid not in keep and not stale:
                new = STALE + status
            else:
                continue
            self.con.execute("UPDATE trials SET status = ? WHERE trial_id = ?", [new, tid])

    def mark_running(self, trial_id: str) -> None:
        self.con.execute(
            "UPDATE trials SET status = 'running', started = ?, error = NULL WHERE trial_id = ?",
            [_now(), trial_id],
        )

    def mark_done(self, trial_id: str, result: dict) -> None:
        self.con.execute(
            "UPDATE trials SET status = 'done', finished = ?, train = ?, metrics = ?, train_s = ?, score_s = ? "
            "WHERE trial_id = ?",
            [
                _now(),
                json.dumps(result.get("train", {})),
                json.dumps(result.get("metrics", {})),
                result.get("train_s"),
                result.get("score_s"),
                trial_id,
            ],
        )

    def mark_failed(self, trial_id: str, error: str) -> None:
        self.con.execute(
            "UPDATE trials SET status = 'failed', finished = ?, error = ? WHERE trial_id = ?",
            [_now(), error, trial_id],
        )

    def rows(self, where: str = "TRUE") -> list[dict]:
        cur = self.con.execute(f"SELECT * FROM trials WHERE {where} ORDER BY variant, seed, trial_id")
        cols = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            rec = dict(zip(cols, row, strict=True))
            for k in ("overrides", "config", "train", "metrics"):
                rec[k] = json.loads(rec[k]) if rec[k] else {}
            out.append(rec)
        return out

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run one read query (SELECT, WITH, VALUES, EXPLAIN); anything else is refused with a one-line
        LegibilityError. The query runs on a read-only connection without file system access: a store opened
        for writing is reopened read-only first (further writes through this object are then refused)."""
        import duckdb

        check_read_query(sql)
        if not self.read_only:
            self.con.close()
            self.con = self._connect(True)
            self.read_only = True
        try:
            cur = self.con.execute(sql)
        except duckdb.Error as e:
            msg = " ".join(str(e).split())
            raise LegibilityError(f"query failed: {msg}. Tables: trials, trials_flat") from e
        return [d[0] for d in cur.description], cur.fetchall()


def check_read_query(sql: str) -> None:
    """Refuse anything but exactly one read statement, with a one-line LegibilityError."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise LegibilityError(f"query failed: {' '.join(str(e).split())}. Tables: trials, trials_flat") from e
    if len(statements) != 1:
        raise LegibilityError(f"give exactly one SELECT statement, got {len(statements)}")
    kind = statements[0].type
    if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
        name = str(kind).rsplit(".", 1)[-1]
        raise LegibilityError(
            f"results --sql is read-only: a {name} statement is refused; give one SELECT "
            "(tables: trials, trials_flat)"
        )
