"""The results store of a sweep: one DuckDB file, one row per trial, queryable with SQL.

Only the sweep's parent process writes (workers return results), so the single-writer rule of DuckDB holds.
Columns: trial_id, sweep, variant, seed, status (pending|running|done|failed), overrides/config/train/metrics
(JSON), started/finished (UTC), train_s/score_s (seconds), error. A view ``trials_flat`` adds the headline
numbers as columns.
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
CREATE OR REPLACE VIEW trials_flat AS SELECT
  trial_id, sweep, variant, seed, status, train_s, score_s, error,
  CAST(json_extract(train, '$.val_loss') AS DOUBLE) AS val_loss,
  CAST(json_extract(train, '$.fact_accuracy') AS DOUBLE) AS fact_accuracy,
  CAST(json_extract(metrics, '$.suppressability.value') AS DOUBLE) AS suppressability,
  CAST(json_extract(metrics, '$.specific_suppressability.value') AS DOUBLE) AS specific_suppressability,
  CAST(json_extract(metrics, '$."suppression.own".value') AS DOUBLE) AS suppression_own,
  CAST(json_extract(metrics, '$."neurons.per_fact".value') AS DOUBLE) AS neurons_per_fact
FROM trials;
"""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class ResultsStore:
    """Trial rows of a sweep in ``<dir>/results.duckdb``."""

    def __init__(self, path: str | os.PathLike):
        import duckdb

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path))
        except duckdb.IOException as e:
            raise LegibilityError(f"cannot open {self.path} ({e}); is another sweep writing to it?") from e
        self.con.execute(SCHEMA)

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
        import duckdb

        try:
            cur = self.con.execute(sql)
        except duckdb.Error as e:
            raise LegibilityError(f"query failed: {e}. Tables: trials, trials_flat") from e
        return [d[0] for d in cur.description], cur.fetchall()
