"""A file of the run other than a checkpoint that cannot be written: one line, exit code 4,
nothing partial left in it, and the run resumes once the disk has room."""

from __future__ import annotations

import errno
import json
import os

from aquila.cli import main
from aquila.engine import callbacks

from .conftest import one_line

RESUME = ["--quiet", "--no-report", "--set", "train.max_steps=9"]


def _disk_full_on_metrics(monkeypatch, at_line: int):
    """os.write to metrics.jsonl fills the disk in the middle of line ``at_line`` (1-based,
    counted from now): half of it reaches the file, then ENOSPC."""
    real = os.write
    seen = {"lines": 0}

    def fake(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            return real(fd, data)
        seen["lines"] += 1
        if seen["lines"] < at_line:
            return real(fd, data)
        if seen["lines"] == at_line:
            return real(fd, bytes(data[: len(data) // 2]))  # a short write: the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(callbacks.os, "write", fake)


def test_a_full_disk_while_appending_metrics(run_copy, monkeypatch, capsys):
    metrics = run_copy / "metrics.jsonl"
    lines_before = metrics.read_text().splitlines()
    _disk_full_on_metrics(monkeypatch, at_line=2)  # step 7 is logged, step 8 is not
    rc = main(["train", "--resume", str(run_copy), *RESUME])
    line = one_line(capsys.readouterr().err)
    assert rc == 4, line
    assert "metrics.jsonl: step 8 not logged: No space left on device" in line, line
    assert line.endswith(f"`aquila train --resume {run_copy}`)"), line
    rows = [json.loads(r) for r in metrics.read_text().splitlines()]  # no partial line
    assert len(rows) == len(lines_before) + 1 and rows[-1]["step"] == 7
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_copy), *RESUME]) == 0
    steps = [json.loads(r)["step"] for r in metrics.read_text().splitlines()]
    assert steps[-3:] == [7, 8, 9]


def test_a_full_disk_while_writing_the_run_database(run_copy, monkeypatch, capsys):
    import sqlite3

    from aquila.engine import rundb

    real = sqlite3.connect
    pages = {}

    def connect(*args, **kwargs):
        con = real(*args, **kwargs)
        if str(args[0]).endswith("run.sqlite"):
            # SQLite's own "database or disk is full" once the file may not grow.
            pages.setdefault("n", con.execute("PRAGMA page_count").fetchone()[0])
            con.execute(f"PRAGMA max_page_count = {pages['n']}")
        return con

    monkeypatch.setattr(rundb.sqlite3, "connect", connect)
    longer = [*RESUME, "--set", "train.max_steps=40"]  # rows enough to need new pages
    rc = main(["train", "--resume", str(run_copy), *longer])
    line = one_line(capsys.readouterr().err)
    assert rc == 4, line
    assert "run.sqlite: the run database cannot be written (database or disk is full)" in line
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_copy), *longer]) == 0
