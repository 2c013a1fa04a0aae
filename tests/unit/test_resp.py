"""qdeploy's own RESP2 connection (qdeploy/core/resp.py) against a fake server that sends
exactly the bytes each test gives it: every reply type, replies cut at every byte, and what a
broken or hostile server could send. The real-Redis side is tests/integration/test_resp.py."""

import socket
import threading

import pytest
from redis import exceptions as rexc

from qdeploy.core import resp


class FakeServer:
    """Accepts one connection; answers each request with the next scripted reply, written in
    the given chunks (a list of byte strings, sent with a pause between them)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.replies: list[list[bytes]] = []
        self.received = b""
        self.peer: socket.socket | None = None
        self.close_after: int | None = None  # close the connection after this many replies
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self._answer()
        except OSError:  # the test closed it
            pass

    def _answer(self):
        self.peer, _ = self.listener.accept()
        sent = 0
        while True:
            data = self.peer.recv(65536)
            if not data:
                return
            self.received += data
            while self.replies and self.received.count(b"\r\n") and sent < len(self.replies):
                chunks = self.replies[sent]
                sent += 1
                for chunk in chunks:
                    self.peer.sendall(chunk)
                    threading.Event().wait(0.002)
                if self.close_after is not None and sent >= self.close_after:
                    self.peer.close()
                    return
                break

    def close(self):
        self.listener.close()
        if self.peer is not None:
            self.peer.close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def ask(server, *replies: bytes | list[bytes], timeout: float = 2.0):
    """A Connection to `server`, the replies it will send, and the reply to one PING."""
    server.replies = [r if isinstance(r, list) else [r] for r in replies]
    conn = resp.Connection(host="127.0.0.1", port=server.port, socket_timeout=timeout, retries=0)
    conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n")
    return conn


@pytest.mark.parametrize("raw, expected", [
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b":42\r\n", 42),
    (b":-7\r\n", -7),
    (b"+OK\r\n", b"OK"),
    (b"*0\r\n", []),
    (b"*-1\r\n", None),
    (b"*3\r\n$1\r\na\r\n:2\r\n*1\r\n$-1\r\n", [b"a", 2, [None]]),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # CRLF inside a bulk string is data
])
def test_every_reply_type(server, raw, expected):
    assert ask(server, raw).read_response() == expected


def test_a_reply_cut_at_every_byte_parses_the_same(server):
    raw = b"*3\r\n$5\r\nhello\r\n:12\r\n$-1\r\n"
    conn = ask(server, [raw[i:i + 1] for i in range(len(raw))])
    assert conn.read_response() == [b"hello", 12, None]


def test_a_large_bulk_string_in_many_reads(server):
    body = b"x" * (3 * resp.READ_SIZE + 17)
    conn = ask(server, [b"$%d\r\n" % len(body), body[:1000], body[1000:], b"\r\n"])
    assert conn.read_response() == body


@pytest.mark.parametrize("raw, cls, text", [
    (b"-NOSCRIPT No matching script. Please use EVAL.\r\n", rexc.NoScriptError, "No matching script. Please use EVAL."),
    (b"-OOM command not allowed when used memory > 'maxmemory'.\r\n", rexc.OutOfMemoryError, None),
    (b"-READONLY You can't write against a read only replica.\r\n", rexc.ReadOnlyError, None),
    (b"-LOADING Redis is loading the dataset in memory\r\n", rexc.BusyLoadingError, None),
    (b"-EXECABORT Transaction discarded\r\n", rexc.ExecAbortError, None),
    (b"-WRONGPASS invalid username-password pair\r\n", rexc.AuthenticationError, None),
    (b"-NOPERM this user has no permissions\r\n", rexc.NoPermissionError, None),
    (b"-ERR max number of clients reached\r\n", rexc.ConnectionError, None),
    (b"-BUSY Redis is busy running a script.\r\n", rexc.ResponseError, "BUSY Redis is busy running a script."),
    (b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", rexc.ResponseError, None),
    (b"-ERR unknown command 'FOO'\r\n", rexc.ResponseError, None),
])
def test_an_error_reply_raises_what_redis_py_raises(server, raw, cls, text):
    conn = ask(server, raw)
    with pytest.raises(rexc.RedisError) as caught:
        conn.read_response()
    assert type(caught.value) is cls
    if text is not None:
        assert str(caught.value) == text
    if not issubclass(cls, rexc.ConnectionError):
        assert conn._sock is not None  # a whole error reply: the connection is still in step


def test_an_error_inside_an_array_is_returned_in_its_place(server):
    reply = ask(server, b"*2\r\n+OK\r\n-WRONGTYPE bad kind\r\n").read_response()
    assert reply[0] == b"OK" and type(reply[1]) is rexc.ResponseError and "WRONGTYPE" in str(reply[1])


@pytest.mark.parametrize("raw", [
    b"?what\r\n",  # not a RESP type byte
    b"hello\r\n",  # a bare line (what an HTTP or a garbled server sends)
    b"$abc\r\n",
    b"$-5\r\n",
    b"$%d\r\n" % (resp.MAX_BULK + 1),  # more than Redis can send: refused before reading it
    b":1_000\r\n",  # int() would take it
    b":+5\r\n",
    b": 5\r\n",
    b":" + b"9" * 30 + b"\r\n",
    b"*-2\r\n",
    b"*x\r\n",
    b"$3\r\nabcdef\r\n",  # longer than its length
    b"*1\r\n" * (resp.MAX_DEPTH + 1) + b":1\r\n",  # nested deeper than any reply qdeploy asks for
])
def test_what_is_not_resp_drops_the_connection(server, raw):
    conn = ask(server, raw)
    with pytest.raises(rexc.InvalidResponse, match="Protocol error"):
        conn.read_response()
    assert conn._sock is None  # out of step: the next command reconnects


def test_an_endless_line_is_refused_without_reading_it_all(server, monkeypatch):
    monkeypatch.setattr(resp, "MAX_LINE", 4096)
    conn = ask(server, [b"+" + b"a" * 3000, b"a" * 3000, b"a" * 3000])
    with pytest.raises(rexc.InvalidResponse, match="a line of over"):
        conn.read_response()


def test_a_server_that_closes_mid_reply(server):
    server.close_after = 1
    conn = ask(server, b"$10\r\nabc")
    with pytest.raises(rexc.ConnectionError, match="closed by server"):
        conn.read_response()
    assert conn._sock is None


def test_a_server_that_never_answers_times_out(server):
    conn = ask(server, timeout=0.2)
    with pytest.raises(rexc.TimeoutError):
        conn.read_response()
    assert conn._sock is None


def test_nothing_listening_is_a_connection_error_naming_the_address():
    port = socket.create_server(("127.0.0.1", 0)).getsockname()[1]  # closed at once: nobody there
    conn = resp.Connection(host="127.0.0.1", port=port, retries=0)
    with pytest.raises(rexc.ConnectionError, match=f"connecting to 127.0.0.1:{port}"):
        conn.connect()


def test_a_refused_handshake_reads_every_reply_and_says_which_step(server):
    server.replies = [[b"+OK\r\n-ERR DB index is out of range\r\n"]]
    conn = resp.Connection(host="127.0.0.1", port=server.port, password="pw", db=99, retries=0)
    with pytest.raises(rexc.ConnectionError, match="SELECT refused by 127.0.0.1.*out of range"):
        conn.connect()
    assert conn._sock is None
    assert server.received == b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*2\r\n$6\r\nSELECT\r\n$2\r\n99\r\n"


def test_the_subscriber_returns_only_whole_messages(server):
    msg = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
    server.replies = [[b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n" + msg[:20]], [msg[20:] + msg]]
    sub = resp.Subscriber(resp.Connection(host="127.0.0.1", port=server.port, retries=0))
    sub.subscribe("ch")
    first = sub.get_message(timeout=1)
    assert first == {"type": "subscribe", "pattern": None, "channel": b"ch", "data": 1}
    assert sub.get_message(timeout=0.2) is None  # half a message: not handed out
    sub.connection.send_packed_command(b"*1\r\n$4\r\nPING\r\n")  # the fake server's cue for the rest
    got = [sub.get_message(timeout=1), sub.get_message(timeout=1)]
    assert got == [{"type": "message", "pattern": None, "channel": b"ch", "data": b"hello"}] * 2
    assert sub.get_message(timeout=0) is None


def test_the_subscriber_refuses_what_is_not_a_message(server):
    server.replies = [[b"$5\r\nhello\r\n"]]
    sub = resp.Subscriber(resp.Connection(host="127.0.0.1", port=server.port, retries=0))
    sub.subscribe("ch")
    with pytest.raises(rexc.InvalidResponse, match="not a pub/sub message"):
        sub.get_message(timeout=1)
    assert sub.connection._sock is None
