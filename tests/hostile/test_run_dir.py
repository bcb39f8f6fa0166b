"""The run directory has one owner: a lock, stale leftovers cleared, the latest checkpoint never
pruned, a corrupt run database refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aquila.cli import main
from aquila.engine.checkpoint import list_checkpoints, prune_checkpoints
from aquila.engine.lock import LOCK_FILE, RunLock, running_trainer
from aquila.errors import RunDirBusy

from .conftest import SRC, one_line, tree

HOLD = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": 0}).encode())
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture()
def holder(run_copy):
    """Another process holding the run directory's lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_copy / LOCK_FILE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_training_is_refused_naming_the_holder(run_copy, holder, capsys):
    before = tree(run_copy)
    rc = main(["train", "--resume", str(run_copy), "--quiet", "--no-report"])
    line = one_line(capsys.readouterr().err)
    assert rc == 5
    assert f"in use by another training (pid {holder.pid} on host" in line, line
    assert tree(run_copy) == before
    # A new run pointed at the same directory is refused alike.
    with pytest.raises(RunDirBusy):
        RunLock(run_copy).acquire(patience=0.1)


def test_a_lock_left_by_a_killed_training_is_taken(run_copy, holder, capsys):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # The file still names the dead holder; the kernel released its flock.
    assert json.loads((run_copy / LOCK_FILE).read_text())["pid"] == holder.pid
    assert running_trainer(run_copy) is None
    rc = main(["train", "--resume", str(run_copy), "--quiet", "--no-report"])
    assert rc == 0, capsys.readouterr().err
    info = json.loads((run_copy / LOCK_FILE).read_text())
    assert info["pid"] == os.getpid()  # the last holder is recorded
    assert running_trainer(run_copy) is None  # and released at the end


def test_two_resumes_at_once(run_copy, capsys):
    """Two `aquila train --resume R` started together: one trains, the other is refused with
    exit code 5 and writes nothing (before, both ran and overwrote each other's checkpoints)."""
    args = ["train", "--resume", str(run_copy), "--quiet", "--no-report"]
    first = subprocess.Popen(
        [sys.executable, "-m", "aquila", *args, "--set", "train.max_steps=100000"],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while running_trainer(run_copy) is None or not _training(run_copy):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        config = (run_copy / "config.toml").read_bytes()
        assert main([*args, "--set", "train.max_steps=9"]) == 5  # this process: the second
        line = one_line(capsys.readouterr().err)
        assert f"in use by another training (pid {first.pid} on host" in line, line
        assert (run_copy / "config.toml").read_bytes() == config
        assert main(["control", str(run_copy), "stop"]) == 0
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    assert running_trainer(run_copy) is None


def _training(run_dir: Path) -> bool:
    # The first training has written config.toml with its own max_steps: it is past on_start.
    return "max_steps = 100000" in (run_dir / "config.toml").read_text()


def test_stale_leftovers_are_removed_when_a_training_takes_the_run(run_copy, capsys):
    ckpts = run_copy / "checkpoints"
    (ckpts / ".tmp-step-00000009-4242").mkdir()
    (ckpts / ".tmp-step-00000009-4242" / "model.safetensors").write_bytes(b"\0" * 4096)
    (ckpts / ".tmp-step-00000012").mkdir()  # a multi-process save's temporary dir
    (ckpts / ".del-step-00000001-77").mkdir()  # a prune killed mid-delete
    (ckpts / "step-00000002").mkdir()  # what an old prune killed mid-delete left: empty
    (ckpts / "step-00000004").mkdir()
    (ckpts / "step-00000004" / "model.json").write_text("{}")  # half-deleted
    (ckpts / "step-00000005").mkdir()
    (ckpts / "step-00000005" / "notes.txt").write_text("mine")  # not ours: kept
    (run_copy / ".tmp-config.toml-1a2b3c4d").write_text("half")
    rc = main(
        ["train", "--resume", str(run_copy), "--quiet", "--no-report"]
        + ["--set", "train.max_steps=7"]
    )
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["step-00000003", "step-00000005", "step-00000006", "step-00000007"]
    assert (ckpts / "step-00000005" / "notes.txt").read_text() == "mine"
    assert not list(run_copy.glob(".tmp-*"))


def test_prune_never_removes_the_latest(run_copy):
    assert [s for s, _ in list_checkpoints(run_copy)] == [3, 6]
    prune_checkpoints(run_copy, keep_last=0)
    assert [s for s, _ in list_checkpoints(run_copy)] == [6]
    prune_checkpoints(run_copy, keep_last=-3)
    assert [s for s, _ in list_checkpoints(run_copy)] == [6]


def test_a_kill_during_pruning_leaves_no_half_deleted_checkpoint(run_copy, monkeypatch):
    import aquila.engine.checkpoint as ckpt

    def killed(path, *a, **kw):
        (Path(path) / "train_state.pt").unlink()  # part of the delete happened
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(run_copy, keep_last=1)
    monkeypatch.undo()
    names = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    assert names == [f".del-step-00000003-{os.getpid()}", "step-00000006"]
    assert ckpt.remove_stale_temps(run_copy)  # what the next training does first
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step-00000006"]


KILL_IN_SAVE = """
import os, signal, sys
import aquila.engine.checkpoint as ckpt
from aquila.cli import main

def killed(tmp, final, state):
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 with the model files written

ckpt.finalize_checkpoint = killed
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_during_a_save(run_copy, capsys):
    """The temporary dir a kill -9 leaves mid-save is removed by the next training, which
    resumes from the last complete checkpoint."""
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_SAVE, "train", "--resume", str(run_copy), "--quiet"]
        + ["--no-report", "--set", "train.max_steps=9"],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = [p.name for p in (run_copy / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert len(left) == 1 and left[0].startswith(".tmp-step-00000009-"), left
    assert [s for s, _ in list_checkpoints(run_copy)] == [3, 6]
    assert main(["train", "--resume", str(run_copy), "--quiet", "--no-report", "--json"]) == 0
    out = capsys.readouterr()
    assert "resuming" in out.err and "from step-00000006" in out.err
    assert json.loads(out.out.splitlines()[-1])["steps"] == 9
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == [
        "step-00000003",
        "step-00000006",
        "step-00000009",
    ]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: os.urandom(len(b)), id="garbage"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:8192] + os.urandom(4096) + b[12288:], id="page-overwritten"),
    ],
)
def test_corrupt_run_database(run_copy, capsys, damage):
    """A resume refuses any damage (the database's own check); a tool reading it either still
    answers (the damage is elsewhere) or says so in one line: never a traceback."""
    db = run_copy / "run.sqlite"
    assert db.stat().st_size > 16384
    db.write_bytes(damage(db.read_bytes()))
    before = tree(run_copy)
    assert main(["train", "--resume", str(run_copy), "--quiet", "--no-report"]) == 2
    assert "the run database cannot be read" in one_line(capsys.readouterr().err)
    for argv in (["control", str(run_copy), "status"], ["monitor", str(run_copy), "--json"]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc in (0, 2), (argv, err)
        if rc == 2:
            assert "the run database cannot be read" in one_line(err), argv
    assert tree(run_copy) == before


def test_corrupt_run_database_every_tool(run_copy, capsys):
    db = run_copy / "run.sqlite"
    db.write_bytes(b"SQLite format 3\0" + os.urandom(4096))
    before = tree(run_copy)
    for argv in (
        ["train", "--resume", str(run_copy), "--quiet", "--no-report"],
        ["control", str(run_copy), "status"],
        ["control", str(run_copy), "set-lr", "1e-3"],
        ["monitor", str(run_copy), "--report"],
    ):
        assert main(argv) == 2, argv
        line = one_line(capsys.readouterr().err)
        assert f"{db}: the run database cannot be read" in line and "mv " in line, line
    assert tree(run_copy) == before


@pytest.mark.parametrize("damaged", ["train_state.pt", "model.safetensors"])
def test_a_truncated_latest_checkpoint(run_copy, capsys, damaged):
    path = run_copy / "checkpoints" / "step-00000006" / damaged
    path.write_bytes(path.read_bytes()[:1000])
    ckpts = tree(run_copy / "checkpoints")
    assert main(["train", "--resume", str(run_copy), "--quiet", "--no-report"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"cannot read {path}" in line, line
    assert line.endswith(f"to resume from step-00000003 instead, move {path.parent} aside")
    assert tree(run_copy / "checkpoints") == ckpts


ONLY_THE_LOCK = """
import sys
import aquila.engine.lock as lock
lock.refuse_if_running = lambda run_dir: None  # no early probe: the lock itself refuses
from aquila.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.distributed
def test_every_rank_learns_of_a_refused_lock(run_copy, holder, tmp_path):
    """Under torchrun rank 0 tries the lock; refused, it tells the other ranks, and each exits
    with code 5 and one line instead of waiting in a collective."""
    driver = tmp_path / "driver.py"
    driver.write_text(ONLY_THE_LOCK)
    before = tree(run_copy)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node=2", str(driver), "train", "--resume"]
        + [str(run_copy), "--quiet", "--no-report"],
        env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    refusals = [ln for ln in proc.stderr.splitlines() if "aquila: error: run directory" in ln]
    assert len(refusals) == 2, proc.stderr[-3000:]
    assert all(f"in use by another training (pid {holder.pid}" in ln for ln in refusals)
    assert "exitcode  : 5" in proc.stderr or "exit code 5" in proc.stderr, proc.stderr[-3000:]
    assert tree(run_copy) == before
