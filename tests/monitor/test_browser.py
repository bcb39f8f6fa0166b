"""The dashboard in a real headless Chromium, against a training run that is still going."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from aquila.engine.run import prepare_run
from aquila.monitor import MonitorOptions, monitor_callbacks, store
from aquila.monitor.dashboard import serve

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
            page.goto(url + "?interval=300")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            # The loss chart holds the run's logged steps (and keeps growing while it trains).
            page.wait_for_function(
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
                page.wait_for_function(
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
