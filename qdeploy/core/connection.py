"""The only module that knows redis-py: URLs become clients here, the hot path's own connection
lives here, and every other module takes redis-py's exceptions from here.

* `connect(url)` / `client_for(BrokerURL)`: the one place a URL becomes a client, one branch per
  topology (a Redis Cluster scheme adds its branch here and its row in `urls.SCHEMES`). The URL
  grammar (every accepted form, validation, redaction) is `qdeploy.core.urls`, which needs no
  redis-py (the config validates a broker without importing it); its names are re-exported here.
* `HotPath(client)`: self-packed commands on one connection per thread, for every task's
  reserve/ack and every `delay`.
* `RedisError`, `ResponseError`, `BROKER_DOWN` (unreachable) and `refused_for_now(exc)` (the
  server cannot write now, but will): what the loops catch.

redis-py's private parts are read here and nowhere else, each in one function with a test that
fails loudly when a redis-py release moves it (tests/unit/test_connection.py): `Connection._sock`
(`socket_of`), the pool's `connection_class`/`connection_kwargs` (`HotPath._new_connection`), and
`next_health_check` (`_on_connect`).
"""

from __future__ import annotations

import inspect
import os
import select
import threading
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from qdeploy.core.urls import SCHEMES, BrokerURL, BrokerURLError, redact, redact_text

__all__ = ["BROKER_DOWN", "REDIS_PY_VERSION", "SCHEMES", "BrokerURL", "BrokerURLError", "Client", "HotPath",
           "RedisError", "ResponseError", "client_for", "connect", "error_text", "pack", "redact",
           "redact_text", "refused_for_now", "socket_of", "text"]

Client = redis.Redis
RedisError = redis.RedisError  # anything a Redis call can raise
ResponseError = redis.ResponseError  # the server answered with an error
BROKER_DOWN = (redis.ConnectionError, redis.TimeoutError)  # unreachable: reconnect
REDIS_PY_VERSION = getattr(redis, "__version__", "?")


def _quiet_handshake() -> dict:
    """redis-py >= 7 sends CLIENT SETINFO twice and CLIENT MAINT_NOTIFICATIONS after connecting,
    and redis-py 8 a HELLO 3: four round trips each time a recycled child connects. Skip them
    where the client allows. RESP2 (the server's default, redis-py < 8's too) also keeps every
    reply the same shape whatever the redis-py version."""
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


QUIET_HANDSHAKE = _quiet_handshake()


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


def fill_stdio() -> None:
    """Open /dev/null on each of fd 0, 1 and 2 that is closed, so no socket or file lands there."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            else:
                os.set_inheritable(fd, True)


def connect(url: str | BrokerURL, *, retries: int = 2, socket_timeout: float = 10.0,
            connect_timeout: float = 5.0, client_name: str | None = None) -> redis.Redis:
    """A client for `url` (BrokerURLError if it is not a broker URL). Nothing is sent yet: call
    `.ping()` to check reachability.

    `retries` is how often redis-py itself retries a command after a connection error; the
    consumer uses 0 and handles reconnects (and their at-least-once consequences) itself.
    """
    return client_for(BrokerURL.parse(url), retries=retries, socket_timeout=socket_timeout,
                      connect_timeout=connect_timeout, client_name=client_name)


def client_for(url: BrokerURL, *, retries: int = 2, socket_timeout: float = 10.0,
               connect_timeout: float = 5.0, client_name: str | None = None) -> redis.Redis:
    """The redis-py client of a parsed URL. Timeouts in the URL's query win over the arguments;
    TLS options apply to the sentinels and the master alike."""
    opts = url.options
    timeouts = {"socket_timeout": opts.get("socket_timeout", socket_timeout),
                "socket_connect_timeout": opts.get("socket_connect_timeout", connect_timeout)}
    tls = {**{k: v for k, v in opts.items() if k.startswith("ssl_")}, "ssl": True} if url.tls else {}
    common = {**timeouts, **tls, "db": url.db, "username": url.username, "password": url.password,
              "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries), "client_name": client_name,
              "health_check_interval": 30, "redis_connect_func": _on_connect, **QUIET_HANDSHAKE}
    if url.topology == "sentinel":
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
    raise BrokerURLError(f"{url.scheme}:// has no client yet", url.url)


def error_text(exc: BaseException) -> str:
    """A redis-py error as one short line for the operator. (MasterNotFoundError lists the repr
    of every sentinel client it tried: the line names the master and says none answered.)"""
    text = str(exc)
    if isinstance(exc, MasterNotFoundError) and " : " in text:
        return text.split(" : ", 1)[0] + ": no sentinel in the URL answered"
    return text


# -- the hot path's own connection ------------------------------------------------------------
SPIN = 100e-6  # how long a `spin` call polls for Redis's reply before it blocks (`_await_reply`)
SPIN_MISSES = 3  # replies in a row slower than SPIN that turn the polling off...
SPIN_BACKOFF = 100  # ...for this many calls


# Replies that mean "not now": the server cannot write (maxmemory with noeviction, a replica
# after a failover, a script running too long, a cluster slot moving), but will again.
_NOT_NOW = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError,
            redis.exceptions.ClusterDownError)
_NOT_NOW_PREFIXES = ("BUSY", "NOREPLICAS", "MASTERDOWN", "LOADING", "UNBLOCKED")


def refused_for_now(exc: BaseException) -> bool:
    return isinstance(exc, _NOT_NOW) or (isinstance(exc, redis.ResponseError)
                                         and str(exc).startswith(_NOT_NOW_PREFIXES))


def pack(args) -> bytes:
    """One command in the Redis protocol (RESP): what redis-py's `Connection.pack_command` does,
    for the argument types the hot paths send (bytes, str, int, float), at a fraction of its cost."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            arg = repr(arg).encode()
        elif not isinstance(arg, (bytes, bytearray, memoryview)):
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


class HotPath:
    """Per-thread connections of one client, kept out of its pool."""

    def __init__(self, client: redis.Redis):
        self.client = client
        # A plain pool's connections all go to one server; others (Sentinel) route per command.
        self.direct = type(client.connection_pool) is redis.ConnectionPool
        self._local = threading.local()  # per thread: its connection, and the pid that made it
        self._spin_misses = self._spin_backoff = 0
        self._for_child: list = []  # unconnected connections for the next child (`prepare_fork`)
        self._for_child_by = 0  # ...and the pid that made them, which must not use them
        self._templates: list = []  # never connected here: each child uses its own copy

    def command(self, *args, spin: bool = False):
        """One command on this thread's connection; `spin`: the reply is expected at once."""
        if not self.direct:
            return self.client.execute_command(*args)
        packed = [pack(args)]

        def once(conn):
            conn.send_packed_command(packed)
            if spin:
                self._await_reply(conn)
            return conn.read_response()
        return self._round_trip(once)

    def evalsha(self, script, *args, spin: bool = False):
        """EVALSHA a redis-py `Script`; a restarted Redis that lost its script cache gets EVAL on
        the same connection, which caches the script there again."""
        try:
            return self.command("EVALSHA", script.sha, *args, spin=spin)
        except redis.exceptions.NoScriptError:
            return self.command("EVAL", script.script, *args, spin=spin)

    def transaction(self, commands: list[tuple]) -> list:
        """MULTI, `commands`, EXEC in one round trip; raises the first error a command got."""
        if not self.direct:
            pipe = self.client.pipeline(transaction=True)
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()
        packed = [b"".join(map(pack, [("MULTI",), *commands, ("EXEC",)]))]

        def once(conn):
            conn.send_packed_command(packed)
            refused = []
            for _ in range(len(commands) + 1):  # +OK for MULTI, +QUEUED (or an error) per command
                try:
                    conn.read_response(disable_decoding=True)
                except redis.ResponseError as exc:
                    refused.append(exc)
            try:
                result = conn.read_response()
            except redis.ResponseError as exc:  # EXECABORT: a command was refused, nothing ran
                raise (refused or [exc])[0] from None
            for reply in result or ():  # errors at run time (WRONGTYPE...) come inside EXEC's reply
                if isinstance(reply, Exception):
                    raise reply
            return result
        return self._round_trip(once)

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
        except redis.ResponseError:
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
        """A connection configured like the pool's, but not counted by it: the pool's
        max_connections (100 in redis-py 8) is for its own checkouts, and a thread's connection
        is closed when the thread ends."""
        pool = self.client.connection_pool
        return pool.connection_class(**pool.connection_kwargs)

    def open(self) -> None:
        """Connect this thread's connection now, if it can (a spare child, ahead of its first
        task); a failure is left for the first command to meet and handle."""
        if self.direct:
            try:
                self._connection().connect()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass

    def prepare_fork(self, connections: int) -> None:
        """Hand the next forked child `connections` unconnected connection objects. Building
        one costs redis-py ~0.4 ms, and in a child ~230 copy-on-write page faults (about 1 ms
        of a recycled child's life). These are built once and never connected in this process,
        so every child gets a pristine copy of them through fork."""
        while len(self._templates) < connections:
            self._templates.append(self._new_connection())
        self._for_child, self._for_child_by = self._templates[:connections], os.getpid()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.disconnect()
            self._local.conn = None
