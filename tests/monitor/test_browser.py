"""The dashboard in a real headless Chromium: a live run on loopback, a finished run bound to
every interface (token mode), and foreign pages that try to drive it."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aquila.monitor import MonitorOptions, monitor_callbacks, store
from aquila.monitor.dashboard import serve
from aquila.train.run import prepare_run

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.browser


def _page_until(page, js: str, timeout: int) -> None:
    """Poll ``js`` in the page from outside it (the page's CSP forbids the eval that
    ``wait_for_function`` uses)."""
    _wait(lambda: page.evaluate(js), timeout / 1000, what=js)


def _wait(cond, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_shows_live_run_and_enqueues_mixture_change(make_config, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not installed")
    try:
        from aquila.engine.control import ControlCallback
    except ImportError:
        ControlCallback = None

    cfg = make_config("train.max_steps=100000", "train.checkpoint_every=0", "train.log_every=2")
    opts = MonitorOptions.from_any({"eval": {"enabled": False}})
    cbs = monitor_callbacks(opts)
    if ControlCallback is not None:
        cbs.append(ControlCallback(Path(cfg.run_dir), poll_seconds=0.05))
    run = prepare_run(cfg, callbacks=cbs, quiet=True, monitor=False)
    trainer = run.trainer
    result = {}

    def fit():
        try:
            result["reason"] = trainer.fit()
        except BaseException as exc:
            result["error"] = repr(exc)
            raise

    train = threading.Thread(target=fit, daemon=True)
    train.start()
    db = store.open_db(run.run_dir)

    def first_metrics():
        assert "error" in result or train.is_alive(), result
        assert "error" not in result, result["error"]
        return len(store.latest_metrics(db)) >= 3

    _wait(first_metrics, what="first metrics")
    srv, url, _ = serve(run.run_dir, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page()
            page.goto(url + "&interval=300")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            # The loss chart holds the run's logged steps (and keeps growing while it trains).
            _page_until(
                page,
                "document.getElementById('chart-loss').data "
                "&& document.getElementById('chart-loss').data[0].x.length >= 3",
                timeout=30_000,
            )
            shown = page.evaluate("document.getElementById('chart-loss').data[0].x")
            logged = [r["step"] for r in store.latest_metrics(db)]
            assert set(shown) <= set(logged) and len(shown) >= 3
            names = page.evaluate("document.getElementById('chart-loss').data.map(t => t.name)")
            assert {"loss", "kjv", "news"} <= set(names)
            assert page.locator("#chart-loss .scatterlayer .trace").count() >= 3

            page.fill("#mixture-table input[data-source='kjv']", "0.9")
            page.fill("#mixture-table input[data-source='news']", "0.1")
            page.click("#mixture-submit")
            assert page.locator("#confirm").is_visible()
            assert '"kjv": 0.9' in page.inner_text("#confirm-text")
            page.click("#confirm-ok")
            page.wait_for_selector("#toast:has-text('enqueued')", timeout=10_000)
            cmds = [c for c in db.commands() if c["kind"] == "set-mixture"]
            assert cmds and cmds[-1]["args"] == {"weights": {"kjv": 0.9, "news": 0.1}}

            if ControlCallback is not None:
                _wait(lambda: db.commands()[-1]["status"] == "applied", what="command applied")
                w = trainer.data.current_weights()
                assert w["kjv"] == pytest.approx(0.9) and w["news"] == pytest.approx(0.1)
                _page_until(
                    page,
                    "document.getElementById('mixture-label').textContent.includes('mixture 2')",
                    timeout=15_000,
                )
                # Stop from the page too: the run ends at a step boundary.
                page.click("button[data-kind='stop']")
                page.click("#confirm-ok")
                train.join(60)
                assert result.get("reason") == "stopped by command"
            browser.close()
    finally:
        trainer.request_stop("test over", checkpoint=False)
        train.join(60)
        srv.shutdown()
        srv.server_close()


@pytest.fixture()
def chromium():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not installed")
    with sync_api.sync_playwright() as pw:
        # evil.test resolves to this machine, as a rebinding attacker's name would.
        args = [*ARGS, "--host-resolver-rules=MAP evil.test 127.0.0.1"]
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        yield browser
        browser.close()


@pytest.fixture()
def finished_run(monitored_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(monitored_run, dst)
    return dst


def _serving(run_dir, host):
    srv, url, token = serve(run_dir, host, 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, url, token


def _this_machine_address() -> str:
    """A non-loopback address of this machine where it has one (else 127.0.0.1)."""
    # A UDP "connection" only picks the outgoing interface; nothing is sent.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def test_token_mode_page_loads_renders_and_queues(chromium, finished_run):
    srv, url, token = _serving(finished_run, "0.0.0.0")
    port = srv.server_address[1]
    db = store.open_db(finished_run)
    try:
        page = chromium.new_page()
        problems = []
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        addr = _this_machine_address()
        page.goto(f"http://{addr}:{port}/?token={token}&interval=300")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        # The token went from the address bar into a cookie that scripts cannot read.
        assert page.url == f"http://{addr}:{port}/?interval=300"
        assert page.evaluate("document.cookie") == ""
        (cookie,) = page.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        _page_until(
            page,
            "document.getElementById('chart-loss').data "
            "&& document.getElementById('chart-loss').data[0].x.length == 6",
            timeout=30_000,
        )
        assert page.locator("#chart-loss .scatterlayer .trace").count() >= 3
        assert page.locator("#chart-trajectory .scatterlayer .trace").count() >= 1
        assert page.inner_text("#run-status") == "ended (completed)"
        before = len(db.commands())
        page.click("button[data-kind='checkpoint-now']")
        page.click("#confirm-ok")
        page.wait_for_selector("#toast:has-text('enqueued')", timeout=10_000)
        assert [c["kind"] for c in db.commands()[before:]] == ["checkpoint-now"]
        assert problems == [], problems  # nothing blocked (scripts, styles, the CSP), no errors
        # A fresh browser context without the token gets the page that says what to do.
        other = chromium.new_page()
        assert other.goto(f"http://127.0.0.1:{port}/").status == 401
        assert "?token=" in other.inner_text("body")
    finally:
        srv.shutdown()
        srv.server_close()


class _EvilPage(BaseHTTPRequestHandler):
    """A foreign web page that tries to queue commands on the dashboard."""

    target = ""

    def log_message(self, *args):
        pass

    def do_GET(self):
        t = self.target
        html = f"""<!doctype html><body>
<form id="f" method="POST" action="{t}/api/command" enctype="text/plain" target="sink">
<input name='{{"kind": "stop", "x": "' value='"}}'></form>
<iframe name="sink"></iframe>
<script>
document.getElementById("f").submit();
fetch("{t}/api/command", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{kind: "stop"}})}})
  .finally(() => fetch("{t}/api/command", {{method: "POST", credentials: "include",
     headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{kind: "pause"}})}}))
  .catch(() => null).finally(() => {{ document.body.dataset.done = "1"; }});
</script></body>"""
        body = html.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_foreign_pages_cannot_drive_the_dashboard(chromium, finished_run):
    srv, url, token = _serving(finished_run, "127.0.0.1")
    port = srv.server_address[1]
    db = store.open_db(finished_run)
    handler = type("Evil", (_EvilPage,), {"target": f"http://127.0.0.1:{port}"})
    evil = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        context = chromium.new_context()
        page = context.new_page()
        page.goto(url)  # the user has the dashboard open: the cookie is in the browser
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        before = len(db.commands())
        # Another site on this machine (another port is the same site: the cookie goes along).
        attacker = context.new_page()
        attacker.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        attacker.wait_for_selector("body[data-done='1']", timeout=15_000)
        time.sleep(0.5)
        assert len(db.commands()) == before, db.commands()[before:]
        # DNS rebinding: the attacker's name now points here; the Host is refused.
        r = attacker.goto(f"http://evil.test:{port}/api/summary")
        assert r.status == 403
        r = attacker.goto(f"http://evil.test:{port}/?token={token}")
        assert r.status == 403
        assert len(db.commands()) == before
    finally:
        evil.shutdown()
        evil.server_close()
        srv.shutdown()
        srv.server_close()
