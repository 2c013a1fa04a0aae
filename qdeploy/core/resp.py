"""qdeploy's own connection to one Redis server: RESP2 over TCP or a unix socket.

The worker's hot path (every reserve and ack, every `delay`, the master's heartbeat, lease,
sweeps, control channel, events and task history) runs on this instead of redis-py's
`Connection`, so that a master and its children on one server never load redis-py's client
stack (~100 ms of start-up and ~14 MiB in every process; see qdeploy/_imports.py) and each round
trip parses its reply in one layer instead of four. It speaks what those callers send: commands
packed by `pack`, replies as redis-py gives them undecoded (bytes, int, None, lists,
with errors inside an EXEC reply as exception objects), and redis-py's own exception classes
(from `redis.exceptions`, which loads alone), so every `except` in the loops is unchanged.
TLS, Sentinel and Redis Cluster stay on redis-py (`connection.HotPath` picks).

Nothing a server sends is trusted: a reply that is not RESP, a line or bulk string longer than
Redis can send, or nesting deeper than any qdeploy command returns, drops the connection with
`InvalidResponse` (the stream is out of step; the next call reconnects).
"""

from __future__ import annotations

import os
import select
import socket
import time
from typing import Any

from redis import exceptions as _exc
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

RedisConnectionError = _exc.ConnectionError  # redis-py's classes: what every caller catches
RedisTimeout = _exc.TimeoutError
ResponseError = _exc.ResponseError
InvalidResponse = _exc.InvalidResponse

MAX_LINE = 1 << 20  # a status, error or integer line; Redis's longest are error texts of a few KiB
MAX_BULK = 512 << 20  # Redis's own proto-max-bulk-len default
MAX_ARRAY = 1 << 32  # elements of one array (Redis's own limit is lower)
MAX_DEPTH = 16  # arrays in arrays: qdeploy's deepest reply is 3
READ_SIZE = 65536


def _classes() -> tuple[dict[str, type], dict[str, type]]:
    """What redis-py raises for an error reply, by its first word (and, for ERR, by its text):
    the same classes, so a NOSCRIPT, an OOM or a LOADING is told apart as with redis-py."""
    e = _exc
    by_code = {"OOM": "OutOfMemoryError", "WRONGPASS": "AuthenticationError", "EXECABORT": "ExecAbortError",
               "LOADING": "BusyLoadingError", "NOSCRIPT": "NoScriptError", "READONLY": "ReadOnlyError",
               "NOAUTH": "AuthenticationError", "NOPERM": "NoPermissionError", "TRYAGAIN": "TryAgainError",
               "CLUSTERDOWN": "ClusterDownError", "CROSSSLOT": "ClusterCrossSlotError",
               "MASTERDOWN": "MasterDownError"}
    by_err = {"max number of clients reached": "ConnectionError", "invalid password": "AuthenticationError",
              "Client sent AUTH, but no password is set": "AuthenticationError",
              "AUTH <password> called without any password configured for the default user. "
              "Are you sure your configuration is correct?": "AuthenticationError"}
    pick = lambda names: {k: getattr(e, v) for k, v in names.items() if hasattr(e, v)}  # noqa: E731
    return pick(by_code), pick(by_err)


_BY_CODE, _BY_ERR = _classes()


def error_of(line: bytes) -> _exc.RedisError:
    """The exception for an error reply's line (without its leading '-'): a code redis-py knows
    is cut off the message, as redis-py does (`NOSCRIPT No matching script` -> NoScriptError('No
    matching script')); any other is a ResponseError with the whole text."""
    text = line.decode("utf-8", "replace")
    code, _, rest = text.partition(" ")
    cls = _BY_ERR.get(rest, ResponseError) if code == "ERR" else _BY_CODE.get(code)
    if cls is None:
        return ResponseError(text)
    try:
        return cls(rest, status_code=code)
    except TypeError:  # redis-py < 6: no status codes
        return cls(rest)


def pack(args) -> bytes:
    """One command in the Redis protocol (RESP): what redis-py's `Connection.pack_command` does,
    for the argument types the hot paths send (bytes, str, int, float), at a fraction of its cost.
    ASCII text and numbers are framed as text and encoded once per run of them (a history batch
    packs ~10,000 arguments, a reserve ~20); anything else is framed as bytes."""
    out: list[bytes] = []
    text = [f"*{len(args)}\r\n"]
    for arg in args:
        kind = type(arg)
        if kind is str and arg.isascii():  # one character, one byte: len() is the byte count
            text.append(f"${len(arg)}\r\n{arg}\r\n")
            continue
        if kind is int or kind is float:
            arg = repr(arg)
            text.append(f"${len(arg)}\r\n{arg}\r\n")
            continue
        if kind is bytes:
            pass
        elif isinstance(arg, str):  # not ASCII, or a subclass
            arg = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            arg = repr(arg).encode()
        elif isinstance(arg, (bytearray, memoryview)):
            arg = bytes(arg)
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        if text:
            out.append("".join(text).encode())
            text = []
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    if text:
        out.append("".join(text).encode())
    return b"".join(out)


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


class Connection:
    """One connection, opened on first use. The interface `connection.HotPath` drives, shared
    with redis-py's `Connection`: `connect`, `disconnect`, `send_packed_command`,
    `read_response`, `retry`, and the socket in `_sock` (None while not connected)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, path: str | None = None, db: int = 0,
                 username: str | None = None, password: str | None = None, client_name: str | None = None,
                 socket_timeout: float | None = 10.0, connect_timeout: float | None = 5.0, retries: int = 2):
        self.host, self.port, self.path = host, port, path
        self.db, self.username, self.password, self.client_name = db, username, password, client_name
        self.socket_timeout, self.connect_timeout = socket_timeout, connect_timeout
        self.retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._pos = 0
        self._pid = 0  # the process that connected: only it may shut the connection down

    def __repr__(self) -> str:
        return f"<qdeploy Connection {self.where}/{self.db}>"

    @property
    def where(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"

    # -- connecting ------------------------------------------------------------------------------
    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = self._open()
        if sock.fileno() <= 2:  # a task closed its stdio: fd 1 would send its print()s to Redis
            sock.close()
            fill_stdio()
            sock = self._open()
        self._sock, self._pid = sock, os.getpid()
        self._buf.clear()
        self._pos = 0
        self._handshake()

    def _open(self) -> socket.socket:
        try:
            if self.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.connect_timeout)
                    sock.connect(self.path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError:  # the socket's (socket.timeout)
            raise RedisTimeout(f"Timeout connecting to {self.where}") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error {exc.errno} connecting to {self.where}. {exc.strerror or exc}.") from None
        sock.settimeout(self.socket_timeout)
        return sock

    def _handshake(self) -> None:
        """AUTH, SELECT and CLIENT SETNAME in one round trip (nothing when none is needed)."""
        steps: list[tuple] = []
        if self.password is not None or self.username is not None:
            steps.append(("AUTH", self.username, self.password or "") if self.username else ("AUTH", self.password))
        if self.db:
            steps.append(("SELECT", self.db))
        if self.client_name:
            steps.append(("CLIENT", "SETNAME", self.client_name))
        if not steps:
            return
        self.send_packed_command(b"".join(pack(step) for step in steps))
        failed: tuple[str, Exception] | None = None
        for step in steps:
            try:
                self.read_response()
            except _exc.RedisError as exc:  # read every reply, then say what the first refusal was
                if self._sock is None:  # not a reply: the connection is gone
                    raise
                failed = failed or (step[0], exc)
        if failed is not None:
            self.disconnect()
            what, refusal = failed
            if isinstance(refusal, RedisConnectionError):  # AuthenticationError: a ConnectionError, as in redis-py
                raise refusal
            raise RedisConnectionError(f"{what} refused by {self.where}: {refusal}")

    def disconnect(self) -> None:
        sock, self._sock = self._sock, None
        self._buf.clear()
        self._pos = 0
        if sock is None:
            return
        try:
            if self._pid == os.getpid():  # a forked child's copy must not end its parent's connection
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    # -- commands --------------------------------------------------------------------------------
    def send_packed_command(self, command: bytes | list[bytes], check_health: bool = True) -> None:
        if self._sock is None:
            self.connect()
        sock = self._sock
        assert sock is not None
        try:
            sock.sendall(command if isinstance(command, bytes) else b"".join(command))
        except TimeoutError:  # the socket's (socket.timeout)
            self.disconnect()
            raise RedisTimeout("Timeout writing to socket") from None
        except OSError as exc:
            self.disconnect()
            raise RedisConnectionError(f"Error {exc.errno} while writing to socket. {exc.strerror or exc}.") from None

    def read_response(self, disable_decoding: bool = False) -> Any:
        """The next reply; an error reply is raised (one inside an array is returned in its place,
        as redis-py does)."""
        self._compact()
        return self._read_one()

    def _compact(self) -> None:
        """Between two replies: drop what was parsed (all of it, or a large head of it)."""
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > READ_SIZE:
            del self._buf[:self._pos]
            self._pos = 0

    def _read_one(self) -> Any:
        if self._sock is None:
            raise RedisConnectionError("Connection closed.")
        try:
            reply = self._reply(0)
        except BlockingIOError:  # a non-blocking read (Subscriber): the reply is not all here yet
            raise
        except TimeoutError:  # the socket's (socket.timeout)
            self.disconnect()
            raise RedisTimeout("Timeout reading from socket") from None
        except (InvalidResponse, RedisConnectionError):
            self.disconnect()
            raise
        except OSError as exc:
            self.disconnect()
            raise RedisConnectionError(f"Error while reading from socket: {exc.strerror or exc}") from None
        if isinstance(reply, _exc.RedisError):  # an error reply (AUTH's are ConnectionErrors)
            raise reply
        return reply

    # -- the parser ------------------------------------------------------------------------------
    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(READ_SIZE)
        if not chunk:
            raise RedisConnectionError("Connection closed by server.")
        self._buf += chunk  # never compacted mid-reply: a Subscriber may rewind to its start

    def _line_end(self) -> int:
        """Where the line at `_pos` ends (its CR), reading more until it is all here."""
        end = self._buf.find(b"\r\n", self._pos)
        while end < 0:
            if len(self._buf) - self._pos > MAX_LINE:
                raise InvalidResponse(f"Protocol error: a line of over {MAX_LINE} bytes")
            seen = len(self._buf)
            self._fill()
            end = self._buf.find(b"\r\n", max(self._pos, seen - 1))
        return end

    def _reply(self, depth: int) -> Any:
        end = self._line_end()
        buf, pos = self._buf, self._pos
        kind, rest = buf[pos], buf[pos + 1:end]
        self._pos = end + 2
        if kind == 36:  # $: a bulk string
            size = int(rest) if rest.isdigit() and len(rest) < 10 else _length(rest, MAX_BULK)
            if size < 0:
                return None
            if size > MAX_BULK:
                raise InvalidResponse(f"Protocol error: a length of {size}")
            start, stop = end + 2, end + 2 + size
            while len(self._buf) < stop + 2:
                self._fill()
            buf = self._buf
            if buf[stop:stop + 2] != b"\r\n":
                raise InvalidResponse("Protocol error: a bulk string longer than its length")
            self._pos = stop + 2
            return bytes(buf[start:stop])
        if kind == 42:  # *: an array
            size = int(rest) if rest.isdigit() and len(rest) < 10 else _length(rest, MAX_ARRAY)
            if size < 0:
                return None
            if depth >= MAX_DEPTH:
                raise InvalidResponse(f"Protocol error: arrays nested over {MAX_DEPTH} deep")
            return [self._reply(depth + 1) for _ in range(size)]
        if kind == 58:  # :
            return int(rest) if rest.isdigit() and len(rest) < 19 else _length(rest, None)
        if kind == 43:  # +
            return bytes(rest)
        if kind == 45:  # -
            return error_of(bytes(rest))
        raise InvalidResponse(f"Protocol error: unexpected reply {bytes(buf[pos:min(end, pos + 40)])!r}")


def _length(text: bytes | bytearray, most: int | None) -> int:
    """An integer reply, or a length (-1: nil; most: the largest accepted): the slow path, for
    negative and long numbers and for what is not a number."""
    digits = text[1:] if text[:1] == b"-" else text
    if not digits.isdigit() or len(digits) > 20:
        raise InvalidResponse(f"Protocol error: not a number: {bytes(text[:40])!r}")
    value = int(text)
    if most is not None and (value < -1 or value > most):
        raise InvalidResponse(f"Protocol error: a length of {value}")
    return value


_PARTIAL = object()


class Subscriber:
    """A pub/sub connection (the master's control channel): what it reads of redis-py's PubSub,
    `subscribe`, `get_message(timeout=0)` (a dict with type, channel, data; None when nothing
    complete is there), `close` and `connection`. It never reconnects by itself: a lost
    connection raises, and its owner subscribes again."""

    def __init__(self, connection: Connection):
        self.connection = connection

    def subscribe(self, *channels: str) -> None:
        self.connection.send_packed_command(pack(("SUBSCRIBE", *channels)))

    def get_message(self, timeout: float = 0) -> dict | None:
        conn = self.connection
        deadline = time.monotonic() + timeout
        while (reply := self._whole()) is _PARTIAL:
            left = deadline - time.monotonic()
            if left <= 0 or conn._sock is None or not select.select((conn._sock,), (), (), left)[0]:
                return None
        if not isinstance(reply, list) or len(reply) != 3:
            conn.disconnect()
            raise InvalidResponse(f"Protocol error: not a pub/sub message: {str(reply)[:60]}")
        kind = reply[0].decode("ascii", "replace") if isinstance(reply[0], bytes) else str(reply[0])
        return {"type": kind, "pattern": None, "channel": reply[1], "data": reply[2]}

    def _whole(self) -> Any:
        """The next reply if all of it is buffered or readable now, else _PARTIAL (and what was
        read of it stays buffered for the next call)."""
        conn = self.connection
        if conn._sock is None:
            raise RedisConnectionError("Connection closed.")
        conn._compact()
        start = conn._pos
        conn._sock.setblocking(False)
        try:
            return conn._read_one()
        except BlockingIOError:
            conn._pos = start
            return _PARTIAL
        finally:
            if conn._sock is not None:
                conn._sock.settimeout(conn.socket_timeout)

    def close(self) -> None:
        self.connection.disconnect()
