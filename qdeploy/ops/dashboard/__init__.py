"""`qdeploy dashboard`: the web dashboard over the fleet and its task history (what Flower is to
Celery, without its lost history, missing retry button and auth bypass).

One job per module:

    server.py    the HTTP server: routes, security headers, request bounds, CSRF on changes
    auth.py      who is asking (basic auth, a trusted proxy's header) and CSRF tokens
    api.py       what the pages read (JSON), from Redis and the nodes' control channel
    actions.py   what the page may change (--allow-actions), each change in the audit log
    schedule.py  the periodic tasks (beat's entries and store)
    charts.py    server-side SVG charts
    static/      the page (index.html, app.js, style.css): served by qdeploy, no CDN

This module holds the options (`Options.parse`: every flag checked, one line for a bad one)
and `build`/`serve`, which `qdeploy dashboard` (qdeploy/cli/ops.py) delegates to.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from qdeploy.ops.dashboard.auth import DEFAULT_PROXIES, Auth, parse_basic, parse_header, parse_proxies
from qdeploy.ops.dashboard.server import DashboardServer, make_server

__all__ = ["Auth", "DashboardServer", "Options", "build", "make_server", "serve"]


@dataclass(frozen=True)
class Options:
    bind: str = "127.0.0.1"
    port: int = 5555
    auth: Auth | None = None
    allow_actions: bool = False
    show_args: bool = False
    refresh: float = 2.0

    @classmethod
    def parse(cls, *, bind: str = "127.0.0.1", port: str | int = 5555, auth: str | None = None,
              trusted_header: str | None = None, trusted_proxies=(), allow_actions: bool = False,
              show_args: bool = False, refresh: str | float = 2.0) -> Options:
        """The flags as given -> Options; ValueError with one line naming the flag."""
        if not isinstance(bind, str) or not bind or len(bind) > 253 or not bind.isprintable() or " " in bind:
            raise ValueError("--bind: expected an address such as 127.0.0.1, :: or 0.0.0.0")
        try:
            number = int(str(port), 10)
        except ValueError:
            raise ValueError(f"--port {str(port)[:40]!r}: expected a port number from 0 to 65535") from None
        if not 0 <= number <= 65535:
            raise ValueError(f"--port {number}: expected a port number from 0 to 65535")
        try:
            seconds = float(refresh)
        except ValueError:
            raise ValueError(f"--refresh {str(refresh)[:40]!r}: expected seconds from 0.5 to 60") from None
        if not math.isfinite(seconds) or not 0.5 <= seconds <= 60:
            raise ValueError("--refresh: expected seconds from 0.5 to 60")
        basic = parse_basic(auth) if auth is not None else None
        header = parse_header(trusted_header) if trusted_header is not None else None
        proxies = parse_proxies(trusted_proxies or DEFAULT_PROXIES)
        if trusted_proxies and header is None:
            raise ValueError("--trusted-proxy: only with --trusted-header NAME (the header it may send)")
        checked = Auth(basic=basic, trusted_header=header, proxies=proxies)
        if allow_actions and not checked.required:
            raise ValueError("--allow-actions needs --auth USER:PASS or --trusted-header NAME: "
                             "actions are never anonymous")
        return cls(bind=bind, port=number, auth=checked, allow_actions=bool(allow_actions),
                   show_args=bool(show_args), refresh=seconds)

    def describe(self, port: int) -> str:
        host = f"[{self.bind}]" if _is_v6(self.bind) else self.bind
        auth = self.auth or Auth()
        how = [("basic auth" if auth.basic else ""), (f"user from {auth.trusted_header}" if auth.trusted_header else ""),
               ("actions on" if self.allow_actions else "read-only"), ("arguments shown" if self.show_args else "")]
        return f"dashboard on http://{host}:{port}/ ({', '.join(h for h in how if h)})"


def _is_v6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False


def build(app, options: Options, config_file: str | None = None) -> DashboardServer:
    """The server for `app` (its broker and result store), listening. OSError when it cannot."""
    from qdeploy.ops.dashboard.schedule import for_app

    return make_server(app.transport, options.bind, options.port, app=app, auth=options.auth,
                       refresh=options.refresh, show_args=options.show_args, allow_actions=options.allow_actions,
                       schedule=for_app(app, config_file))


def serve(server: DashboardServer) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM as KeyboardInterrupt is the caller's)."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
