"""Broker URLs -> redis-py clients.

Accepted forms (documented in docs/protocol.md):

    redis://[[user]:password@]host[:port][/db]
    rediss://...                                  TLS; ?ssl_cert_reqs=none|optional|required, ssl_ca_certs=...
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    sentinel://[[user]:password@]host[:port][,host[:port]...][/db]?master=NAME
        [&sentinel_username=U&sentinel_password=P]    credentials of the sentinels themselves
    sentinels://...                               the same, TLS to sentinels and master
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

SCHEMES = ("redis", "rediss", "unix", "sentinel", "sentinels")


class BrokerURLError(ValueError):
    """The broker URL cannot be understood; the message is one line for the operator."""


@dataclass
class SentinelSpec:
    hosts: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False
    options: dict = field(default_factory=dict)


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for logs and error messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    cred, _, rest = parts.netloc.rpartition("@")
    user = cred.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{rest}").geturl()


def parse_sentinel_url(url: str) -> SentinelSpec:
    parts = urlsplit(url)
    if parts.scheme not in ("sentinel", "sentinels"):
        raise BrokerURLError(f"not a sentinel URL: {redact(url)}")
    cred, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if cred:
        user, _, pw = cred.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    hosts = []
    for item in filter(None, hostlist.split(",")):
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = item.partition(":")
        try:
            hosts.append((host, int(port) if port else 26379))
        except ValueError:
            raise BrokerURLError(f"bad sentinel port {port!r} in {redact(url)}") from None
    if not hosts:
        raise BrokerURLError(f"sentinel URL names no sentinel host: {redact(url)}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    master = query.pop("master", None) or query.pop("master_name", None)
    if not master:
        raise BrokerURLError(f"sentinel URL needs ?master=NAME: {redact(url)}")
    path = parts.path.strip("/") or query.pop("db", "0")
    try:
        db = int(path)
    except ValueError:
        raise BrokerURLError(f"bad database number {path!r} in {redact(url)}") from None
    return SentinelSpec(hosts=hosts, master=master, db=db, username=username, password=password,
                        sentinel_username=query.pop("sentinel_username", None),
                        sentinel_password=query.pop("sentinel_password", None),
                        ssl=parts.scheme == "sentinels", options=query)


def _quiet_handshake() -> dict:
    """redis-py >= 7 sends CLIENT SETINFO twice and CLIENT MAINT_NOTIFICATIONS after connecting,
    and redis-py 8 a HELLO 3: four round trips each time a recycled child connects. Skip them
    where the client allows. RESP2 (the server's default, redis-py < 8's too) also keeps every
    reply the same shape whatever the redis-py version."""
    params = inspect.signature(redis.Redis.__init__).parameters
    quiet = {"protocol": 2} if "protocol" in params else {}
    if "maint_notifications_config" in params:
        from redis.maint_notifications import MaintNotificationsConfig

        quiet["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    if "driver_info" in params:  # redis-py 8: None = no CLIENT SETINFO
        quiet["driver_info"] = None
    elif "lib_name" in params:
        quiet.update(lib_name=None, lib_version=None)
    return quiet


QUIET_HANDSHAKE = _quiet_handshake()


def socket_of(conn):
    """The socket of a redis-py connection, or None (not connected, or no connection at all).
    redis-py keeps it in the private `_sock`, with no public equivalent; qdeploy reads it only
    here, so a redis-py without it degrades (`delay` blocks instead of polling, the control
    channel is off) instead of failing."""
    return getattr(conn, "_sock", None)


def _on_connect(conn) -> None:
    """redis-py's handshake, minus the health-check PING it would send before the connection's
    first command: it sends one when the handshake read no reply, as a quiet one (RESP2, no
    AUTH/SELECT/name) doesn't. That is a wasted round trip per new connection, i.e. per recycled
    child; a connection made just now is healthy."""
    conn.on_connect()
    conn.next_health_check = time.monotonic() + conn.health_check_interval


def connect(url: str, *, retries: int = 2, socket_timeout: float = 10.0,
            connect_timeout: float = 5.0, client_name: str | None = None) -> redis.Redis:
    """A client for `url`. Nothing is sent yet: call `.ping()` to check reachability.

    `retries` is how often redis-py itself retries a command after a connection error; the
    consumer uses 0 and handles reconnects (and their at-least-once consequences) itself.
    """
    if not isinstance(url, str) or "://" not in url:
        raise BrokerURLError(f"broker URL must look like redis://host:port/db, got {url!r}")
    scheme = url.split("://", 1)[0]
    if scheme not in SCHEMES:
        raise BrokerURLError(f"unsupported broker URL scheme {scheme!r} in {redact(url)} "
                             f"(use one of {', '.join(s + '://' for s in SCHEMES)})")
    common = dict(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                  retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
                  client_name=client_name, health_check_interval=30, redis_connect_func=_on_connect,
                  **QUIET_HANDSHAKE)
    if scheme.startswith("sentinel"):
        spec = parse_sentinel_url(url)
        skw = {k: v for k, v in (("username", spec.sentinel_username),
                                 ("password", spec.sentinel_password)) if v}
        if spec.ssl:
            skw["ssl"] = True
        sentinel = Sentinel(spec.hosts, sentinel_kwargs=skw, socket_timeout=socket_timeout,
                            socket_connect_timeout=connect_timeout)
        kw = dict(common, db=spec.db, username=spec.username, password=spec.password)
        if spec.ssl:
            kw["ssl"] = True
        return sentinel.master_for(spec.master, **kw)
    try:
        client = redis.Redis.from_url(url, **common)
    except (ValueError, TypeError) as exc:
        raise BrokerURLError(f"bad broker URL {redact(url)}: {exc}") from None
    return client
