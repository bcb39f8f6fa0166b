"""`aquila monitor RUN_DIR`: a local web dashboard over the run database.

A stdlib ThreadingHTTPServer serves one page (static/index.html + app.js), Plotly's own
plotly.min.js from the installed ``plotly`` package (no CDN, no network), and a small JSON API the
page polls. Controls only enqueue commands in the run database; the trainer applies them at a
step boundary.

Every request is checked (``aquila.monitor.access``): its Host, then the token printed in the
URL at start (a cookie once the page has loaded), and for a command its Origin. The server
answers malformed requests with 400 and never waits on a client for long: each connection has a
deadline for its whole request (408), bodies are capped (413), and the number of connections
being served at once is bounded (503).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from aquila.checks import check_weights
from aquila.engine.history import Command
from aquila.errors import UserError
from aquila.monitor import store
from aquila.monitor.access import TOKEN_HEADER, Access, new_token, split_host
from aquila.monitor.suggest import suggestions

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 << 10  # a command is a few hundred bytes
MAX_QUERY_FIELDS = 16
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Plotly adds inline styles; scripts come only from this server.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    ),
}
UNAUTHORIZED_PAGE = b"""<!doctype html><meta charset="utf-8"><title>aquila monitor</title>
<p>This dashboard needs its access token. Open the URL that <code>aquila monitor</code> printed
(it ends in <code>?token=...</code>); the page then remembers it until the browser closes.</p>
"""
# The control queue's commands, less add-source: a new source is a directory on the training
# host, named from a shell there (`aquila control RUN add-source NAME`), not from a browser.
COMMAND_KINDS = tuple(c.value for c in Command if c is not Command.ADD_SOURCE)


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
        try:
            clean = check_weights({str(k): v for k, v in w.items()}, known_sources or None)
        except UserError as exc:
            raise CommandError(str(exc)) from None
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

    def trajectory_summary(self) -> dict[str, Any]:
        from aquila.monitor.trajectory_report import settle_summary

        return settle_summary(self.trajectory())

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


class Refused(Exception):
    """A request answered with an error status (and one-line reason)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _int_arg(query: dict[str, str], name: str, default: int, lo: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Refused(400, f"{name} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value < 1 << 62:
        raise Refused(400, f"{name} out of range: {value}")
    return value


def make_handler(app: Dashboard, access: Access, request_timeout: float = 10.0):
    routes = {
        "/api/summary": lambda q: app.summary(),
        "/api/metrics": lambda q: app.metrics(
            _int_arg(q, "after", 0, 0), _int_arg(q, "since", -1, -1)
        ),
        "/api/events": lambda q: app.events(),
        "/api/evals": lambda q: app.evals(),
        "/api/mixture": lambda q: app.mixture(),
        "/api/trajectory": lambda q: app.trajectory(),
        "/api/trajectory-summary": lambda q: app.trajectory_summary(),
        "/api/suggestions": lambda q: app.suggestions(),
    }
    # A fixed map: no request path is ever joined onto a directory.
    files = {
        "/": (STATIC / "index.html", "text/html; charset=utf-8"),
        "/static/app.js": (STATIC / "app.js", "text/javascript; charset=utf-8"),
        "/static/style.css": (STATIC / "style.css", "text/css; charset=utf-8"),
        "/static/plotly.min.js": (None, "text/javascript; charset=utf-8"),
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "aquila-monitor"
        # Answer even a garbled request line with a status line (HTTP/0.9 would send none).
        default_request_version = "HTTP/1.0"
        timeout = request_timeout  # per read; the whole request also has a deadline (setup)

        # --- connection life: one request per connection, under a deadline ------------------

        def setup(self) -> None:
            super().setup()
            self._phase_lock = threading.Lock()
            self._phase = "reading"
            # A client that trickles bytes never trips a per-read timeout; this caps the whole
            # request, so a slow client holds a connection slot for request_timeout at most.
            self._deadline = threading.Timer(request_timeout, self._expire)
            self._deadline.daemon = True
            self._deadline.start()

        def finish(self) -> None:
            self._deadline.cancel()
            with contextlib.suppress(OSError):
                super().finish()

        def _expire(self) -> None:
            with self._phase_lock:
                if self._phase != "reading":
                    return
                self._phase = "expired"
            body = b'{"error": "request not complete in time"}'
            head = (
                "HTTP/1.0 408 Request Timeout\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                self.connection.sendall(head.encode() + body)
                self.connection.shutdown(socket.SHUT_RDWR)

        def _read_done(self) -> None:
            """The request is in: the deadline no longer applies (the answer may take longer)."""
            with self._phase_lock:
                if self._phase == "expired":
                    raise ConnectionAbortedError("request deadline passed")
                self._phase = "handling"

        def _start_response(self) -> None:
            with self._phase_lock:
                if self._phase == "expired":
                    raise ConnectionAbortedError("request deadline passed")
                self._phase = "responding"

        def handle_one_request(self) -> None:
            self.close_connection = True
            try:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline:
                    return  # the client closed without asking anything
                if len(self.raw_requestline) > 65536:
                    self.requestline, self.request_version, self.command = "", "", ""
                    self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                    return
                if not self.raw_requestline.strip():
                    self.requestline, self.command = "", ""
                    self.request_version = self.default_request_version
                    self.send_error(HTTPStatus.BAD_REQUEST, "empty request line")
                    return
                if not self.parse_request():
                    return  # parse_request answered (400, 414, 431, 505)
                method = getattr(self, "do_" + self.command, None)
                if method is None:
                    self.send_error(
                        HTTPStatus.NOT_IMPLEMENTED, f"unsupported method {self.command!r}"
                    )
                    return
                method()
                self.wfile.flush()
            except TimeoutError:
                with contextlib.suppress(OSError):
                    self._json({"error": "request not complete in time"}, 408)
            except OSError:
                pass  # the client went away, or the deadline answered already

        def send_response(self, code: int, message: str | None = None) -> None:
            self._start_response()
            super().send_response(code, message)

        def log_message(self, fmt, *args):  # quiet: the terminal shows the URL only
            pass

        # --- answers ------------------------------------------------------------------------

        def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for k, v in {**SECURITY_HEADERS, **(extra or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: Any, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _dispatch(self, handler) -> None:
            try:
                handler()
            except Refused as exc:
                if exc.status == 401 and self.command == "GET" and urlsplit(self.path).path == "/":
                    return self._send(401, UNAUTHORIZED_PAGE, "text/html; charset=utf-8")
                self._json({"error": str(exc)}, exc.status)
            except (ConnectionError, TimeoutError):
                raise
            except Exception as exc:  # a bug or a broken database: answer, do not drop
                print(f"aquila monitor: {self.command} {self.path[:200]}: {exc!r}", file=sys.stderr)
                self._json({"error": f"internal error: {type(exc).__name__}"}, 500)

        # --- checks -------------------------------------------------------------------------

        def _host(self) -> str:
            hosts = self.headers.get_all("Host") or []
            if len(hosts) != 1:
                raise Refused(400, "exactly one Host header is required")
            parsed = split_host(hosts[0])
            if parsed is None:
                raise Refused(400, f"malformed Host header {hosts[0][:100]!r}")
            if not access.host_ok(*parsed):
                raise Refused(
                    403,
                    f"this dashboard does not answer to Host {hosts[0][:100]!r} "
                    "(start it with --allow-host NAME to add a name)",
                )
            return hosts[0]

        def _url(self) -> tuple[str, dict[str, str], list[tuple[str, str]]]:
            try:
                url = urlsplit(self.path)
                pairs = parse_qsl(url.query, max_num_fields=MAX_QUERY_FIELDS)
            except ValueError as exc:
                raise Refused(400, f"malformed request target: {exc}") from None
            return url.path, dict(pairs), pairs

        def _token(self, query: dict[str, str]) -> str:
            """Where the valid token came from: "query", "header" or "cookie"."""
            for where, given in (
                ("header", self.headers.get(TOKEN_HEADER)),
                ("query", query.get("token")),
                ("cookie", access.cookie_token(self.headers.get("Cookie"))),
            ):
                if given is not None:
                    if access.token_ok(given):
                        return where
                    raise Refused(401, f"wrong access token ({where})")
            raise Refused(401, "access token required: open the URL printed by aquila monitor")

        # --- methods ------------------------------------------------------------------------

        def do_GET(self):
            self._read_done()
            self._dispatch(self._get)

        def do_POST(self):
            self._dispatch(self._post)

        def _get(self) -> None:
            self._host()
            path, query, pairs = self._url()
            where = self._token(query)
            if path == "/" and where == "query":
                # Trade the token in the URL for the cookie, and drop it from the address bar.
                rest = urlencode([(k, v) for k, v in pairs if k != "token"])
                location = "/" + (f"?{rest}" if rest else "")
                return self._send(
                    303,
                    b"",
                    "text/plain",
                    {"Location": location, "Set-Cookie": access.set_cookie()},
                )
            if path in routes:
                return self._json(routes[path](query))
            if path in files:
                file, ctype = files[path]
                file = file or plotly_js()
                if file is None:
                    raise Refused(404, "plotly is not installed")
                return self._send(200, file.read_bytes(), ctype)
            raise Refused(404, f"no such path {path[:200]}")

        def _post(self) -> None:
            host = self._host()
            path, query, _ = self._url()
            where = self._token(query)
            origin = self.headers.get("Origin")
            if origin is not None:
                if not Access.same_origin(origin, host):
                    raise Refused(403, f"cross-origin request refused (Origin {origin[:100]!r})")
            elif where == "cookie":
                raise Refused(403, f"a request without Origin must send the {TOKEN_HEADER} header")
            if path != "/api/command":
                raise Refused(404, f"no such path {path[:200]}")
            body = self._body()
            self._read_done()
            try:
                obj = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise Refused(400, f"the body is not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise Refused(400, "the body must be a JSON object {kind, args}")
            try:
                self._json(app.command(obj))
            except CommandError as exc:
                raise Refused(400, str(exc)) from None

        def _body(self) -> bytes:
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise Refused(415, "Content-Type must be application/json")
            if self.headers.get("Transfer-Encoding") is not None:
                raise Refused(400, "Transfer-Encoding is not accepted; send Content-Length")
            lengths = self.headers.get_all("Content-Length") or []
            if not lengths:
                raise Refused(411, "Content-Length required")
            if len(lengths) > 1 or not lengths[0].strip().isdigit():
                raise Refused(400, f"malformed Content-Length {lengths[0][:40]!r}")
            n = int(lengths[0])
            if n > MAX_BODY:
                raise Refused(413, f"body of {n} bytes; at most {MAX_BODY}")
            body = self.rfile.read(n)
            if len(body) != n:
                raise Refused(400, f"body ended after {len(body)} of {n} bytes")
            return body

    return Handler


class DashboardServer(ThreadingHTTPServer):
    """A threading server that serves at most ``max_connections`` connections at once."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int = 64):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            body = b'{"error": "too many connections"}'
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that went away
        super().handle_error(request, client_address)


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allow_hosts: tuple[str, ...] | list[str] = (),
    request_timeout: float = 10.0,
    max_connections: int = 64,
) -> tuple[ThreadingHTTPServer, str, str]:
    """Start the server (not yet serving); returns it, its URL (with the token) and the token."""
    token = token or new_token()
    app = Dashboard(run_dir)
    # The handler needs the real port (port 0 picks one), so bind first and attach it after.
    server = DashboardServer((host, port), None, max_connections)
    bound_port = server.server_address[1]
    access = Access(token, bound_port, host, frozenset(h.lower() for h in allow_hosts))
    server.RequestHandlerClass = make_handler(app, access, request_timeout)
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host)
    shown = shown or (f"[{host}]" if ":" in host else host)
    return server, f"http://{shown}:{bound_port}/?token={token}", token
