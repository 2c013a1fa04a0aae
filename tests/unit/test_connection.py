"""redis-py's side of connection.py (no server needed). Broker URLs (the one parser, redaction,
the clients built from them) are in tests/unit/test_broker_url.py; real servers in
tests/integration/test_urls.py."""

import enum

import pytest


class _Name(str, enum.Enum):
    A = "the-value"


class _Count(int):
    pass


@pytest.mark.parametrize("args", [
    ("PING",),
    ("EVALSHA", "abc", 2, b"k1", "k\u00e9y", b"", 0, -7, 0.25, 1e-05, b"\x00\r\n\xff"),
    ("BLMOVE", "q", "i", "RIGHT", "LEFT", 0.1),
    ("SET", _Name.A, _Count(7), bytearray(b"ab"), memoryview(b"cd")),  # subclasses and buffers too
    ("HSET", "h", "caf\u00e9", b"\xff", "x" * 300, 12345678901234567890, -0.0, "", "\r\n", "\u2028"),  # runs of each
])
def test_pack_is_what_redis_py_sends(args):
    """The hot paths pack their own commands; the bytes must be exactly redis-py's."""
    from redis.connection import Connection

    from qdeploy.core.connection import pack

    assert pack(args) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("bad", [None, True, object(), ["list"]])
def test_pack_refuses_what_redis_cannot_store(bad):
    from qdeploy.core.connection import pack

    with pytest.raises(TypeError, match="cannot send"):
        pack(("SET", "k", bad))


# -- the Redis edge: connection.py is the only module that knows redis-py ----------------------
def _sources():
    from pathlib import Path

    import qdeploy

    root = Path(qdeploy.__file__).parent
    return [(p.relative_to(root).as_posix(), p.read_text()) for p in sorted(root.rglob("*.py"))]


def test_no_module_but_connection_imports_redis_py_or_touches_its_private_attributes():
    import ast

    # _imports only finds redis' spec, never imports it; resp (qdeploy's own connection) takes
    # redis-py's exception classes and Retry, and is the one other module with a socket
    allowed = {"core/connection.py", "core/resp.py", "_imports.py"}
    offenders = []
    for path, text in _sources():
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "redis" for a in node.names):
                offenders.append(f"{path}:{node.lineno} import redis")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "redis":
                offenders.append(f"{path}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Attribute) and node.attr in (
                    "_sock", "connection_kwargs", "connection_class", "next_health_check", "send_packed_command") \
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self"):  # a class's own _sock
                offenders.append(f"{path}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "from_url", "master_for", "Redis", "Sentinel", "ConnectionPool"):
                offenders.append(f"{path}:{node.lineno} {node.func.attr}()")
    assert offenders == [], "redis-py is connection.py's business:\n" + "\n".join(offenders)


def test_the_redis_py_internals_connection_py_relies_on_are_still_there():
    """Each private part of redis-py the hot path reads, checked on the installed release: when a
    release moves one, this fails and says which, instead of every delay() breaking in production."""
    import redis

    from qdeploy.core import connection

    client = connection.client_for(connection.BrokerURL.parse("redis://127.0.0.1:1/0"))  # redis-py's own
    pool = client.connection_pool
    assert type(pool) is redis.ConnectionPool, "HotPath.direct: a plain client's pool class"
    assert hasattr(pool, "connection_class") and isinstance(pool.connection_kwargs, dict), \
        "HotPath._new_connection: ConnectionPool.connection_class / connection_kwargs"
    conn = connection.HotPath(client)._new_connection()
    assert hasattr(conn, "_sock") and conn._sock is None, "socket_of: Connection._sock"
    for name in ("send_packed_command", "read_response", "connect", "disconnect", "on_connect", "retry",
                 "health_check_interval"):
        assert hasattr(conn, name), f"Connection.{name}"
    assert hasattr(conn, "next_health_check"), "_on_connect: Connection.next_health_check"
    assert conn.redis_connect_func is connection._on_connect, "the connect hook reaches the hot path's connections"
    import inspect

    assert "disable_decoding" in inspect.signature(conn.read_response).parameters, "HotPath.transaction"
