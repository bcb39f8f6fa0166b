"""Run untrusted generated code in a separate, limited Python process; never in this one.

Each program runs as ``python -I`` (isolated: no user site, no PYTHON* variables, cwd not on
sys.path) in a fresh temporary directory with:

* ``resource.setrlimit`` caps on CPU seconds, address space, file size and open files (set in
  the child before exec);
* a wall-clock timeout (the whole process group is killed);
* no network: inside a new network namespace (``unshare -n``) when the kernel lets an
  unprivileged user make one, and in any case a ``sitecustomize`` that replaces the socket
  constructors with one that raises;
* an environment holding only PATH/LANG.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_NO_NETWORK = """
import socket as _socket

def _blocked(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")

class _BlockedSocket(_socket.socket):
    def __init__(self, *args, **kwargs):
        _blocked()

_socket.socket = _BlockedSocket
_socket.create_connection = _blocked
_socket.socketpair = _blocked
_socket.fromfd = _blocked
"""


@dataclass
class SandboxLimits:
    cpu_seconds: int = 10
    wall_seconds: float = 15.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 10 << 20
    open_files: int = 64


@dataclass
class SandboxResult:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    stderr_tail: str


@lru_cache(maxsize=1)
def _can_unshare_net() -> bool:
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        r = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _limit(limits: SandboxLimits):
    def apply() -> None:
        import resource

        os.setsid()
        # SIGXCPU at the soft limit; the hard limit (SIGKILL) one second later catches a handler.
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_program(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``source`` as a script in the sandbox; passed means exit status 0 in time."""
    limits = limits or SandboxLimits()
    with tempfile.TemporaryDirectory(prefix="aquila-sandbox-") as tmp:
        work = Path(tmp)
        (work / "program.py").write_text(source, encoding="utf-8")
        # -I ignores PYTHONPATH, so the no-network prelude runs first in the program itself.
        runner = f"{_NO_NETWORK}\nimport runpy\nrunpy.run_path('program.py', run_name='__main__')\n"
        (work / "run.py").write_text(runner, encoding="utf-8")
        cmd = [sys.executable, "-I", "run.py"]
        if _can_unshare_net():
            cmd = ["unshare", "-rn", *cmd]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_limit(limits),
        )
        try:
            _, err = proc.communicate(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return SandboxResult(False, "timeout", "")
        tail = err.decode("utf-8", "replace")[-2000:]
        if proc.returncode == 0:
            return SandboxResult(True, "passed", tail)
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return SandboxResult(False, "timeout", tail)
        return SandboxResult(False, "failed", tail)


def humaneval_program(problem: dict, completion: str) -> str:
    """The script HumanEval runs: prompt + completion, the tests, then the check call."""
    return (
        problem["prompt"]
        + completion
        + "\n\n"
        + problem["test"]
        + "\n\n"
        + f"check({problem['entry_point']})\n"
    )
