"""A checkpoint that cannot be written: one line, exit code 4, nothing partial left, the previous
checkpoint still the latest; or, with ``train.on_save_error = "continue"``, training goes on."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aquila.cli import main
from aquila.engine.checkpoint import list_checkpoints, save_checkpoint

from .conftest import SRC, one_line, tree

RESUME = ["--quiet", "--no-report", "--set", "train.max_steps=9"]


def _fail_writes(monkeypatch, error: Exception, target: str = "torch", times: int = 10**9):
    """Make the checkpoint writer raise ``error`` (the first ``times`` writes)."""
    calls = {"n": 0}
    if target == "torch":
        real = torch.save

        def fake(obj, f, *a, **kw):
            calls["n"] += 1
            if calls["n"] <= times:
                if hasattr(f, "write"):
                    f.write(b"PK\3\4 partial")  # something reached the disk first
                raise error
            return real(obj, f, *a, **kw)

        monkeypatch.setattr(torch, "save", fake)
    else:
        import safetensors.torch

        real = safetensors.torch.save_file

        def fake(tensors, filename, *a, **kw):
            calls["n"] += 1
            if calls["n"] <= times:
                Path(filename).write_bytes(b"\0" * 1000)
                raise error
            return real(tensors, filename, *a, **kw)

        monkeypatch.setattr(safetensors.torch, "save_file", fake)
    return calls


def _safetensor_error() -> Exception:
    from safetensors import SafetensorError

    return SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
        'left on device" })'
    )


WRITER_ERRORS = [
    pytest.param(
        OSError(errno.ENOSPC, "No space left on device"), "torch", "disk full", id="ENOSPC"
    ),
    pytest.param(
        RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
            "file data/3: file write failed\nframe #0: c10::ThrowEnforceNotMet"
        ),
        "torch",
        "RuntimeError: [enforce fail at inline_container.cc:778]",
        id="inline_container",
    ),
    pytest.param(None, "safetensors", "disk full (SafetensorError", id="SafetensorError"),
    pytest.param(OSError(errno.EIO, "Input/output error"), "torch", "OSError: [Errno 5]", id="EIO"),
]


@pytest.mark.parametrize(("error", "target", "says"), WRITER_ERRORS)
def test_a_failed_save_is_one_line_and_leaves_the_latest(
    run_copy, monkeypatch, capsys, error, target, says
):
    ckpts = run_copy / "checkpoints"
    before = tree(ckpts)
    _fail_writes(monkeypatch, error or _safetensor_error(), target)
    rc = main(["train", "--resume", str(run_copy), *RESUME])
    line = one_line(capsys.readouterr().err)
    assert rc == 4
    assert "checkpoints/step-00000009 was not saved: " in line and says in line, line
    assert line.endswith(f"the latest checkpoint is still {ckpts / 'step-00000006'}"), line
    assert tree(ckpts) == before  # no partial dir, nothing pruned
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_copy), *RESUME]) == 0  # resumes from step 6


def test_a_failed_background_save(run_copy, monkeypatch, capsys):
    before = tree(run_copy / "checkpoints")
    _fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    rc = main(["train", "--resume", str(run_copy), *RESUME, "--set", "train.async_checkpoint=true"])
    line = one_line(capsys.readouterr().err)
    assert rc == 4 and "step-00000009 was not saved: disk full" in line, line
    assert tree(run_copy / "checkpoints") == before


def test_on_save_error_continue_retries_at_the_next_checkpoint(run_copy, monkeypatch, capsys):
    calls = _fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), times=1)
    rc = main(
        ["train", "--resume", str(run_copy), "--quiet", "--no-report", "--json"]
        + ["--set", "train.max_steps=12", "--set", "train.on_save_error='continue'"]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    warnings = [ln for ln in out.err.splitlines() if ln.startswith("aquila: warning:")]
    assert len(warnings) == 1 and "step-00000009 was not saved: disk full" in warnings[0]
    assert warnings[0].endswith("training goes on")
    assert calls["n"] == 2
    assert [s for s, _ in list_checkpoints(run_copy)] == [3, 6, 12]
    assert not [p for p in (run_copy / "checkpoints").iterdir() if p.name.startswith(".")]
    state = torch.load(
        run_copy / "checkpoints" / "step-00000012" / "train_state.pt", weights_only=True
    )
    failed = [h for h in state["history"] if h["kind"] == "save-failed"]
    assert [h["step"] for h in failed] == [9]


def test_continue_still_fails_when_the_final_checkpoint_cannot_be_written(
    run_copy, monkeypatch, capsys
):
    _fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    rc = main(
        ["train", "--resume", str(run_copy), *RESUME, "--set", "train.on_save_error='continue'"]
    )
    err = capsys.readouterr().err
    assert rc == 4
    assert err.count("aquila: warning:") == 1  # step 9 (an interval) goes on ...
    assert err.splitlines()[-1].startswith("aquila: error: checkpoint")  # ... the end cannot
    assert [s for s, _ in list_checkpoints(run_copy)] == [3, 6]


def test_a_second_ctrl_c_during_a_save_leaves_no_temporary_dir(run_copy, monkeypatch):
    from aquila.model.config import get_preset
    from aquila.model.transformer import AquilaModel

    model = AquilaModel(get_preset("aquila-test"))
    _fail_writes(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run_copy, 9, model, {"x": 1})
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == [
        "step-00000003",
        "step-00000006",
    ]


# -- real writers failing: no mock between aquila and the file system -------------------------
def _limit_file_size(limit: int):
    def pre() -> None:
        # Beyond the limit a write fails with EFBIG instead of the process being killed.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


@pytest.mark.parametrize(
    ("limit", "writer"),
    [(300_000, "SafetensorError"), (900_000, "RuntimeError")],
    ids=["safetensors-writer", "torch-zip-writer"],
)
def test_real_writer_errors(run_copy, limit, writer):
    """A file-size limit makes the real writers fail mid-file: safetensors' (the weights, ~600
    kB) or torch's zip writer (the training state, ~1.2 MB)."""
    before = tree(run_copy / "checkpoints")
    proc = subprocess.run(
        [sys.executable, "-m", "aquila", "train", "--resume", str(run_copy), *RESUME],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(limit),
    )
    assert proc.returncode == 4, proc.stderr
    line = one_line(proc.stderr)
    assert "step-00000009 was not saved: " + writer in line, line
    assert "the latest checkpoint is still" in line and line.endswith("step-00000006")
    assert tree(run_copy / "checkpoints") == before


TMPFS = """
import hashlib, json, os, subprocess, sys
from aquila.model.transformer import AquilaModel
run = sys.argv[1]
def names():
    return sorted(os.listdir(os.path.join(run, "checkpoints")))
before = names()
proc = subprocess.run([sys.executable, "-m", "aquila", "train", "--resume", run, *sys.argv[2:]],
                      capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "err": proc.stderr, "before": before, "after": names(),
                  "free": os.statvfs(run).f_bavail * os.statvfs(run).f_frsize}))
"""


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs t /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no user/mount namespaces for a tmpfs")
def test_a_really_full_disk(run_copy, tmp_path):
    """A 3 MiB tmpfs holding the run with one checkpoint (1.9 MB): the next one does not fit."""
    shutil.rmtree(run_copy / "checkpoints" / "step-00000003")
    script = tmp_path / "full.py"
    script.write_text(TMPFS)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    inner = mnt / "run"
    shell = textwrap.dedent(
        f"""
        mount -t tmpfs -o size=3m tmpfs {mnt} && cp -a {run_copy} {inner} &&
        exec {sys.executable} {script} {inner} {" ".join(RESUME)}
        """
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rc"] == 4, out["err"]
    line = one_line(out["err"])
    assert "step-00000009 was not saved: disk full" in line, line
    assert line.endswith(
        "the latest checkpoint is still " + str(inner / "checkpoints/step-00000006")
    )
    assert out["after"] == out["before"] == ["step-00000006"]
    assert out["free"] > 1_000_000  # the partial files were removed: the space is back
