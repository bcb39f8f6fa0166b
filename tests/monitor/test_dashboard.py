import json
import threading
import urllib.error
import urllib.request

import pytest

from aquila.cli import main
from aquila.monitor import store
from aquila.monitor.dashboard import Dashboard, plotly_js, serve


@pytest.fixture()
def server(monitored_run):
    srv, url, token = serve(monitored_run, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield url.rstrip("/"), monitored_run
    srv.shutdown()
    srv.server_close()


def _get(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
        return r.status, r.read()


def _post(url, body, headers=None):
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_serves_the_run(server):
    base, run_dir = server
    status, page = _get(base + "/")
    assert status == 200 and b"aquila monitor" in page
    assert _get(base + "/static/plotly.min.js")[1] == plotly_js().read_bytes()
    metrics = json.loads(_get(base + "/api/metrics")[1])
    assert [r["step"] for r in metrics["rows"]] == [2, 4, 6, 8, 10, 12]
    later = json.loads(_get(base + "/api/metrics?since=8")[1])
    assert [r["step"] for r in later["rows"]] == [10, 12]
    after = json.loads(_get(base + f"/api/metrics?after={metrics['cursor']}")[1])
    assert after["rows"] == []
    mix = json.loads(_get(base + "/api/mixture")[1])
    assert set(mix["current"]["weights"]) == {"kjv", "news"}
    traj = json.loads(_get(base + "/api/trajectory")[1])
    assert {r["step"] for r in traj} == {6, 12}
    evals = json.loads(_get(base + "/api/evals")[1])
    assert {e["step"] for e in evals} <= {6, 12} and evals
    assert isinstance(json.loads(_get(base + "/api/suggestions")[1]), list)
    assert json.loads(_get(base + "/api/summary")[1])["status"] == "ended (completed)"


def test_command_post_is_validated_and_enqueued(server):
    base, run_dir = server
    hdr = {"X-Aquila-Request": "1"}
    assert _post(base + "/api/command", {"kind": "stop"})[0] == 403  # no custom header
    code, body = _post(
        base + "/api/command",
        {"kind": "set-mixture", "args": {"weights": {"kjv": 3, "news": 1}}},
        hdr,
    )
    assert code == 200 and body["id"] > 0
    assert (
        _post(
            base + "/api/command", {"kind": "set-mixture", "args": {"weights": {"wiki": 1}}}, hdr
        )[0]
        == 400
    )
    assert _post(base + "/api/command", {"kind": "set-lr", "args": {"value": -1}}, hdr)[0] == 400
    assert _post(base + "/api/command", {"kind": "rm -rf", "args": {}}, hdr)[0] == 400
    assert _post(base + "/api/command", {"kind": "set-lr", "args": {"scale": 0.5}}, hdr)[0] == 200
    cmds = store.open_db(run_dir).pending()
    assert [(c["kind"], c["args"]) for c in cmds[-2:]] == [
        ("set-mixture", {"weights": {"kjv": 3.0, "news": 1.0}}),
        ("set-lr", {"scale": 0.5}),
    ]


def test_off_loopback_requires_token(monitored_run):
    srv, url, token = serve(monitored_run, "0.0.0.0", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        port = srv.server_address[1]
        assert token and f"token={token}" in url
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"http://127.0.0.1:{port}/api/summary")
        assert err.value.code == 403
        assert _get(f"http://127.0.0.1:{port}/api/summary?token={token}")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/", {"X-Aquila-Token": token})[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


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


def test_cli_errors(tmp_path, capsys):
    assert main(["monitor", str(tmp_path / "nope")]) == 2
    assert "no run.sqlite" in capsys.readouterr().err


def test_dashboard_data_without_http(monitored_run):
    app = Dashboard(monitored_run)
    assert app.known_sources() == {"kjv", "news"}
    assert app.metrics(since=10)["rows"][0]["step"] == 12
