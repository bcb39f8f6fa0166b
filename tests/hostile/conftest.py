"""Hostile input against a run directory: every refusal is one line with its exit code, and the
run directory is byte for byte what it was (or, for a new run, was never created)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aquila.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def tree(path: Path) -> dict[str, str]:
    """Every file's sha256 and every directory, by path relative to ``path``."""
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path) + "/"] = "dir"
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def one_line(err: str) -> str:
    """The single stderr line of a refusal (anything else fails the test)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("aquila: error: "), err
    return lines[0]


@pytest.fixture(scope="session")
def train_args(shard_dir, tiny_tokenizer_dir):
    """``aquila train`` arguments of a tiny run on real text (the aquila-test model)."""

    def make(run_dir: Path, *overrides: str) -> list[str]:
        sets = [
            "model.preset='aquila-test'",
            f"data.dir='{shard_dir}'",
            f"tokenizer='{tiny_tokenizer_dir}'",
            "data.seq_len=32",
            "train.batch_size=4",
            "train.max_steps=6",
            "train.log_every=1",
            "train.checkpoint_every=3",
            "train.keep_last=5",
            "optim.warmup_steps=2",
            "monitor.eval.enabled=false",
            *overrides,
        ]
        args = ["train", "--quiet", "--no-report", "--run-dir", str(run_dir)]
        for s in sets:
            args += ["--set", s]
        return args

    return make


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, train_args) -> Path:
    """A completed 6-step run with checkpoints at steps 3 and 6 (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_args(run_dir)) == 0
    return run_dir


@pytest.fixture()
def run_copy(finished_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    return dst


def aquila(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m aquila ARGS`` in a process of its own (this checkout's code)."""
    env = {**os.environ, "PYTHONPATH": SRC, **kw.pop("env", {})}
    return subprocess.run(
        [sys.executable, "-m", "aquila", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )
