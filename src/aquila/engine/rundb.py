"""The run database: one SQLite file per run directory, written by the trainer, read by tools.

It holds step metrics, events (anomalies, applied commands), the control queue and evaluation
results, so the dashboard and `aquila control` work while training writes (WAL mode allows one
writer and many readers). The schema uses plain tables and portable types so that a server
database could take its place.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aquila.errors import ReportedError, RunFileFailed, UserError

DB_FILE = "run.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
    step INTEGER NOT NULL,
    time REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_step ON metrics(step);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    step INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    status TEXT NOT NULL,
    applied_step INTEGER,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS evals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    step INTEGER NOT NULL,
    time REAL NOT NULL,
    task TEXT NOT NULL,
    data TEXT NOT NULL
);
"""


def _unreadable(path: Path, exc: sqlite3.Error) -> ReportedError:
    if "full" in str(exc) or "readonly" in str(exc):
        # The disk, not the input: exit code 4 like a checkpoint that cannot be written.
        return RunFileFailed(f"{path}: the run database cannot be written ({exc})")
    return UserError(
        f"{path}: the run database cannot be read ({exc}); move it aside (mv {path} "
        f"{path}.broken) to go on without its metrics, events and commands"
    )


def check_run_db(run_dir: str | Path) -> None:
    """Refuse a run database that exists but cannot be read, without changing it."""
    path = Path(run_dir) / DB_FILE
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return  # none yet: the run starts one
    try:
        # immutable: no -shm/-wal files are created and nothing is locked (no training holds
        # the run directory when a resume checks it); a WAL not yet folded in is not read.
        con = sqlite3.connect(f"file:{path}?immutable=1", uri=True, timeout=30)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from None
    if row is None or row[0] != "ok":
        raise _unreadable(path, sqlite3.DatabaseError(row[0] if row else "no answer"))


class RunDB:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / DB_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create()

    def _create(self, patience: float = 30.0) -> None:
        """WAL mode (kept by the file) and the tables. Switching the journal mode does not wait
        for a busy database like other statements do: "database is locked" at once when another
        connection (the trainer, the dashboard, a tool) opens the new file at the same moment.
        So it is set once, here, and retried."""
        deadline = time.monotonic() + patience
        while True:
            try:
                con = sqlite3.connect(self.path, timeout=patience)
                try:
                    if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        con.execute("PRAGMA journal_mode=WAL")
                    con.executescript(SCHEMA)
                finally:
                    con.close()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise _unreadable(self.path, exc) from None
                time.sleep(0.05)
            except sqlite3.Error as exc:  # not a database, malformed, unreadable
                raise _unreadable(self.path, exc) from None

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as exc:
            raise _unreadable(self.path, exc) from None
        try:
            con.execute("PRAGMA synchronous=NORMAL")
            con.row_factory = sqlite3.Row
            with con:
                yield con
        except sqlite3.Error as exc:  # a file corrupted (or a disk filled) while in use
            raise _unreadable(self.path, exc) from None
        finally:
            con.close()

    # -- metrics and events -------------------------------------------------------------------
    def add_metrics(self, step: int, data: dict[str, Any]) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT INTO metrics(step, time, data) VALUES (?, ?, ?)",
                (step, time.time(), json.dumps(data)),
            )

    def metrics(self, since_step: int = -1) -> list[dict[str, Any]]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT data FROM metrics WHERE step > ? ORDER BY step", (since_step,)
            ).fetchall()
        return [json.loads(r["data"]) for r in rows]

    def add_event(
        self, step: int, kind: str, message: str, severity: str = "info", **data: Any
    ) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT INTO events(step, time, kind, severity, message, data) VALUES (?,?,?,?,?,?)",
                (step, time.time(), kind, severity, message, json.dumps(data)),
            )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
        with self.connect() as con:
            rows = con.execute(q, (kind,) if kind else ()).fetchall()
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    # -- the control queue --------------------------------------------------------------------
    def enqueue(self, kind: str, **args: Any) -> int:
        with self.connect() as con:
            cur = con.execute(
                "INSERT INTO commands(created, kind, args, status) VALUES (?, ?, ?, 'pending')",
                (time.time(), kind, json.dumps(args)),
            )
            return int(cur.lastrowid)

    def pending(self) -> list[dict[str, Any]]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT * FROM commands WHERE status = 'pending' ORDER BY id"
            ).fetchall()
        return [{**dict(r), "args": json.loads(r["args"])} for r in rows]

    def resolve(self, command_id: int, status: str, step: int, reason: str = "") -> None:
        with self.connect() as con:
            con.execute(
                "UPDATE commands SET status = ?, applied_step = ?, reason = ? WHERE id = ?",
                (status, step, reason, command_id),
            )

    def commands(self) -> list[dict[str, Any]]:
        with self.connect() as con:
            rows = con.execute("SELECT * FROM commands ORDER BY id").fetchall()
        return [{**dict(r), "args": json.loads(r["args"])} for r in rows]

    # -- evaluation results -------------------------------------------------------------------
    def add_eval(self, step: int, task: str, data: dict[str, Any]) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT INTO evals(step, time, task, data) VALUES (?, ?, ?, ?)",
                (step, time.time(), task, json.dumps(data)),
            )

    def evals(self) -> list[dict[str, Any]]:
        with self.connect() as con:
            rows = con.execute("SELECT * FROM evals ORDER BY id").fetchall()
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]
