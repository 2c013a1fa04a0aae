"""With `resp` (qdeploy's own connection), the only module that knows redis-py: URLs become
clients here, the hot path lives here, and every other module takes redis-py's exceptions from
here. redis-py's client stack is loaded only when a `LazyClient` is first used (_imports.py).

* `connect(url)` / `client_for(BrokerURL)`: the one place a URL becomes a client, one branch per
  topology (a Redis Cluster scheme adds its branch here and its row in `urls.SCHEMES`). The URL
  grammar (every accepted form, validation, redaction) is `qdeploy.core.urls`, which needs no
  redis-py (the config validates a broker without importing it); its names are re-exported here.
* `HotPath(client)`: self-packed commands on one connection per thread, for every task's
  reserve/ack and every `delay`; `ClusterHotPath` the same on Redis Cluster, one connection per
  thread and node, routed by hash slot (`hot_path(client, wait)` picks one). Either appends
  `WAIT n ms` to the writes a caller marks durable when the URL asks for it (`wait_replicas=`).
* `RedisError`, `ResponseError`, `BROKER_DOWN` (unreachable) and `refused_for_now(exc)` (the
  server cannot write now, but will): what the loops catch.

redis-py's private parts are read here and nowhere else, each in one function with a test that
fails loudly when a redis-py release moves it (tests/unit/test_connection.py): `Connection._sock`
(`socket_of`), the pool's `connection_class`/`connection_kwargs` (`HotPath._new_connection`), and
`next_health_check` (`_on_connect`).
"""

from __future__ import annotations

import inspect
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

from redis import exceptions as rexc  # alone: redis-py's package body runs on first use (_imports.py)
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisClusterException, TryAgainError
from redis.retry import Retry

from qdeploy.core import resp

try:  # CPython's own SHA-1: hashlib would map OpenSSL's libcrypto (~3.7 MiB) into every worker process
    from _sha1 import sha1
except ImportError:  # another interpreter
    from hashlib import sha1
from qdeploy.core.resp import fill_stdio, pack
from qdeploy.core.urls import SCHEMES, BrokerURL, BrokerURLError, redact, redact_text

__all__ = ["BROKER_DOWN", "SCHEMES", "BrokerURL", "BrokerURLError", "Client", "ClusterDown", "ClusterHotPath",
           "HotPath", "LazyClient", "NotReplicated", "RedisError", "ResponseError", "Script", "client_for", "connect",
           "error_text", "hot_path", "is_cluster", "nodes_of", "pack", "redact", "redact_text", "redis_py_version",
           "refused_for_now", "slot_of", "socket_of", "subscriber", "text"]

if TYPE_CHECKING:
    from redis import Redis as Client
else:
    Client = Any  # redis-py's client, named without loading it

log = logging.getLogger("qdeploy.broker")
RedisError = rexc.RedisError  # anything a Redis call can raise
ResponseError = rexc.ResponseError  # the server answered with an error
BROKER_DOWN = (rexc.ConnectionError, rexc.TimeoutError)  # unreachable: reconnect
ClusterDown = rexc.ClusterDownError  # a slot not served now (mid-failover): a ResponseError


class NotReplicated(rexc.RedisError):
    """A write the primary applied but fewer replicas than `wait_replicas=` confirmed within
    `wait_timeout=`: it is lost if the primary fails before replicating it."""


def is_cluster(client) -> bool:
    cluster = sys.modules.get("redis.cluster")  # not loaded: no client can be one
    return cluster is not None and isinstance(client, cluster.RedisCluster)


def redis_py_version() -> str:
    """The installed redis-py's version, without loading its client stack for it."""
    from importlib import metadata

    try:
        return metadata.version("redis")
    except metadata.PackageNotFoundError:
        return "?"


def slot_of(key: str | bytes) -> int:
    """The Redis Cluster hash slot of a key (its `{tag}` if it has one)."""
    return key_slot(key.encode() if isinstance(key, str) else key)


@cache
def _quiet_handshake() -> dict:
    """redis-py >= 7 sends CLIENT SETINFO twice and CLIENT MAINT_NOTIFICATIONS after connecting,
    and redis-py 8 a HELLO 3: four round trips each time a recycled child connects. Skip them
    where the client allows. RESP2 (the server's default, redis-py < 8's too) also keeps every
    reply the same shape whatever the redis-py version."""
    import redis

    params = inspect.signature(redis.Redis.__init__).parameters
    quiet: dict[str, Any] = {"protocol": 2} if "protocol" in params else {}
    if "maint_notifications_config" in params:
        from redis.maint_notifications import MaintNotificationsConfig

        quiet["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    if "driver_info" in params:  # redis-py 8: None = no CLIENT SETINFO
        quiet["driver_info"] = None
    elif "lib_name" in params:
        quiet.update(lib_name=None, lib_version=None)
    return quiet



def text(reply) -> str:
    """A reply redis-py gives as bytes (this client never decodes), as text."""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


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
    child; a connection made just now is healthy.

    First, a socket that landed on fd 0, 1 or 2 (a task closed its stdio) is made again higher
    up: on fd 1, the task's next `print("FLUSHALL")` would reach Redis as a command."""
    sock = socket_of(conn)
    if sock is not None and sock.fileno() <= 2:
        conn.disconnect()
        fill_stdio()
        conn.connect()  # runs this hook again, on a socket at fd 3 or above
        return
    conn.on_connect()
    conn.next_health_check = time.monotonic() + conn.health_check_interval


def connect(url: str | BrokerURL, *, retries: int = 2, socket_timeout: float = 10.0,
            connect_timeout: float = 5.0, client_name: str | None = None) -> Client:
    """A client for `url` (BrokerURLError if it is not a broker URL). Nothing is sent yet: call
    `.ping()` to check reachability.

    `retries` is how often a command is retried after a connection error; the consumer uses 0
    and handles reconnects (and their at-least-once consequences) itself. On one server and on
    Sentinel the client is a `LazyClient`: redis-py's client is made on its first use.
    """
    parsed = url if isinstance(url, BrokerURL) else BrokerURL.parse(url)
    kwargs: dict[str, Any] = {"retries": retries, "socket_timeout": socket_timeout,
                              "connect_timeout": connect_timeout, "client_name": client_name}
    if parsed.topology in LazyClient.TOPOLOGIES:
        return LazyClient(parsed, **kwargs)  # type: ignore[return-value]
    return client_for(parsed, **kwargs)


class LazyClient:
    """The redis-py client of a URL, made (and redis-py's package body loaded) on the first use
    of any of its attributes, which it then stands for. A `HotPath` over it on a plain server
    (TCP or unix socket, no TLS) talks to Redis on qdeploy's own `resp.Connection` without
    making it: a worker's master and children never do, unless a task or an operator's
    command asks for something only redis-py's client offers."""

    TOPOLOGIES = frozenset({"standalone", "unix", "sentinel"})

    def __init__(self, url: BrokerURL, *, retries: int, socket_timeout: float, connect_timeout: float,
                 client_name: str | None):
        self.url = url
        self._kwargs: dict[str, Any] = {"retries": retries, "socket_timeout": socket_timeout,
                                        "connect_timeout": connect_timeout, "client_name": client_name}
        self._client: Any = None

    @property
    def real(self) -> Client:
        if self._client is None:
            self._client = client_for(self.url, **self._kwargs)
        return self._client

    def __getattr__(self, name: str):
        if name in ("url", "_kwargs", "_client", "real"):  # a copy being made, or `real` failed: no client
            raise AttributeError(name)
        return getattr(self.real, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __repr__(self) -> str:
        return f"LazyClient({self.url.redacted!r}{', made' if self._client is not None else ''})"

    def own_connection(self) -> dict | None:
        """`resp.Connection`'s arguments for this URL; None where redis-py must talk (TLS, Sentinel)."""
        url, kwargs = self.url, self._kwargs
        if url.tls or url.topology not in ("standalone", "unix"):
            return None
        timeouts = _timeouts(url, kwargs["socket_timeout"], kwargs["connect_timeout"])
        params: dict[str, Any] = {
            "db": url.db, "username": url.username, "password": url.password, "client_name": kwargs["client_name"],
            "socket_timeout": timeouts["socket_timeout"], "connect_timeout": timeouts["socket_connect_timeout"],
            "retries": kwargs["retries"]}
        if url.topology == "unix":
            params["path"] = url.path
        else:
            (params["host"], params["port"]), = url.hosts
        return params


def _timeouts(url: BrokerURL, socket_timeout: float, connect_timeout: float) -> dict[str, float]:
    """The read and connect timeouts: the URL's query wins over the caller's."""
    return {"socket_timeout": url.options.get("socket_timeout", socket_timeout),
            "socket_connect_timeout": url.options.get("socket_connect_timeout", connect_timeout)}


def client_for(url: BrokerURL, *, retries: int = 2, socket_timeout: float = 10.0,
               connect_timeout: float = 5.0, client_name: str | None = None) -> Client:
    """The redis-py client of a parsed URL, made now. Timeouts in the URL's query win over the arguments;
    TLS options apply to the sentinels and the master alike."""
    opts = url.options
    timeouts = _timeouts(url, socket_timeout, connect_timeout)
    tls = {**{k: v for k, v in opts.items() if k.startswith("ssl_")}, "ssl": True} if url.tls else {}
    common = {**timeouts, **tls, "db": url.db, "username": url.username, "password": url.password,
              "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries), "client_name": client_name,
              "health_check_interval": 30, "redis_connect_func": _on_connect, **_quiet_handshake()}
    import redis

    if url.topology == "sentinel":
        from redis.sentinel import Sentinel

        own = {"username": opts.get("sentinel_username"), "password": opts.get("sentinel_password")}
        # no retries per sentinel: the next sentinel is the retry (and the client's own retries
        # ask them all again); redis-py's default would back off for seconds per dead sentinel
        sentinel_kwargs = {**timeouts, **tls, **{k: v for k, v in own.items() if v}, "retry": Retry(NoBackoff(), 0)}
        return Sentinel(list(url.hosts), sentinel_kwargs=sentinel_kwargs).master_for(url.master, **common)
    if url.topology == "unix":
        return redis.Redis(unix_socket_path=url.path, **common)
    if url.topology == "standalone":
        (host, port), = url.hosts
        return redis.Redis(host=host, port=port, **common)
    if url.topology == "cluster":
        return _cluster_client(url, common, retries)
    raise BrokerURLError(f"{url.scheme}:// has no client yet", url.url)


def _cluster_client(url: BrokerURL, common: dict, retries: int) -> Any:
    """redis-py's cluster client over every node in the URL (any one that answers tells it the
    rest). Its retries (after a connection error it refreshes the slot table and tries again)
    are the caller's `retries`: 0 for the loops, which handle lost replies themselves. Unlike
    the other clients it asks the cluster for its slot table at once: a cluster none of whose
    nodes answers is a ConnectionError here."""
    kwargs = {k: v for k, v in common.items() if k not in ("db", "retry", "health_check_interval",
                                                               "redis_connect_func")}
    from redis.cluster import ClusterNode

    try:
        return _cluster_class()(startup_nodes=[ClusterNode(host, port) for host, port in url.hosts],
                            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
                            require_full_coverage=False, redis_connect_func=_on_connect_cluster, **kwargs)
    except RedisClusterException as exc:  # not a RedisError: the loops would not catch it
        raise rexc.ConnectionError(f"no node of the cluster answered ({_first_line(exc)})") from None


@cache
def _cluster_class() -> type:
    """redis-py's cluster client, whose own refusals (keys of several slots in one command, no key
    to route by, no node reachable) are RedisClusterException, not a RedisError: here they are
    RedisErrors, so every loop and command that handles Redis errors handles them too. (Made on
    first use: redis.cluster is all of redis-py's client stack.)"""
    from redis.cluster import RedisCluster

    class _Cluster(RedisCluster):
        def execute_command(self, *args, **kwargs):
            try:
                return super().execute_command(*args, **kwargs)
            except RedisClusterException as exc:
                if "cannot be connected" in str(exc):
                    raise rexc.ConnectionError(f"no node of the cluster answered ({_first_line(exc)})") from None
                if "same key slot" in str(exc) or "same slot" in str(exc):
                    raise rexc.ClusterCrossSlotError(_first_line(exc)) from None
                raise ClusterRefused(_first_line(exc)) from None

    return _Cluster


class ClusterRefused(rexc.ResponseError):
    """redis-py refused to send a command to a cluster (it cannot route it)."""


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def _on_connect_cluster(conn) -> None:
    """RedisCluster ran the handshake already (it calls this after `on_connect`): only the
    fd 0-2 guard and the skipped health-check PING of `_on_connect`."""
    sock = socket_of(conn)
    if sock is not None and sock.fileno() <= 2:
        conn.disconnect()
        fill_stdio()
        conn.connect()
        return
    conn.next_health_check = time.monotonic() + conn.health_check_interval


def ping_cluster(client) -> bool:
    """Ask the cluster for its slot table again, then PING every primary in it: True when all
    answer (a primary that died and whose replica was not promoted yet fails this)."""
    try:
        client.nodes_manager.initialize()
    except RedisClusterException as exc:
        raise rexc.ConnectionError(f"no node of the cluster answered ({_first_line(exc)})") from None
    for node in client.get_primaries():
        client.get_redis_connection(node).ping()
    return True


def nodes_of(client) -> list[tuple[str, int, str]]:
    """(host, port, role) of every node the client knows: the URL's host for one server, every
    primary and replica of a cluster (from its slot table), the sentinels' current master."""
    if is_cluster(client):  # CLUSTER NODES: the nodes that failed too (CLUSTER SLOTS leaves them out)
        out = []
        for address, info in client.cluster_nodes().items():
            flags = str(info.get("flags", "")).split(",")
            if "noaddr" in flags or "handshake" in flags:
                continue
            host, _, port = address.partition("@")[0].rpartition(":")
            role = "primary" if "master" in flags else "replica"
            out.append((host.strip("[]"), int(port), role + (" (failing)" if {"fail", "fail?"} & set(flags) else "")))
        return out
    pool = client.connection_pool
    if hasattr(pool, "get_master_address"):  # Sentinel: the master it names, and its replicas
        host, port = pool.get_master_address()
        replicas = pool.sentinel_manager.discover_slaves(pool.service_name)
        return [(host, int(port), "primary"), *((h, int(p), "replica") for h, p in replicas)]
    kwargs = getattr(pool, "connection_kwargs", {})
    if "host" in kwargs:
        return [(kwargs["host"], int(kwargs.get("port", 6379)), "primary")]
    return [(kwargs.get("path", "?"), 0, "primary")]


def error_text(exc: BaseException) -> str:
    """A redis-py error as one short line for the operator. (MasterNotFoundError lists the repr
    of every sentinel client it tried: the line names the master and says none answered.)"""
    text = str(exc)
    sentinel = sys.modules.get("redis.sentinel")  # not loaded: nobody asked a sentinel
    if sentinel is not None and isinstance(exc, sentinel.MasterNotFoundError) and " : " in text:
        return text.split(" : ", 1)[0] + ": no sentinel in the URL answered"
    if isinstance(exc, rexc.ClusterCrossSlotError):
        return ("CROSSSLOT: keys in one command or script hash to different slots "
                "(on Redis Cluster they must share one: a {hash tag})")
    if isinstance(exc, RedisClusterException):
        return _first_line(exc)
    return text


# -- the hot path's own connection ------------------------------------------------------------
SPIN = 100e-6  # how long a `spin` call polls for Redis's reply before it blocks (`_await_reply`)
SPIN_MISSES = 3  # replies in a row slower than SPIN that turn the polling off...
SPIN_BACKOFF = 100  # ...for this many calls


# Replies that mean "not now": the server cannot write (maxmemory with noeviction, a replica
# after a failover, a script running too long, a cluster slot moving), but will again.
_NOT_NOW = (rexc.OutOfMemoryError, rexc.ReadOnlyError, rexc.TryAgainError,
            rexc.ClusterDownError)
_NOT_NOW_PREFIXES = ("BUSY", "NOREPLICAS", "MASTERDOWN", "LOADING", "UNBLOCKED")


def refused_for_now(exc: BaseException) -> bool:
    return isinstance(exc, _NOT_NOW) or (isinstance(exc, rexc.ResponseError)
                                         and str(exc).startswith(_NOT_NOW_PREFIXES))


def subscriber(client):
    """A pub/sub connection of its own (`subscribe`, `get_message`, `close`, `connection`):
    qdeploy's `resp.Subscriber` on a plain server, redis-py's PubSub elsewhere."""
    own = _own(client)
    if own is None:
        return client.pubsub(ignore_subscribe_messages=False)
    return resp.Subscriber(resp.Connection(**own))


def _raise_first(replies: list, raise_on_error: bool) -> list:
    """A pipeline's replies, after raising the first error among them (when asked to)."""
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, rexc.ResponseError):
                raise reply
    return replies


def _own(client) -> dict | None:
    """`resp.Connection`'s arguments for a client qdeploy talks to itself; None for redis-py's."""
    return client.own_connection() if isinstance(client, LazyClient) else None


def _plain_pool(client) -> bool:
    import redis

    return type(client.connection_pool) is redis.ConnectionPool


class Script:
    """A Lua script for a hot path: EVALSHA, and EVAL where the server lost its script cache
    (`HotPath.evalsha`); called as redis-py's Script is, `script(keys=[...], args=[...])`."""

    __slots__ = ("hot", "script", "sha")

    def __init__(self, hot: HotPath, source: str):
        self.hot, self.script = hot, source
        self.sha = sha1(source.encode()).hexdigest()

    def __call__(self, keys=(), args=()):
        return self.hot.evalsha(self, len(keys), *keys, *args)


def hot_path(client, wait: tuple[int, int] | None = None) -> HotPath:
    """The hot path for a client: `ClusterHotPath` for Redis Cluster, `HotPath` otherwise."""
    return ClusterHotPath(client, wait) if is_cluster(client) else HotPath(client, wait)


WAIT_WARN_EVERY = 60.0  # seconds between two log lines about acks that were not replicated in time


class HotPath:
    """Per-thread connections of one client, kept out of its pool: qdeploy's own
    (`resp.Connection`) over a `LazyClient` of a plain server, redis-py's otherwise (TLS; a
    redis-py client given by the caller). Replies are raw RESP2 as redis-py's connections give
    them, except through Sentinel (not `direct`), where a command goes through the client.

    `wait` = (replicas, timeout ms): a command sent with `durable=` is followed by `WAIT replicas
    timeout` in the same round trip (one write of both, two replies). `durable="raise"` (a
    publish) raises NotReplicated when fewer replicas confirmed it; `durable="warn"` (an ack)
    counts it in `unreplicated` and logs once a minute."""

    def __new__(cls, client, wait: tuple[int, int] | None = None):
        """A cluster client gets the cluster's hot path, whoever builds one."""
        return super().__new__(ClusterHotPath if cls is HotPath and is_cluster(client) else cls)

    def __init__(self, client: Client | LazyClient, wait: tuple[int, int] | None = None):
        self.client = client
        self.wait = wait
        self.unreplicated = 0  # durable="warn" writes fewer replicas than asked confirmed in time
        self._warned_at = 0.0
        self._own = _own(client)
        # A plain pool's connections all go to one server; others (Sentinel) route per command.
        self.direct = self._own is not None or _plain_pool(client)
        self._local = threading.local()  # per thread: its connection, and the pid that made it
        self._spin_misses = self._spin_backoff = 0
        self._for_child: list = []  # unconnected connections for the next child (`prepare_fork`)
        self._for_child_by = 0  # ...and the pid that made them, which must not use them
        self._templates: list = []  # never connected here: each child uses its own copy

    def command(self, *args, spin: bool = False, durable: str = ""):
        """One command on this thread's connection; `spin`: the reply is expected at once;
        `durable`: see the class."""
        waits = self.wait if durable else None
        if not self.direct and waits is None:
            return self.client.execute_command(*args)
        packed = [pack(args) + pack(("WAIT", *waits)) if waits else pack(args)]

        def once(conn):
            conn.send_packed_command(packed)
            if spin:
                self._await_reply(conn)
            return self._read(conn, waits, durable)
        return self._round_trip(once) if self.direct else self._pooled(once)

    def _pooled(self, once):
        """`once(conn)` on a connection of the client's own pool (Sentinel's, which follows the
        master), held for the command and its WAIT: WAIT counts the writes of its connection."""
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            return once(conn)
        except rexc.ResponseError:
            raise
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _read(self, conn, waits, durable: str):
        """The reply of one command (and of the WAIT sent after it: read even when the command
        failed, so the connection stays in step)."""
        if waits is None:
            return conn.read_response()
        try:
            reply = conn.read_response()
        except rexc.ResponseError as exc:
            conn.read_response()
            raise exc from None
        self._check_replicas(conn.read_response(), waits, durable)
        return reply

    def _check_replicas(self, acked, waits, durable: str) -> None:
        if isinstance(acked, Exception) or int(acked) >= waits[0]:
            return
        what = f"only {int(acked)} of {waits[0]} replicas confirmed it within {waits[1]} ms"
        if durable == "raise":
            raise NotReplicated(f"written to the primary, but {what}: lost if the primary fails before replicating it")
        self.unreplicated += 1
        if time.monotonic() >= self._warned_at + WAIT_WARN_EVERY:
            self._warned_at = time.monotonic()
            log.warning("an ack was applied, but %s (%d such writes so far)", what, self.unreplicated)

    def evalsha(self, script, *args, spin: bool = False, durable: str = ""):
        """EVALSHA a redis-py `Script`; a restarted Redis that lost its script cache gets EVAL on
        the same connection, which caches the script there again."""
        try:
            return self.command("EVALSHA", script.sha, *args, spin=spin, durable=durable)
        except rexc.NoScriptError:
            return self.command("EVAL", script.script, *args, spin=spin, durable=durable)

    def transaction(self, commands: list[tuple], durable: str = "") -> list:
        """MULTI, `commands`, EXEC in one round trip; raises the first error a command got."""
        waits = self.wait if durable else None
        if not self.direct and waits is None:
            pipe = self.client.pipeline(transaction=True)
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()
        once = lambda conn: self._multi(conn, commands, waits, durable)  # noqa: E731
        return self._round_trip(once) if self.direct else self._pooled(once)

    def scan(self, match: str, count: int = 1000) -> Iterator[bytes]:
        """Every key matching `match`: SCAN, a page per round trip (a key may come twice, as
        SCAN may return it twice)."""
        cursor = 0
        while True:
            reply = self.command("SCAN", cursor, "MATCH", match, "COUNT", count)
            cursor = int(reply[0])  # Sentinel's client parses the reply: (int, list) there
            yield from reply[1]
            if cursor == 0:
                return

    def pipeline(self, commands: list[tuple], raise_on_error: bool = True) -> list:
        """`commands` in one round trip, not atomic (the rest run when one fails): their replies;
        the first error reply is raised, or with `raise_on_error=False` returned in its place."""
        if not commands:
            return []
        if not self.direct:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute(raise_on_error=raise_on_error)

        def once(conn):
            conn.send_packed_command([b"".join(map(pack, commands))])
            out: list = []
            for _ in commands:
                try:
                    out.append(conn.read_response())
                except rexc.ResponseError as exc:
                    out.append(exc)
            return out
        return _raise_first(self._round_trip(once), raise_on_error)

    def _multi(self, conn, commands: list[tuple], waits, durable: str):
        tail = [("WAIT", *waits)] if waits else []
        conn.send_packed_command([b"".join(map(pack, [("MULTI",), *commands, ("EXEC",), *tail]))])
        refused = []
        for _ in range(len(commands) + 1):  # +OK for MULTI, +QUEUED (or an error) per command
            try:
                conn.read_response(disable_decoding=True)
            except rexc.ResponseError as exc:
                refused.append(exc)
        try:
            result = conn.read_response()
        except rexc.ResponseError as exc:  # EXECABORT: a command was refused, nothing ran
            if waits:
                conn.read_response()
            raise (refused or [exc])[0] from None
        if waits:
            self._check_replicas(conn.read_response(), waits, durable)
        for reply in result or ():  # errors at run time (WRONGTYPE...) come inside EXEC's reply
            if isinstance(reply, Exception):
                raise reply
        return result

    def _await_reply(self, conn) -> None:
        """Poll for the reply for up to SPIN before `read_response` blocks. A blocked thread
        lets its CPU go idle, and waking an idle vCPU costs ~60 µs on the VMs measured here:
        more than a local Redis takes to answer, and more CPU than the polling (a `delay` went
        from 6.8k/s to 14k/s, using 15 % less CPU per call). Replies that keep taking longer (a
        remote Redis) turn the polling off for the next SPIN_BACKOFF calls."""
        if self._spin_backoff:
            self._spin_backoff -= 1
            return
        sock = socket_of(conn)
        if sock is None:  # a redis-py that does not expose it: just block
            return
        deadline = time.perf_counter() + SPIN
        while not select.select((sock,), (), (), 0)[0]:
            if time.perf_counter() >= deadline:
                self._spin_misses += 1
                if self._spin_misses >= SPIN_MISSES:
                    self._spin_misses, self._spin_backoff = 0, SPIN_BACKOFF
                return
        self._spin_misses = 0

    def _round_trip(self, once):
        """Run `once(conn)` on this thread's connection, with the client's connection retries
        (a producer's stale connection after a Redis restart reconnects, as redis-py would;
        consumers have none and handle reconnects themselves). A connection whose state is
        unknown after an error is dropped; the next call opens a new one."""
        conn = self._connection()
        try:
            return conn.retry.call_with_retry(lambda: once(conn), lambda _error: conn.disconnect())
        except rexc.ResponseError:
            raise  # a complete error reply: the connection is still in step
        except BaseException:
            conn.disconnect()
            raise

    def _connection(self):
        """This thread's connection; a forked child takes one its parent prepared for it."""
        local, pid = self._local, os.getpid()
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != pid:
            conn = self._for_child.pop() if self._for_child and self._for_child_by != pid else self._new_connection()
            local.conn, local.pid = conn, pid
        return conn

    def _new_connection(self):
        """qdeploy's own connection, or one configured like the pool's but not counted by it:
        the pool's max_connections (100 in redis-py 8) is for its own checkouts, and a thread's
        connection is closed when the thread ends."""
        if self._own is not None:
            return resp.Connection(**self._own)
        pool = self.client.connection_pool
        return pool.connection_class(**pool.connection_kwargs)

    def open(self) -> None:
        """Connect this thread's connection now, if it can (a spare child, ahead of its first
        task); a failure is left for the first command to meet and handle."""
        if self.direct:
            try:
                self._connection().connect()
            except (rexc.ConnectionError, rexc.TimeoutError, OSError):
                pass

    def prepare_fork(self, connections: int) -> None:
        """Hand the next forked child `connections` unconnected connection objects. Building
        one of redis-py's costs ~0.4 ms, and in a child ~230 copy-on-write page faults (about
        1 ms of a recycled child's life). These are built once and never connected in this
        process, so every child gets a pristine copy of them through fork."""
        while len(self._templates) < connections:
            self._templates.append(self._new_connection())
        self._for_child, self._for_child_by = self._templates[:connections], os.getpid()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.disconnect()
            self._local.conn = None


# -- the hot path on Redis Cluster --------------------------------------------------------------
REDIRECTS = 8  # MOVED/ASK/TRYAGAIN replies one command may get before it gives up


def _routing_key(args) -> str | bytes:
    """The key a command is routed by: a script's first key, any other command's first argument."""
    name = args[0].upper() if isinstance(args[0], str) else args[0].decode().upper()
    if name in ("EVAL", "EVALSHA"):
        if int(args[2]) < 1:  # it derives its keys itself: on a cluster they may be anywhere
            raise rexc.ResponseError("CROSSSLOT a script that declares no keys cannot run on Redis Cluster "
                                      "(every key a script touches must be in KEYS, in one hash slot)")
        return args[3]
    return args[1]


class ClusterHotPath(HotPath):
    """The hot path on Redis Cluster: the same self-packed commands, on one connection per
    thread and node, each sent to the primary that serves its first key's hash slot (redis-py's
    slot table, `RedisCluster.nodes_manager`). Replies that say the command did not run are
    followed here: MOVED (a slot moved, a replica was promoted) patches the slot table and sends
    the command to the node named; ASK sends it once more to the importing node after ASKING;
    TRYAGAIN waits 50 ms. A connection error drops the connection and marks the slot table for a
    refresh (CLUSTER SLOTS from any live node) before the next command; the error goes to the
    caller, as on one server (a consumer treats it as a lost reply), unless the client has
    retries (a producer's), then the command goes again on the refreshed table."""

    def __init__(self, client, wait: tuple[int, int] | None = None):  # no super(): no pool here
        self.client: Any = client
        self.wait = wait
        self.unreplicated, self._warned_at = 0, 0.0
        self.direct = True
        self._local = threading.local()
        self._spin_misses = self._spin_backoff = 0
        self._stale = False
        self._retries = client.retry.get_retries()
        self.redirected = {"moved": 0, "ask": 0, "tryagain": 0, "refresh": 0}  # replies followed, tables refreshed
        self._for_child, self._for_child_by, self._templates = [], 0, []

    def command(self, *args, spin: bool = False, durable: str = "", key=None):
        waits = self.wait if durable else None
        packed = [pack(args) + pack(("WAIT", *waits)) if waits else pack(args)]

        def once(conn):
            conn.send_packed_command(packed)
            if spin:
                self._await_reply(conn)
            return self._read(conn, waits, durable)
        return self._routed(_routing_key(args) if key is None else key, once)

    def transaction(self, commands: list[tuple], durable: str = "") -> list:
        """One MULTI/EXEC per hash slot, in the order the slots first appear: atomic per slot
        (a queue's bodies and ids), not across slots."""
        waits = self.wait if durable else None
        groups: dict[int, list[tuple]] = {}
        for command in commands:
            groups.setdefault(slot_of(command[1]), []).append(command)
        out: list = []
        for group in groups.values():
            out += self._routed(group[0][1], lambda conn, g=group: self._multi(conn, g, waits, durable), multi=True)
        return out

    def pipeline(self, commands: list[tuple], raise_on_error: bool = True) -> list:
        """Each command to its own slot's node, one after another (not one round trip)."""
        out: list = []
        for command in commands:
            try:
                out.append(self.command(*command))
            except rexc.ResponseError as exc:
                out.append(exc)
        return _raise_first(out, raise_on_error)

    def _routed(self, key, once, multi: bool = False):
        slot = slot_of(key)
        node, asking, failures = None, False, 0
        for _ in range(REDIRECTS):
            if self._stale:
                self._refresh()
            target = node or self._node_for(slot)
            conn = self._connection_to(target)
            try:
                if asking:
                    conn.send_packed_command([pack(("ASKING",))])
                    conn.read_response()
                return once(conn)
            except MovedError as exc:
                self.redirected["moved"] += 1
                self.client.nodes_manager.move_slot(exc)
                node, asking = None, False
            except AskError as exc:
                self.redirected["ask"] += 1
                if multi:  # a slot being migrated: its keys move one by one; wait for them
                    time.sleep(0.05)
                    node, asking = None, False
                else:
                    node, asking = self.client.get_node(host=exc.host, port=exc.port), True
            except TryAgainError:
                self.redirected["tryagain"] += 1
                time.sleep(0.05)
                node, asking = None, False
            except rexc.ResponseError:
                raise  # a complete error reply: the connection is in step
            except (rexc.ConnectionError, rexc.TimeoutError, OSError):
                conn.disconnect()
                self._stale = True
                failures += 1
                if failures > self._retries:
                    raise
                time.sleep(min(0.05 * 2 ** failures, 0.5))
                node, asking = None, False
            except BaseException:
                conn.disconnect()
                raise
        raise rexc.ClusterDownError(f"slot {slot}: still redirected after {REDIRECTS} tries")

    def _node_for(self, slot: int):
        try:
            return self.client.nodes_manager.get_node_from_slot(slot)
        except RedisClusterException:  # SlotNotCoveredError: mid-failover; the loops wait it out
            self._stale = True
            raise rexc.ClusterDownError(f"slot {slot} is not served by any node now") from None

    def _refresh(self) -> None:
        try:
            self.client.nodes_manager.initialize()
        except RedisClusterException as exc:
            raise rexc.ConnectionError(f"no node of the cluster answered ({_first_line(exc)})") from None
        self._stale = False
        self.redirected["refresh"] += 1

    def _connection_to(self, node):
        local, pid = self._local, os.getpid()
        conns = getattr(local, "conns", None)
        if conns is None or local.pid != pid:  # a forked child never uses its parent's sockets
            conns = local.conns = {}
            local.pid = pid
        conn = conns.get(node.name)
        if conn is None:
            pool = self.client.get_redis_connection(node).connection_pool
            conn = conns[node.name] = pool.connection_class(**pool.connection_kwargs)
        return conn

    def open(self) -> None:
        """Nothing to do ahead: which nodes a consumer needs depends on its queues' slots."""

    def prepare_fork(self, connections: int) -> None:
        """Children open their connections (one per node they use) on first use."""

    def close(self) -> None:
        for conn in (getattr(self._local, "conns", None) or {}).values():
            conn.disconnect()
        self._local.conns = {}
