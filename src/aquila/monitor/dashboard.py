"""`aquila monitor RUN_DIR`: a local web dashboard over the run database.

A stdlib ThreadingHTTPServer serves one page (static/index.html + app.js), Plotly's own
plotly.min.js from the installed ``plotly`` package (no CDN, no network), and a small JSON API the
page polls. Controls only enqueue commands in the run database; the trainer applies them at a
step boundary. Bound to 127.0.0.1 by default; on any other address every request must carry the
token printed at start (``?token=`` or the ``X-Aquila-Token`` header).
"""

from __future__ import annotations

import json
import math
import secrets
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from aquila.monitor import store
from aquila.monitor.suggest import suggestions

STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
COMMAND_KINDS = (
    "set-mixture",
    "set-phase",
    "set-lr",
    "auto-mixture",
    "checkpoint-now",
    "stop",
    "pause",
    "resume",
)


def plotly_js() -> Path | None:
    """plotly.min.js as shipped inside the plotly wheel."""
    try:
        path = resources.files("plotly") / "package_data" / "plotly.min.js"
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


class CommandError(ValueError):
    pass


def validate_command(kind: str, args: Any, known_sources: set[str]) -> dict[str, Any]:
    """Check a command from the page before it reaches the queue; returns clean args."""
    if kind not in COMMAND_KINDS:
        raise CommandError(f"unknown command {kind!r}; one of {', '.join(COMMAND_KINDS)}")
    if not isinstance(args, dict):
        raise CommandError("args must be an object")
    if kind == "set-phase" or (kind == "set-mixture" and "phase" in args):
        name = args.get("name", args.get("phase"))
        if not isinstance(name, str) or not name.strip():
            raise CommandError("a phase needs a non-empty name")
        return {"name": name.strip()}
    if kind == "set-mixture":
        w = args.get("weights")
        if not isinstance(w, dict) or not w:
            raise CommandError("set-mixture needs weights {source: weight} or a phase")
        unknown = sorted(set(w) - known_sources) if known_sources else []
        if unknown:
            raise CommandError(f"unknown source(s) {unknown}; known: {sorted(known_sources)}")
        try:
            clean = {str(k): float(v) for k, v in w.items()}
        except (TypeError, ValueError):
            raise CommandError("weights must be numbers") from None
        if any(not math.isfinite(v) or v < 0 for v in clean.values()) or sum(clean.values()) <= 0:
            raise CommandError("weights must be finite, >= 0, with a positive sum")
        return {"weights": clean}
    if kind == "set-lr":
        key = "value" if "value" in args else "scale" if "scale" in args else None
        if key is None:
            raise CommandError("set-lr needs value or scale")
        try:
            x = float(args[key])
        except (TypeError, ValueError):
            raise CommandError(f"set-lr {key} must be a number") from None
        if not math.isfinite(x) or x <= 0:
            raise CommandError(f"set-lr {key} must be positive")
        return {key: x}
    if kind == "auto-mixture":
        if not isinstance(args.get("on"), bool):
            raise CommandError("auto-mixture needs on: true or false")
        return {"on": args["on"]}
    return {}


class Dashboard:
    """The data side of the dashboard: every API answer, independent of HTTP."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.db = store.open_db(self.run_dir)

    def summary(self) -> dict[str, Any]:
        rows, _ = store.metrics_after(self.db, 0)
        events = self.db.events()
        status = "not started"
        for e in events:
            if e["kind"] == "start":
                status = "running"
            elif e["kind"] == "end":
                status = f"ended ({e['data'].get('reason', '')})"
        cfg_path = self.run_dir / "config.toml"
        return {
            "run_dir": str(self.run_dir.resolve()),
            "name": self.run_dir.name,
            "status": status,
            "step": rows[-1]["step"] if rows else 0,
            "tokens": rows[-1].get("tokens", 0) if rows else 0,
            "config": cfg_path.read_text(encoding="utf-8") if cfg_path.is_file() else "",
        }

    def metrics(self, after: int = 0, since: int = -1) -> dict[str, Any]:
        rows, cursor = store.metrics_after(self.db, after, since)
        return {"rows": rows, "cursor": cursor}

    def events(self) -> list[dict[str, Any]]:
        return [e for e in self.db.events() if e["kind"] not in ("start", "end")][-500:]

    def evals(self) -> list[dict[str, Any]]:
        return self.db.evals()

    def mixture(self) -> dict[str, Any]:
        history = store.mixtures(self.db)
        return {
            "current": history[-1] if history else None,
            "history": history,
            "commands": self.db.commands()[-100:],
        }

    def trajectory(self) -> list[dict[str, Any]]:
        return store.trajectory(self.db)

    def suggestions(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in suggestions(self.db)]

    def known_sources(self) -> set[str]:
        history = store.mixtures(self.db)
        return set(history[-1]["weights"]) if history else set()

    def command(self, body: dict[str, Any]) -> dict[str, Any]:
        kind = str(body.get("kind"))
        args = validate_command(kind, body.get("args", {}), self.known_sources())
        if kind == "set-mixture" and "name" in args:
            kind = "set-phase"  # the queue names phase changes separately
        _engine_validate(self.run_dir, kind, args)
        return {"id": self.db.enqueue(kind, **args), "kind": kind, "args": args}


def _engine_validate(run_dir: Path, kind: str, args: dict[str, Any]) -> None:
    """The control queue's own checks (phases of the mixture file, sources of the data dir)."""
    try:
        from aquila.engine.control import RunContext, validate
    except ImportError:
        return
    from aquila.errors import UserError

    try:
        validate(kind, args, RunContext.from_run_dir(run_dir))
    except UserError as exc:
        raise CommandError(str(exc)) from None


def make_handler(app: Dashboard, token: str | None):
    routes = {
        "/api/summary": lambda q: app.summary(),
        "/api/metrics": lambda q: app.metrics(int(q.get("after", 0)), int(q.get("since", -1))),
        "/api/events": lambda q: app.events(),
        "/api/evals": lambda q: app.evals(),
        "/api/mixture": lambda q: app.mixture(),
        "/api/trajectory": lambda q: app.trajectory(),
        "/api/suggestions": lambda q: app.suggestions(),
    }
    files = {
        "/": (STATIC / "index.html", "text/html; charset=utf-8"),
        "/static/app.js": (STATIC / "app.js", "text/javascript; charset=utf-8"),
        "/static/style.css": (STATIC / "style.css", "text/css; charset=utf-8"),
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "aquila-monitor"

        def log_message(self, fmt, *args):  # quiet: the terminal shows the URL only
            pass

        def _authorized(self, query: dict[str, str]) -> bool:
            if token is None:
                return True
            given = query.get("token") or self.headers.get("X-Aquila-Token") or ""
            return secrets.compare_digest(given, token)

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: Any, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self):
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if not self._authorized(query):
                return self._json({"error": "token required"}, HTTPStatus.FORBIDDEN)
            if url.path in routes:
                try:
                    return self._json(routes[url.path](query))
                except ValueError as exc:
                    return self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            if url.path == "/static/plotly.min.js":
                js = plotly_js()
                if js is None:
                    return self._send(404, b"plotly is not installed", "text/plain")
                return self._send(200, js.read_bytes(), "text/javascript; charset=utf-8")
            if url.path in files:
                path, ctype = files[url.path]
                return self._send(200, path.read_bytes(), ctype)
            self._json({"error": f"no such path {url.path}"}, HTTPStatus.NOT_FOUND)

        def do_POST(self):
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if not self._authorized(query):
                return self._json({"error": "token required"}, HTTPStatus.FORBIDDEN)
            if url.path != "/api/command":
                return self._json({"error": f"no such path {url.path}"}, HTTPStatus.NOT_FOUND)
            # A custom header cannot be sent cross-site without a CORS preflight (which this
            # server never grants), so a foreign page cannot post commands.
            if self.headers.get("X-Aquila-Request") != "1":
                return self._json({"error": "missing X-Aquila-Request header"}, 403)
            try:
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(min(n, 1_000_000)) or b"{}")
                self._json(app.command(body))
            except (json.JSONDecodeError, CommandError) as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)

    return Handler


def serve(
    run_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
) -> tuple[ThreadingHTTPServer, str, str | None]:
    """Start the server (not yet serving); returns it, its URL and the token (None on loopback)."""
    if host not in LOCAL_HOSTS and token is None:
        token = secrets.token_urlsafe(16)
    server = ThreadingHTTPServer((host, port), make_handler(Dashboard(run_dir), token))
    server.daemon_threads = True
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    url = f"http://{shown}:{server.server_address[1]}/" + (f"?token={token}" if token else "")
    return server, url, token
