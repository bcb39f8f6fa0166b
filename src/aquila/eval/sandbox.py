"""Run untrusted generated code in a Bubblewrap jail; never in this process.

Each program runs as ``python -I`` under ``bwrap`` (Debian package ``bubblewrap``) with:

* a read-only system (``/usr`` and the interpreter's prefix) and nothing else of the host's
  filesystem: no ``/etc``, ``/home``, ``/root`` or the run directories; the program itself is a
  read-only file copied in, and the only writable place is a private, size-capped ``/tmp``;
* no network (a new network namespace holds only its own loopback; abstract Unix sockets are
  per-namespace too);
* a new PID namespace: the program sees only its own processes, and every descendant dies with
  the jail (``--die-with-parent``), ``setsid`` or not;
* new IPC, UTS, user (and where possible cgroup) namespaces; no nested user namespaces;
* an empty environment;
* ``setrlimit`` caps set inside the jail before the program starts: CPU seconds, address space,
  file size, open files and processes (``RLIMIT_NPROC``, counted per jail);
* a wall-clock timeout that kills the jail;
* as an unprivileged user: when this process is root, bwrap itself is started as uid/gid 65534,
  so the program holds no privilege inside the jail or outside it.

Whether a jail can be made is checked once per process by starting one (:func:`jail`). Where it
cannot, :func:`run_program` refuses unless the caller passes ``unsafe_exec=True``; then programs
run in a plain subprocess with the same rlimits and timeout but no isolation.
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

from aquila.errors import UserError

NOBODY = 65534
PROGRAM = "/sandbox/program.py"


@dataclass
class SandboxLimits:
    cpu_seconds: int = 10
    wall_seconds: float = 15.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 10 << 20
    open_files: int = 64
    processes: int = 32
    tmp_bytes: int = 64 << 20  # the jail's private /tmp (memory-backed)


@dataclass
class SandboxResult:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    stderr_tail: str


@dataclass(frozen=True)
class Jail:
    """How programs are confined here, or why they cannot be."""

    available: bool
    reason: str
    bwrap: str = ""
    python: str = ""
    binds: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # the optional bwrap flags this version has
    user: int | None = None  # the uid/gid bwrap is started as (root only)


class SandboxUnavailable(UserError):
    """No jail can be made on this machine and unconfined execution was not allowed."""


def _rlimits(limits: SandboxLimits, processes: bool) -> list[tuple[str, tuple[int, int]]]:
    out = [
        # SIGXCPU at the soft limit; the hard limit (SIGKILL) one second later catches a handler.
        ("RLIMIT_CPU", (limits.cpu_seconds, limits.cpu_seconds + 1)),
        ("RLIMIT_AS", (limits.memory_bytes, limits.memory_bytes)),
        ("RLIMIT_FSIZE", (limits.file_bytes, limits.file_bytes)),
        ("RLIMIT_NOFILE", (limits.open_files, limits.open_files)),
        ("RLIMIT_CORE", (0, 0)),
    ]
    if processes:
        out.append(("RLIMIT_NPROC", (limits.processes, limits.processes)))
    return out


def _runner(limits: SandboxLimits) -> str:
    # Set inside the jail, after bwrap made its user namespace: the kernel then counts
    # RLIMIT_NPROC per jail, not against every process this uid has on the machine.
    return (
        "import resource, runpy, sys\n"
        f"for name, value in {_rlimits(limits, processes=True)!r}:\n"
        "    resource.setrlimit(getattr(resource, name), value)\n"
        "del resource\n"
        "sys.argv = ['program.py']\n"
        f"runpy.run_path({PROGRAM!r}, run_name='__main__')\n"
    )


def _bwrap_argv(j: Jail, limits: SandboxLimits, program_fd: int) -> list[str]:
    argv = [j.bwrap, "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    argv += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv"]
    if "--disable-userns" in j.options:
        argv.append("--disable-userns")  # no nested namespace to regain capabilities in
    for path in j.binds:
        argv += ["--ro-bind", path, path]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    if "--size" in j.options:
        argv += ["--size", str(limits.tmp_bytes)]
    argv += ["--tmpfs", "/tmp", "--chdir", "/tmp"]
    argv += ["--ro-bind-data", str(program_fd), PROGRAM]
    # bwrap's own root and /dev are writable, unbounded tmpfs: make both read-only so the
    # size-capped /tmp is the only place a program can write (device nodes still work).
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--", j.python, "-I", "-c", _runner(limits)]
    return argv


def _interpreters() -> list[tuple[str, tuple[str, ...]]]:
    """Interpreters to try inside the jail, each with the prefixes it needs mounted."""
    out = []
    for exe, prefix in ((sys.executable, sys.base_prefix), ("/usr/bin/python3", "/usr")):
        real = os.path.realpath(exe)
        if not os.path.isfile(real):
            continue
        binds = {"/usr"}
        for p in (prefix, os.path.dirname(os.path.dirname(real))):
            p = os.path.realpath(p)
            if p != "/" and p != "/usr" and not p.startswith("/usr/"):
                binds.add(p)
        cand = (real, tuple(sorted(binds)))
        if cand not in out:
            out.append(cand)
    return out


_SELF_TEST = (
    "import os, socket\n"
    f"assert os.getuid() == {NOBODY}, os.getuid()\n"
    "assert os.getpid() < 10, os.getpid()\n"
    "assert not os.path.exists('/etc/passwd')\n"
    "assert os.environ.keys() <= {'LC_CTYPE', 'PWD'}, dict(os.environ)\n"
    "assert socket.if_nameindex() == [(1, 'lo')], socket.if_nameindex()\n"
)


def probe_jail() -> Jail:
    """Try to make a jail here (uncached); the result says how, or why not in one phrase."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Jail(False, "bwrap not found on PATH")
    try:
        helptext = subprocess.run(
            [bwrap, "--help"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Jail(False, f"{bwrap} --help failed: {exc}")
    options = tuple(o for o in ("--disable-userns", "--size") if o in helptext)
    user = NOBODY if os.geteuid() == 0 else None
    why = "no Python interpreter found"
    for python, binds in _interpreters():
        j = Jail(True, "", bwrap, python, binds, options, user)
        result = _run_jailed(j, _SELF_TEST, SandboxLimits(wall_seconds=30.0))
        if result.passed:
            who = "uid 65534" if user is not None else "this user"
            return Jail(True, f"bwrap as {who}, {python}", bwrap, python, binds, options, user)
        lines = [ln for ln in result.stderr_tail.strip().splitlines() if ln.strip()]
        why = f"bwrap failed its self-test: {lines[-1] if lines else result.status}"
    return Jail(False, why)


@lru_cache(maxsize=1)
def jail() -> Jail:
    """The machine's jail, probed once per process."""
    return probe_jail()


def require_jail(unsafe_exec: bool = False) -> Jail:
    """The jail, or :class:`SandboxUnavailable` (one line) unless ``unsafe_exec``."""
    j = jail()
    if not j.available and not unsafe_exec:
        raise SandboxUnavailable(
            "refusing to run generated code: no sandbox can be made on this machine "
            f"({j.reason}); install bubblewrap (apt-get install bubblewrap), or pass "
            "--unsafe-exec to run it unconfined"
        )
    return j


def _tail(f) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 4000))
    return f.read().decode("utf-8", "replace")[-2000:]


def _wait(proc: subprocess.Popen, wall: float) -> bool:
    """Wait for ``proc``; on timeout kill its process group (the jail with it). True if in time."""
    try:
        proc.wait(timeout=wall)
        return True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def _status(returncode: int, stderr: str) -> SandboxResult:
    if returncode == 0:
        return SandboxResult(True, "passed", stderr)
    # bwrap reports a child killed by signal N as 128 + N.
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return SandboxResult(False, "timeout", stderr)
    return SandboxResult(False, "failed", stderr)


def _run_jailed(j: Jail, source: str, limits: SandboxLimits) -> SandboxResult:
    with tempfile.TemporaryFile() as program, tempfile.TemporaryFile() as err:
        program.write(source.encode("utf-8"))
        program.flush()
        program.seek(0)
        fd = program.fileno()
        try:
            proc = subprocess.Popen(
                _bwrap_argv(j, limits, fd),
                env={},
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(fd,),
                start_new_session=True,
                user=j.user,
                group=j.user,
                extra_groups=[] if j.user is not None else None,
            )
        except OSError as exc:
            return SandboxResult(False, "failed", f"cannot start bwrap: {exc}")
        if not _wait(proc, limits.wall_seconds):
            return SandboxResult(False, "timeout", _tail(err))
        return _status(proc.returncode, _tail(err))


# --- unconfined execution (--unsafe-exec on a machine without a jail) -------------------------

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


def _limit(limits: SandboxLimits):
    def apply() -> None:
        import resource

        for name, value in _rlimits(limits, processes=False):
            resource.setrlimit(getattr(resource, name), value)

    return apply


def _run_unconfined(source: str, limits: SandboxLimits) -> SandboxResult:
    with (
        tempfile.TemporaryDirectory(prefix="aquila-sandbox-") as tmp,
        tempfile.TemporaryFile() as err,
    ):
        work = Path(tmp)
        (work / "program.py").write_text(source, encoding="utf-8")
        # Not a boundary (a child interpreter or `_socket` gets around it): it keeps honest
        # programs off the network.
        runner = f"{_NO_NETWORK}\nimport runpy\nrunpy.run_path('program.py', run_name='__main__')\n"
        (work / "run.py").write_text(runner, encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "run.py"],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            preexec_fn=_limit(limits),
        )
        if not _wait(proc, limits.wall_seconds):
            return SandboxResult(False, "timeout", _tail(err))
        return _status(proc.returncode, _tail(err))


def run_program(
    source: str, limits: SandboxLimits | None = None, *, unsafe_exec: bool = False
) -> SandboxResult:
    """Run ``source`` as a script in the jail; passed means exit status 0 in time.

    Raises :class:`SandboxUnavailable` where no jail can be made, unless ``unsafe_exec``.
    """
    limits = limits or SandboxLimits()
    j = require_jail(unsafe_exec)
    if j.available:
        return _run_jailed(j, source, limits)
    return _run_unconfined(source, limits)


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
