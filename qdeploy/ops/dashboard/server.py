"""The dashboard's HTTP server: stdlib `ThreadingHTTPServer`, a fixed set of routes, security
headers on every answer, auth (auth.py) before anything else, CSRF on every change.

    GET  /  /tasks  /task/<id>  /workers  /queues  /charts  /schedule  /dead  /audit   the page
    GET  /static/app.js  /static/style.css                                         its assets
    GET  /api/session  /api/overview  /api/tasks?...  /api/task/<id>  /api/workers
         /api/queues?hours=  /api/charts?hours=  /api/schedule  /api/dead  /api/audit
    GET  /chart/throughput.svg  /chart/failures.svg  /chart/queues.svg  /chart/dead.svg
         /chart/runtimes.svg ?hours=
    POST /api/action/<name>        only with --allow-actions, an authenticated user and CSRF

Anything else is 404 (405 for another method). Nothing a client sends reaches a response header; values from
Redis reach the page as JSON only, and the page sets them as text. Requests are bounded: the
request line and headers by http.server (64 KiB), the URL here (8 KiB), a POST body (16 KiB).
While it runs, the server samples queue depths into the history every QUEUE_SAMPLE seconds
(the queues page's "over time"; several dashboards sample once between them).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import unquote, urlsplit

from qdeploy import __version__
from qdeploy.core.connection import RedisError
from qdeploy.ops import fleet, history
from qdeploy.ops.dashboard import charts
from qdeploy.ops.dashboard.actions import ActionError, Actions
from qdeploy.ops.dashboard.api import Api, BadRequest, parse_hours
from qdeploy.ops.dashboard.auth import Auth, Refused

log = logging.getLogger("qdeploy.dashboard")
PAGES = ("/", "/tasks", "/workers", "/queues", "/charts", "/schedule", "/dead", "/audit")
FORWARDED = re.compile(r"[0-9A-Fa-f.:, ]{1,200}")
MAX_URL = 8192
MAX_BODY = 16 * 1024
QUEUE_SAMPLE = 15.0
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def local_host(header: str | None) -> bool:
    """A Host header a DNS-rebinding page cannot send: an IP address, `localhost`, or none (HTTP/1.0).
    A page on evil.example rebound to 127.0.0.1 still sends `Host: evil.example`."""
    if header is None:
        return True
    try:
        name = urlsplit("//" + header).hostname or ""
    except ValueError:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _asset(name: str) -> str:
    return resources.files("qdeploy.ops.dashboard").joinpath("static", name).read_text()


class Handler(BaseHTTPRequestHandler):
    server_version = f"qdeploy-dashboard/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send a request (a slow one does not hold a thread forever)
    server: DashboardServer

    # -- entry points ------------------------------------------------------------------------
    def do_GET(self):
        self._serve(False)

    def do_HEAD(self):
        self._serve(False)

    def do_POST(self):
        self.close_connection = True  # a refused POST leaves its body unread: never reuse the connection
        self._serve(True)

    def _not_allowed(self):
        self._send(405, "text/plain; charset=utf-8", "method not allowed\n", {"Allow": "GET, HEAD, POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _serve(self, post: bool) -> None:
        try:
            if len(self.path) > MAX_URL:
                raise Refused(414, "URL too long")
            path, _, query = self.path.partition("#")[0].partition("?")  # not urlsplit: "//x/y" is no netloc here
            if not path.startswith("/") or "\\" in path or "//" in path:
                raise Refused(404, "not found")
            if not self.server.auth.required and not local_host(self.headers.get("Host")):
                raise Refused(421, "without --auth or --trusted-header the dashboard answers only to an IP "
                                   "address or localhost in the Host header (DNS rebinding)")
            user = self.server.auth.user(self.headers, self.client_address[0])
            if post:
                return self._post(path, user)
            self._get(path, query, user)
        except Refused as exc:
            extra = {"WWW-Authenticate": 'Basic realm="qdeploy", charset="UTF-8"'} if exc.challenge else \
                {"Allow": "GET, HEAD"} if exc.status == 405 else None
            self._json(exc.status, {"error": exc.reason}, extra)
        except (BadRequest, ActionError) as exc:
            self._json(getattr(exc, "status", 400), {"error": str(exc)})
        except RedisError as exc:
            self._json(503, {"error": f"broker unreachable: {type(exc).__name__}"})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # one request's bug must not end the server (logged: not a blind except)
            log.exception("dashboard: %s %s failed", self.command, self.path[:200])
            self._json(500, {"error": "internal error (see the dashboard's log)"})

    # -- GET ---------------------------------------------------------------------------------
    def _get(self, path: str, query: str, user: str | None) -> None:
        server, api = self.server, self.server.api
        if path in PAGES or path.startswith("/task/"):
            return self._send(200, "text/html; charset=utf-8", server.page)
        if path == "/static/app.js":
            return self._send(200, "text/javascript; charset=utf-8", server.script, cache=True)
        if path == "/static/style.css":
            return self._send(200, "text/css; charset=utf-8", server.style, cache=True)
        if path == "/api/session":
            return self._json(200, {"user": user, "csrf": server.auth.token(user), "actions": server.allow_actions,
                                    "show_args": api.show_args, "refresh": api.refresh, "version": __version__})
        routes = {
            "/api/overview": api.overview, "/api/workers": api.workers, "/api/dead": api.dead,
            "/api/audit": api.audit, "/api/schedule": api.schedule_rows,
        }
        if path in routes:
            return self._json(200, routes[path]())
        if path == "/api/tasks":
            return self._json(200, api.tasks(query))
        if path.startswith("/api/task/"):
            found = api.task(unquote(path[len("/api/task/"):]))
            return self._json(404, {"error": "no such task in the history or the results"}) if found is None \
                else self._json(200, found)
        if path == "/api/queues":
            return self._json(200, api.queues(parse_hours(query)))
        if path == "/api/charts":
            return self._json(200, api.charts(parse_hours(query)))
        if path.startswith("/chart/"):
            return self._chart(path[len("/chart/"):], parse_hours(query))
        raise Refused(404, "not found")

    def _chart(self, name: str, hours: float) -> None:
        api = self.server.api
        if name == "throughput.svg":
            svg = charts.throughput(api.charts(hours)["series"])
        elif name == "failures.svg":
            svg = charts.throughput(api.charts(hours)["series"], only="failure")
        elif name == "runtimes.svg":
            svg = charts.runtimes(api.charts(hours)["runtimes"])
        elif name == "queues.svg":
            svg = charts.queues(api.queues(hours)["samples"], hours)
        elif name == "dead.svg":
            svg = charts.queues(api.queues(hours)["samples"], hours, fields=("dead",))
        else:
            raise Refused(404, "not found")
        self._send(200, "image/svg+xml; charset=utf-8", svg, {"Content-Security-Policy": SVG_CSP})

    # -- POST --------------------------------------------------------------------------------
    def _post(self, path: str, user: str | None) -> None:
        server = self.server
        if not path.startswith("/api/action/"):
            raise Refused(405, "read-only here")
        if not server.allow_actions:
            raise Refused(403, "actions are off (start the dashboard with --allow-actions)")
        if user is None:
            raise Refused(403, "actions need an authenticated user")
        server.auth.check_change(self.headers, user, self.headers.get("Host", ""))
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            raise Refused(413 if length.isdigit() else 411, f"expected a JSON body of at most {MAX_BODY} bytes")
        raw = self.rfile.read(int(length))
        try:
            args = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            raise Refused(400, "the body is not JSON") from None
        result = server.actions.run(path[len("/api/action/"):], args, user, self._peer())
        self._json(200, {"ok": True, "result": result})

    def _peer(self) -> str:
        """Who sent it, for the audit log: behind a trusted proxy, the X-Forwarded-For it set too."""
        peer = self.client_address[0]
        auth = self.server.auth
        forwarded = self.headers.get("X-Forwarded-For", "")
        if auth.trusted_header and forwarded and auth.trusted(peer) and FORWARDED.fullmatch(forwarded):
            return f"{forwarded} via {peer}"
        return peer

    # -- answers -----------------------------------------------------------------------------
    def _json(self, status: int, value, extra: dict | None = None) -> None:
        self._send(status, "application/json", json.dumps(value, default=str, ensure_ascii=True), extra)

    def _send(self, status, content_type: str, body: str, extra: dict | None = None, cache: bool = False) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "private, max-age=300" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        headers = {"Content-Security-Policy": CSP, **(extra or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, fmt, *args):  # quiet by default; no credentials are ever logged
        log.debug("%s %s", self.address_string(), fmt % args)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, app, broker, auth: Auth, *, refresh: float = 2.0, show_args: bool = False,
                 allow_actions: bool = False, schedule=None, sample_queues: bool = True):
        if allow_actions and not auth.required:
            raise ValueError("--allow-actions needs --auth USER:PASS or --trusted-header NAME: actions are never anonymous")
        self.app, self.broker, self.auth, self.allow_actions = app, broker, auth, allow_actions
        self.store = history.HistoryStore(broker.client, broker.ns)
        self.api = Api(app, broker, self.store, show_args=show_args, refresh=refresh, schedule=schedule)
        self.actions = Actions(app, broker, self.store, schedule)
        self.page = _asset("index.html").replace("VERSION", __version__)
        self.script, self.style = _asset("app.js"), _asset("style.css")
        self._stop = threading.Event()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        if sample_queues:
            threading.Thread(target=self._sample, name="queue-sampler", daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.add_queue_sample(time.time(), fleet.queue_stats(self.broker), QUEUE_SAMPLE)
            except RedisError as exc:
                log.debug("queue sample skipped: %s", exc)
            self._stop.wait(QUEUE_SAMPLE)

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()


def make_server(broker, bind: str = "127.0.0.1", port: int = 5555, *, app=None, auth: Auth | None = None,
                **kw) -> DashboardServer:
    """The dashboard on bind:port (127.0.0.1 unless told otherwise)."""
    return DashboardServer((bind, port), app, broker, auth or Auth(), **kw)
