import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from aquila.cli import main
from aquila.monitor import store
from aquila.monitor.dashboard import MAX_BODY, Dashboard, plotly_js, serve


class Server:
    def __init__(self, run_dir, host="127.0.0.1", **kw):
        self.run_dir = run_dir
        self.srv, self.url, self.token = serve(run_dir, host, 0, **kw)
        self.port = self.srv.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.cookie = f"aquila_token_{self.port}={self.token}"
        self.origin = f"http://{self.host}"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()

    def commands(self):
        return store.open_db(self.run_dir).commands()


@pytest.fixture()
def run_copy(monitored_run, tmp_path):
    """A private copy of the finished run: commands posted here reach no other test."""
    dst = tmp_path / "run"
    shutil.copytree(monitored_run, dst)
    return dst


@pytest.fixture()
def server(run_copy):
    s = Server(run_copy)
    yield s
    s.close()


def raw(port: int, data: bytes, timeout: float = 10.0, shut_write: bool = False):
    """Send bytes as they are; returns (status, headers, body) of the answer (status 0: none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    reply = b"".join(chunks)
    if not reply:
        return 0, {}, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return status, headers, body


def request(s: Server, method: str, path: str, headers=None, body: bytes = b"", host=None):
    hdrs = {"Host": host or s.host, **(headers or {})}
    if body or method == "POST":
        hdrs.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None
    )
    return raw(s.port, head.encode() + b"\r\n" + body)


def post_command(s: Server, cmd, headers=None, host=None):
    body = cmd if isinstance(cmd, bytes) else json.dumps(cmd).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return request(s, "POST", "/api/command", hdrs, body, host)


def _get(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
        return r.status, r.read()


# --- the API and the page ---------------------------------------------------------------------


def test_api_serves_the_run(server):
    base, tok = server.base, {"X-Aquila-Token": server.token}
    status, page = _get(base + "/", tok)
    assert status == 200 and b"aquila monitor" in page
    assert _get(base + "/static/plotly.min.js", tok)[1] == plotly_js().read_bytes()
    metrics = json.loads(_get(base + "/api/metrics", tok)[1])
    assert [r["step"] for r in metrics["rows"]] == [2, 4, 6, 8, 10, 12]
    later = json.loads(_get(base + "/api/metrics?since=8", tok)[1])
    assert [r["step"] for r in later["rows"]] == [10, 12]
    after = json.loads(_get(base + f"/api/metrics?after={metrics['cursor']}", tok)[1])
    assert after["rows"] == []
    mix = json.loads(_get(base + "/api/mixture", tok)[1])
    assert set(mix["current"]["weights"]) == {"kjv", "news"}
    traj = json.loads(_get(base + "/api/trajectory", tok)[1])
    assert {r["step"] for r in traj} == {6, 12}
    evals = json.loads(_get(base + "/api/evals", tok)[1])
    assert {e["step"] for e in evals} <= {6, 12} and evals
    assert isinstance(json.loads(_get(base + "/api/suggestions", tok)[1]), list)
    summary = json.loads(_get(base + f"/api/summary?token={server.token}")[1])
    assert summary["status"] == "ended (completed)"


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_first_page_load_trades_the_token_for_a_cookie(run_copy, bind):
    s = Server(run_copy, bind)
    try:
        assert s.url.endswith(f"/?token={s.token}") and len(s.token) >= 40
        status, headers, _ = request(s, "GET", f"/?interval=300&token={s.token}")
        assert status == 303 and headers["location"] == ["/?interval=300"]
        (cookie,) = headers["set-cookie"]
        assert cookie.startswith(s.cookie + ";")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        # Everything the page loads then comes with the cookie alone (this was a blank page
        # off loopback: the static files were refused).
        for path in ("/", "/static/app.js", "/static/style.css", "/static/plotly.min.js"):
            status, headers, body = request(s, "GET", path, {"Cookie": cookie.split(";")[0]})
            assert status == 200 and body, path
        status, _, body = request(s, "GET", "/api/summary", {"Cookie": s.cookie})
        assert status == 200 and json.loads(body)["name"] == "run"
    finally:
        s.close()


def test_pages_carry_security_headers(server):
    status, headers, _ = request(server, "GET", "/", {"Cookie": server.cookie})
    assert status == 200
    csp = headers["content-security-policy"][0]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == ["DENY"] and headers["referrer-policy"] == ["no-referrer"]


# --- who is asking --------------------------------------------------------------------------------


def test_requests_without_the_token_are_refused(server):
    other_port_cookie = f"aquila_token_{server.port + 1}={server.token}"
    for headers in (
        {},
        {"X-Aquila-Token": "wrong"},
        {"Cookie": f"aquila_token_{server.port}=wrong"},
        {"Cookie": other_port_cookie},
        {"X-Aquila-Token": "é" * 43},
    ):
        for path in ("/", "/static/app.js", "/static/plotly.min.js", "/api/summary"):
            status, _, body = request(server, "GET", path, headers)
            assert status == 401, (path, headers)
            assert b"plotly" not in body[:1000] or path == "/"
    status, _, body = request(server, "GET", "/")
    assert status == 401 and b"?token=" in body  # the page says what to do
    assert request(server, "GET", "/api/summary?token=%C3%A9%FF")[0] == 401


def test_foreign_host_is_refused(server):
    tok = {"X-Aquila-Token": server.token}
    for host in (
        f"evil.example:{server.port}",
        f"127.0.0.1.evil.example:{server.port}",
        f"localhost:{server.port + 1}",
        "localhost",
        f"10.0.0.1:{server.port}",  # an IP literal is fine only when bound to every interface
    ):
        assert request(server, "GET", "/api/summary", tok, host=host)[0] == 403, host
    for host in (f"localhost:{server.port}", f"[::1]:{server.port}", f"LOCALHOST:{server.port}"):
        assert request(server, "GET", "/api/summary", tok, host=host)[0] == 200, host
    # Missing, doubled or malformed Host: 400.
    assert raw(server.port, b"GET /api/summary HTTP/1.0\r\n\r\n")[0] == 400
    two = f"GET / HTTP/1.1\r\nHost: {server.host}\r\nHost: evil.example\r\n\r\n"
    assert raw(server.port, two.encode())[0] == 400
    for bad in ("a b", "x:y", f"[::1:{server.port}", "exa_mple.com", ":80", "h:99999"):
        assert request(server, "GET", "/", tok, host=bad)[0] == 400, bad


def test_allowed_names_and_wildcard_binding(run_copy):
    s = Server(run_copy, "0.0.0.0", allow_hosts=["Node7.Cluster"])
    try:
        tok = {"X-Aquila-Token": s.token}
        assert request(s, "GET", "/api/summary", tok, host=f"10.0.0.1:{s.port}")[0] == 200
        assert request(s, "GET", "/api/summary", tok, host=f"node7.cluster:{s.port}")[0] == 200
        assert request(s, "GET", "/api/summary", tok, host="node7.cluster")[0] == 200  # a proxy
        assert request(s, "GET", "/api/summary", tok, host=f"node8.cluster:{s.port}")[0] == 403
        assert request(s, "GET", "/api/summary", tok, host=f"10.0.0.1:{s.port + 1}")[0] == 403
    finally:
        s.close()


def test_commands_need_token_same_origin_and_json(server):
    before = len(server.commands())
    cmd = {"kind": "checkpoint-now"}
    json_ct = {"Content-Type": "application/json"}
    refused = [
        ({}, None, 401),
        ({"X-Aquila-Token": "wrong", "Origin": server.origin}, None, 401),
        ({"Cookie": server.cookie}, None, 403),  # a cookie without Origin: a cross-site form?
        ({"Cookie": server.cookie, "Origin": "http://evil.example"}, None, 403),
        ({"Cookie": server.cookie, "Origin": "null"}, None, 403),
        ({"Cookie": server.cookie, "Origin": f"http://localhost:{server.port}"}, None, 403),
        ({"X-Aquila-Token": server.token, "Origin": "http://evil.example"}, None, 403),
        ({"X-Aquila-Token": server.token}, f"evil.example:{server.port}", 403),
        (
            {"Cookie": server.cookie, "Origin": server.origin, "Content-Type": "text/plain"},
            None,
            415,
        ),
    ]
    for headers, host, want in refused:
        status, _, body = post_command(server, cmd, headers, host)
        assert status == want, (headers, host, status, body)
        assert "error" in json.loads(body)
    assert len(server.commands()) == before, "a refused request reached the queue"
    # The page's own request (cookie + same Origin) and a tool's (header, no Origin) go through.
    ok = [{"Cookie": server.cookie, "Origin": server.origin}, {"X-Aquila-Token": server.token}]
    for headers in ok:
        status, _, body = post_command(server, cmd, {**json_ct, **headers})
        assert status == 200 and json.loads(body)["kind"] == "checkpoint-now"
    assert [c["kind"] for c in server.commands()[before:]] == ["checkpoint-now"] * 2


def test_command_post_is_validated_and_enqueued(server):
    tok = {"X-Aquila-Token": server.token}
    code, _, body = post_command(
        server, {"kind": "set-mixture", "args": {"weights": {"kjv": 3, "news": 1}}}, tok
    )
    assert code == 200 and json.loads(body)["id"] > 0
    bad = [
        {"kind": "set-mixture", "args": {"weights": {"wiki": 1}}},
        {"kind": "set-lr", "args": {"value": -1}},
        {"kind": "rm -rf", "args": {}},
        {"kind": "set-lr", "args": "scale"},
    ]
    for cmd in bad:
        assert post_command(server, cmd, tok)[0] == 400, cmd
    assert post_command(server, {"kind": "set-lr", "args": {"scale": 0.5}}, tok)[0] == 200
    cmds = store.open_db(server.run_dir).pending()
    assert [(c["kind"], c["args"]) for c in cmds[-2:]] == [
        ("set-mixture", {"weights": {"kjv": 3.0, "news": 1.0}}),
        ("set-lr", {"scale": 0.5}),
    ]


# --- malformed and hostile requests -------------------------------------------------------------


def test_malformed_requests_get_400_and_enqueue_nothing(server):
    before = len(server.commands())
    tok = {"X-Aquila-Token": server.token, "Content-Type": "application/json"}
    h = f"Host: {server.host}\r\nX-Aquila-Token: {server.token}\r\n"
    for line in (b"GARBAGE\r\n\r\n", b"\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/1.1 x\r\n\r\n"):
        status, _, _ = raw(server.port, line)
        assert status == 400, line
    assert raw(server.port, b"GET / HTTP/x.y\r\n\r\n")[0] == 400
    assert raw(server.port, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")[0] == 414
    assert (
        raw(server.port, f"GET / HTTP/1.1\r\n{h}".encode() + b"X: y\r\n" * 200 + b"\r\n")[0] == 431
    )
    for body in (b"{not json", b"[1, 2]", b'"stop"', b"\xff\xfe{}", b"", b"null", b"1e999999"):
        status, _, reply = post_command(server, body, tok)
        assert status == 400 and "error" in json.loads(reply), body
    post = f"POST /api/command HTTP/1.1\r\n{h}Content-Type: application/json\r\n"
    cases = [
        (b"Content-Length: abc\r\n\r\n{}", 400),
        (b"Content-Length: -5\r\n\r\n{}", 400),
        (b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
        (b"Content-Length: 1e3\r\n\r\n{}", 400),
        (f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode(), 413),
        (b"Content-Length: 99999999999999999999\r\n\r\n", 413),
        (b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400),
        (b"\r\n{}", 411),
    ]
    for extra, want in cases:
        assert raw(server.port, post.encode() + extra)[0] == want, extra
    # A body shorter than its Content-Length, then the client stops sending: 400, not a hang.
    status, _, _ = raw(
        server.port, post.encode() + b"Content-Length: 50\r\n\r\n{}", shut_write=True
    )
    assert status == 400
    for query in ("after=abc", "after=-5", f"after={10**30}", "since=-2", "since=1.5"):
        status, _, body = request(server, "GET", f"/api/metrics?{query}", tok)
        assert status == 400 and "error" in json.loads(body), query
    assert request(server, "DELETE", "/api/command", tok)[0] == 501
    assert len(server.commands()) == before


def test_static_paths_cannot_traverse(server):
    tok = {"X-Aquila-Token": server.token}
    secret = Path(__file__).read_bytes()[:200]
    for path in (
        "/static/../dashboard.py",
        "/static/%2e%2e/dashboard.py",
        "/static/..%2f..%2fdashboard.py",
        "/static//etc/passwd",
        "/static/app.js/../../dashboard.py",
        "/../../../../etc/passwd",
        "/static/app.js%00.png",
        "/index.html",
    ):
        status, _, body = request(server, "GET", path, tok)
        assert status == 404, path
        assert b"import" not in body and b"root:" not in body and secret not in body


def test_slow_clients_time_out_without_blocking_others(run_copy):
    s = Server(run_copy, request_timeout=1.0)
    try:
        slow = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        t0 = time.monotonic()
        slow.sendall(b"GET /api/summary HTTP/1.1\r\n")
        # A trickle that never trips a per-read timeout still meets the whole-request deadline.
        answered = b""
        for ch in f"Host: {s.host}\r\nX-Pad: ".encode() + b"a" * 100:
            # Meanwhile other clients are served at once.
            try:
                slow.sendall(bytes([ch]))
            except OSError:
                break
            slow.settimeout(0.3)
            try:
                answered = slow.recv(4096)
            except TimeoutError:
                continue
            break
        elapsed = time.monotonic() - t0
        assert answered.startswith(b"HTTP/1.0 408"), answered
        assert 0.9 < elapsed < 5
        tok = {"X-Aquila-Token": s.token}
        assert request(s, "GET", "/api/summary", tok)[0] == 200
        # A body that never arrives: 408 too.
        post = (
            f"POST /api/command HTTP/1.1\r\nHost: {s.host}\r\nX-Aquila-Token: {s.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        assert raw(s.port, post.encode())[0] == 408
        slow.close()
    finally:
        s.close()


def test_connections_are_bounded(run_copy):
    s = Server(run_copy, request_timeout=5.0, max_connections=2)
    try:
        idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(2)]
        time.sleep(0.2)
        t0 = time.monotonic()
        assert request(s, "GET", "/api/summary", {"X-Aquila-Token": s.token})[0] == 503
        assert time.monotonic() - t0 < 2
        for c in idle:
            c.close()
        end = time.monotonic() + 5
        while request(s, "GET", "/api/summary", {"X-Aquila-Token": s.token})[0] != 200:
            assert time.monotonic() < end, "slots were not released"
            time.sleep(0.1)
    finally:
        s.close()


# --- the command line -----------------------------------------------------------------------------


def test_report_json_and_png(monitored_run, tmp_path, capsys):
    png = tmp_path / "run.png"
    assert main(["monitor", str(monitored_run), "--json", "--png", str(png)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 12 and set(out["source_loss"]) == {"kjv", "news"}
    assert out["heldout_bpb"]["languages"].keys() == {"en", "zh"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert main(["monitor", str(monitored_run), "--report"]) == 0
    text = capsys.readouterr().out
    assert "step 12" in text and "suggestions" in text and "kjv" in text


def test_cli_errors(monitored_run, tmp_path, capsys):
    assert main(["monitor", str(tmp_path / "nope")]) == 2
    assert "no run.sqlite" in capsys.readouterr().err
    for args, what in (
        (["--port", "-1"], "--port"),
        (["--port", "70000"], "--port"),
        (["--allow-host", "http://evil.example"], "--allow-host"),
        (["--allow-host", "node:80"], "--allow-host"),
        (["--host", "no.such.host.invalid"], "cannot listen"),
    ):
        assert main(["monitor", str(monitored_run), *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert what in err and len(err.splitlines()) == 1, err


def test_cli_prints_the_token_url(run_copy):
    proc = subprocess.Popen(
        [sys.executable, "-m", "aquila", "monitor", str(run_copy), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
    )
    try:
        line = proc.stdout.readline()
        url = line.split()[-1]
        assert line.startswith("aquila monitor: serving") and "?token=" in url
        # A client with a cookie jar (as a browser) follows the redirect with the cookie.
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with browser.open(url) as r:
            assert r.status == 200 and r.url.endswith("/") and b"aquila monitor" in r.read()
        with browser.open(url.split("?")[0] + "static/app.js") as r:
            assert r.status == 200
        token = url.split("?token=")[1]
        api = url.split("?")[0] + "api/summary"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(api)
        assert err.value.code == 401
        req = urllib.request.Request(api, headers={"X-Aquila-Token": token})
        with urllib.request.urlopen(req) as r:
            assert json.loads(r.read())["name"] == "run"
    finally:
        proc.terminate()
        proc.wait(10)


def test_dashboard_data_without_http(monitored_run):
    app = Dashboard(monitored_run)
    assert app.known_sources() == {"kjv", "news"}
    assert app.metrics(since=10)["rows"][0]["step"] == 12


def test_aquila_eval_results_reach_the_dashboard(run_copy, tmp_path, capsys):
    """`aquila eval RUN` stores its results in the run database, beside the background
    evaluator's, and the dashboard serves both over checkpoint steps."""
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"query": "In the beginning", "choices": [" God", " x"], "gold": 0}))
    txt = tmp_path / "unseen.txt"
    txt.write_text("The ferry left the harbour on time this morning.\n")
    args = ["eval", str(run_copy), "--tasks", f"bpb:{txt},mine=mc:{f}", "--quiet", "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    s = Server(run_copy)
    try:
        evals = json.loads(_get(s.base + "/api/evals", {"X-Aquila-Token": s.token})[1])
    finally:
        s.close()
    assert {e["task"] for e in evals} >= {"heldout-bpb", "bpb:unseen", "mine"}
    mine = [e for e in evals if e["task"] == "mine"]
    assert [e["step"] for e in mine] == [12]  # the run's latest checkpoint
    assert mine[0]["data"]["metrics"] == printed["mine"]
    assert mine[0]["data"]["spec"] == f"mine=mc:{f}" and mine[0]["data"]["origin"] == "aquila eval"
    page = (Path(__file__).parents[2] / "src/aquila/monitor/static/index.html").read_text()
    assert 'id="chart-tasks"' in page
