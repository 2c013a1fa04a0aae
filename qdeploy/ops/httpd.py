"""A tiny HTTP/1.1 server that lives in a selector: `/metrics` and `/healthz` of a worker master.

The master is single-threaded and forks, so no thread serves these: the listening socket and
each connection are non-blocking and registered in the master's selector, each turn of the loop
moves what it can. A client that sends nothing, or too much, or reads nothing, is dropped after
CONN_TIMEOUT; at most MAX_CONNS are open at once. GET and HEAD only; every answer closes the
connection.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("qdeploy.worker")

MAX_REQUEST = 8192
MAX_CONNS = 32
CONN_TIMEOUT = 5.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}
Route = Callable[[], tuple[int, str, bytes]]  # -> (status, content type, body)

_servers: weakref.WeakSet = weakref.WeakSet()


def _close_in_child() -> None:
    for server in list(_servers):
        server.close_fds()


os.register_at_fork(after_in_child=_close_in_child)


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    deadline: float
    inbuf: bytes = b""
    out: bytes = b""


def listen(bind: str, port: int) -> socket.socket:
    """A listening socket on bind:port; OSError (address in use, no permission) as it comes."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(16)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    def __init__(self, selector: selectors.BaseSelector, sock: socket.socket, routes: dict[str, Route]):
        self.selector, self.sock, self.routes = selector, sock, routes
        self.conns: dict[int, _Conn] = {}
        selector.register(sock, selectors.EVENT_READ, self._accept)
        _servers.add(self)

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    def _accept(self, mask: int) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE...: try again next turn
                log.warning("metrics: cannot accept a connection: %s", exc)
                return
            if len(self.conns) >= MAX_CONNS:
                conn.close()
                continue
            conn.setblocking(False)
            state = _Conn(conn, time.monotonic() + CONN_TIMEOUT)
            self.conns[conn.fileno()] = state
            self.selector.register(conn, selectors.EVENT_READ, lambda mask, c=state: self._io(c, mask))

    def _io(self, conn: _Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ and not conn.out:
                data = conn.sock.recv(4096)
                if not data:
                    return self._close(conn)
                conn.inbuf += data
                if b"\r\n\r\n" in conn.inbuf or b"\n\n" in conn.inbuf:
                    self._respond(conn, *self._answer(conn.inbuf))
                elif len(conn.inbuf) > MAX_REQUEST:
                    self._respond(conn, 431, "text/plain", b"request too large\n")
            if mask & selectors.EVENT_WRITE and conn.out:
                sent = conn.sock.send(conn.out)
                conn.out = conn.out[sent:]
                if not conn.out:
                    self._close(conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)

    def _answer(self, raw: bytes) -> tuple[int, str, bytes, bool]:
        line = raw.split(b"\n", 1)[0].strip()
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0].decode("ascii", "replace")
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"GET or HEAD only\n", False
        route = self.routes.get(target)
        if route is None:
            return 404, "text/plain", b"not found: try /metrics or /healthz\n", method == b"HEAD"
        try:
            status, ctype, body = route()
        except Exception:  # a failing page must never take the master down
            log.exception("metrics: %s failed", target)
            status, ctype, body = 500, "text/plain", b"internal error\n"
        return status, ctype, body, method == b"HEAD"

    def _respond(self, conn: _Conn, status: int, ctype: str, body: bytes, head: bool = False) -> None:
        header = (f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                  f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        conn.out = header.encode() + (b"" if head else body)
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, lambda mask, c=conn: self._io(c, mask))

    def _close(self, conn: _Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def tick(self) -> None:
        """Drop connections past their deadline (slow or silent clients)."""
        now = time.monotonic()
        for conn in [c for c in self.conns.values() if c.deadline <= now]:
            self._close(conn)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()

    def close_fds(self) -> None:
        """In a forked child: close our copies of the sockets (the child serves nothing)."""
        for conn in self.conns.values():
            conn.sock.close()
        self.conns = {}
        self.sock.close()
