"""`qdeploy dashboard`: a small read-only web page over the fleet (what Flower is to Celery).

stdlib only: `ThreadingHTTPServer`, one HTML page, one script and one stylesheet served from
here, and `/api/state` (JSON) that the page polls. There is no endpoint that changes anything.
It binds 127.0.0.1 unless told otherwise; `--auth USER:PASS` adds HTTP basic auth, compared in
constant time. The page builds every cell with `textContent` (task names, errors and node names
come from Redis: never interpreted as HTML), and the CSP forbids inline script.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from qdeploy import __version__
from qdeploy.core.connection import RedisError, redact
from qdeploy.ops import fleet

log = logging.getLogger("qdeploy.dashboard")
CACHE_SECONDS = 0.5  # many open pages cost Redis one snapshot per half second, not one each

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qdeploy dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/style.css"></head>
<body><header><h1>qdeploy</h1><span id="broker"></span><span id="updated">loading…</span></header>
<main>
<section><h2>Nodes <small id="nodes-count"></small></h2><table id="nodes"></table></section>
<section><h2>Queues</h2><table id="queues"></table></section>
<section><h2>Recent tasks</h2><table id="recent"></table></section>
<section><h2>Failed tasks</h2><table id="failed"></table></section>
<section><h2>Dead letters</h2><table id="dead"></table></section>
</main><footer>qdeploy VERSION · read-only</footer>
<script src="/app.js"></script></body></html>
"""

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1d2733}
header{background:#1f3a5f;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline}
header h1{margin:0;font-size:22px}#updated{margin-left:auto;opacity:.8}
main{padding:12px 24px;display:grid;grid-template-columns:1fr 1fr;gap:16px}
section{background:#fff;border-radius:6px;padding:8px 16px;box-shadow:0 1px 3px #0002}
h2{font-size:16px;margin:8px 0}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e7eb;font-size:13px;max-width:28em;
overflow:hidden;text-overflow:ellipsis;white-space:nowrap}th{background:#eef2f6}
.FAILURE,.REVOKED,.down{color:#b42318;font-weight:600}.SUCCESS,.up{color:#087443;font-weight:600}
.empty{color:#778;font-style:italic}footer{padding:8px 24px;color:#778}
"""

SCRIPT = """
"use strict";
const COLUMNS = {
  nodes: [["owner","node"],["kind","kind"],["pid","pid"],["pool","pool"],["tasks_done","done"],["uptime","uptime"],["queues","queues"]],
  queues: [["queue","queue"],["ready","ready"],["in_flight","in flight"],["scheduled","scheduled"],["dead","dead"]],
  recent: [["time","time"],["task","task"],["state","state"],["id","id"],["worker","worker"]],
  failed: [["time","time"],["task","task"],["state","state"],["error","error"],["id","id"]],
  dead: [["time","time"],["task","task"],["queue","queue"],["reason","reason"],["id","id"]],
};
function show(v, key) {
  if (v === null || v === undefined) return "-";
  if (key === "time" && typeof v === "number") return v ? new Date(v * 1000).toLocaleTimeString() : "-";
  if (key === "uptime" && typeof v === "number") return Math.floor(v / 3600) + "h " + Math.floor(v % 3600 / 60) + "m " + Math.floor(v % 60) + "s";
  if (Array.isArray(v)) return v.join(",");
  return String(v);
}
function fill(id, rows) {
  const table = document.getElementById(id), cols = COLUMNS[id];
  table.replaceChildren();
  const head = table.insertRow();
  for (const [, label] of cols) { const th = document.createElement("th"); th.textContent = label; head.appendChild(th); }
  if (!rows.length) { const td = table.insertRow().insertCell(); td.colSpan = cols.length; td.className = "empty"; td.textContent = "none"; }
  for (const row of rows) {
    const tr = table.insertRow();
    for (const [key] of cols) { const td = tr.insertCell(); td.textContent = show(row[key], key); if (key === "state") td.className = String(row[key]); td.title = td.textContent; }
  }
}
let refresh = 2000;
async function update() {
  try {
    const reply = await fetch(location.origin + "/api/state", {cache: "no-store", credentials: "same-origin"});
    const s = await reply.json();
    if (!reply.ok) throw new Error(s.error || reply.statusText);
    refresh = (s.refresh || 2) * 1000;
    document.getElementById("broker").textContent = s.broker + "  ·  namespace " + s.namespace;
    document.getElementById("nodes-count").textContent = s.nodes.length + " online";
    fill("nodes", s.nodes); fill("queues", s.queues); fill("recent", s.tasks.recent); fill("failed", s.tasks.failed); fill("dead", s.dead);
    const u = document.getElementById("updated"); u.textContent = "updated " + new Date().toLocaleTimeString(); u.className = "up";
  } catch (e) {
    const u = document.getElementById("updated"); u.textContent = "update failed: " + e.message; u.className = "down";
  }
  setTimeout(update, refresh);
}
update();
"""


def snapshot(broker, refresh: float = 2.0) -> dict:
    """Everything the page shows, as one JSON-able dict."""
    return {
        "time": time.time(), "broker": redact(broker.url), "namespace": broker.ns, "refresh": refresh,
        "nodes": fleet.status(broker), "queues": fleet.queue_stats(broker),
        "tasks": fleet.recent_tasks(broker), "dead": fleet.dead_letter_list(broker, 20),
    }


class Handler(BaseHTTPRequestHandler):
    server_version = f"qdeploy-dashboard/{__version__}"
    routes: ClassVar[dict[str, tuple[str, str]]] = {
        "/": ("text/html; charset=utf-8", PAGE.replace("VERSION", __version__)),
        "/app.js": ("text/javascript; charset=utf-8", SCRIPT),
        "/style.css": ("text/css; charset=utf-8", STYLE),
    }

    def do_GET(self):
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0]
        if path == "/api/state":
            try:
                body, status = json.dumps(self.server.state(), default=str), HTTPStatus.OK
            except RedisError as exc:
                body, status = json.dumps({"error": f"broker unreachable: {exc}"}), HTTPStatus.SERVICE_UNAVAILABLE
            return self._send(status, "application/json", body)
        if path in self.routes:
            return self._send(HTTPStatus.OK, *self.routes[path])
        self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", "not found\n")

    do_HEAD = do_GET

    def _refuse(self):
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "read-only\n", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _authorised(self) -> bool:
        expected = getattr(self.server, "auth", None)
        if expected is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            given = base64.b64decode(token.strip(), validate=True) if scheme.lower() == "basic" else b""
        except ValueError:
            given = b""
        if hmac.compare_digest(given, expected):
            return True
        self._send(HTTPStatus.UNAUTHORIZED, "text/plain; charset=utf-8", "authentication required\n",
                   {"WWW-Authenticate": 'Basic realm="qdeploy", charset="UTF-8"'})
        return False

    def _send(self, status, content_type: str, body: str, extra: dict | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'none'")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, fmt, *args):  # quiet by default; no credentials are ever logged
        log.debug("%s %s", self.address_string(), fmt % args)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, broker, auth: str | None, refresh: float):
        self.broker, self.refresh = broker, refresh
        self.auth = auth.encode() if auth is not None else None
        self._lock = threading.Lock()
        self._cached: tuple[float, dict] | None = None
        super().__init__(address, Handler)

    def state(self) -> dict:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > CACHE_SECONDS:
                self._cached = (now, snapshot(self.broker, self.refresh))
            return self._cached[1]


def make_server(broker, bind: str = "127.0.0.1", port: int = 5555, *, auth: str | None = None,
                refresh: float = 2.0) -> DashboardServer:
    return DashboardServer((bind, port), broker, auth, refresh)
