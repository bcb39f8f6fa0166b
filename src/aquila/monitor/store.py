"""The monitor's own tables inside the run database, and readers the dashboard and reports share.

The engine's ``RunDB`` holds metrics, events, commands and evals; the monitor adds the mixture in
force over time and the weight-trajectory curves. Tables are created on demand (IF NOT EXISTS), so
an older run database gains them the first time the monitor opens it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aquila.engine.rundb import RunDB

SCHEMA = """
CREATE TABLE IF NOT EXISTS monitor_mixture (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    step INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    time REAL NOT NULL,
    label TEXT NOT NULL,
    weights TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS monitor_trajectory (
    step INTEGER NOT NULL,
    ptype TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    label TEXT NOT NULL,
    curve TEXT NOT NULL,
    prev_step INTEGER,
    distance REAL,
    PRIMARY KEY (step, ptype)
);
"""


def open_db(run_dir) -> RunDB:
    db = RunDB(run_dir)
    with db.connect() as con:
        con.executescript(SCHEMA)
    return db


def metrics_after(db: RunDB, after: int = 0, since_step: int = -1) -> tuple[list[dict], int]:
    """Metric rows inserted after row id ``after`` with step > ``since_step``, and the last row id.

    Row ids (not steps) are the cursor so that steps logged again after a rewind still arrive.
    """
    with db.connect() as con:
        rows = con.execute(
            "SELECT rowid, data FROM metrics WHERE rowid > ? AND step > ? ORDER BY rowid",
            (after, since_step),
        ).fetchall()
    last = rows[-1]["rowid"] if rows else after
    return [json.loads(r["data"]) for r in rows], int(last)


def latest_metrics(db: RunDB) -> list[dict[str, Any]]:
    """One row per step (the last one written wins: a rewound step is logged again)."""
    rows, _ = metrics_after(db)
    by_step = {r["step"]: r for r in rows}
    return [by_step[s] for s in sorted(by_step)]


def add_mixture(db: RunDB, step: int, samples: int, label: str, weights: dict) -> None:
    with db.connect() as con:
        con.execute(
            "INSERT INTO monitor_mixture(step, samples, time, label, weights) VALUES (?,?,?,?,?)",
            (step, samples, time.time(), label, json.dumps(weights)),
        )


def mixtures(db: RunDB) -> list[dict[str, Any]]:
    with db.connect() as con:
        rows = con.execute("SELECT * FROM monitor_mixture ORDER BY id").fetchall()
    return [{**dict(r), "weights": json.loads(r["weights"])} for r in rows]


def put_trajectory(
    db: RunDB,
    step: int,
    ptype: str,
    tokens: int,
    label: str,
    curve: list[float],
    prev_step: int | None,
    distance: float | None,
) -> None:
    with db.connect() as con:
        con.execute(
            "INSERT OR REPLACE INTO monitor_trajectory VALUES (?,?,?,?,?,?,?)",
            (step, ptype, tokens, label, json.dumps(curve), prev_step, distance),
        )


def drop_trajectory_after(db: RunDB, step: int) -> None:
    with db.connect() as con:
        con.execute("DELETE FROM monitor_trajectory WHERE step > ?", (step,))


def trajectory(db: RunDB) -> list[dict[str, Any]]:
    with db.connect() as con:
        rows = con.execute("SELECT * FROM monitor_trajectory ORDER BY step, ptype").fetchall()
    return [{**dict(r), "curve": json.loads(r["curve"])} for r in rows]
