"""Broker URL parsing (no server needed); real servers are in tests/integration/test_urls.py."""

import pytest

from qdeploy.core.connection import BrokerURLError, connect, parse_sentinel_url, redact


def test_sentinel_url_full_syntax():
    spec = parse_sentinel_url("sentinel://app:s3cret@h1:26380,h2,[::1]:26381/3?master=mymaster"
                              "&sentinel_password=sp&sentinel_username=su")
    assert spec.hosts == [("h1", 26380), ("h2", 26379), ("::1", 26381)]
    assert (spec.master, spec.db, spec.username, spec.password) == ("mymaster", 3, "app", "s3cret")
    assert (spec.sentinel_username, spec.sentinel_password, spec.ssl) == ("su", "sp", False)
    assert parse_sentinel_url("sentinels://h/0?master=m").ssl is True


@pytest.mark.parametrize("url, reason", [
    ("sentinel://h1:26379/0", "needs \\?master=NAME"),
    ("sentinel:///0?master=m", "names no sentinel host"),
    ("sentinel://h1:port/0?master=m", "bad sentinel port"),
    ("sentinel://h1/zero?master=m", "bad database number"),
])
def test_bad_sentinel_urls(url, reason):
    with pytest.raises(BrokerURLError, match=reason):
        parse_sentinel_url(url)


@pytest.mark.parametrize("url, reason", [
    ("http://localhost:6379/0", "unsupported broker URL scheme 'http'"),
    ("localhost:6379", "must look like redis://"),
    ("redis://localhost:notaport/0", "bad broker URL"),
])
def test_bad_urls_fail_before_connecting(url, reason):
    with pytest.raises(BrokerURLError, match=reason):
        connect(url)


def test_redact_hides_passwords():
    assert redact("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
    assert "pw" not in str(pytest.raises(BrokerURLError, connect, "redis://u:pw@h:x/0").value)


def test_good_urls_build_clients_without_connecting():
    for url in ("redis://127.0.0.1:1/0", "rediss://u:p@127.0.0.1:1/2", "unix:///tmp/none.sock?db=1",
                "sentinel://127.0.0.1:1/0?master=m"):
        assert connect(url) is not None


@pytest.mark.parametrize("args", [
    ("PING",),
    ("EVALSHA", "abc", 2, b"k1", "k\u00e9y", b"", 0, -7, 0.25, 1e-05, b"\x00\r\n\xff"),
    ("BLMOVE", "q", "i", "RIGHT", "LEFT", 0.1),
])
def test_pack_is_what_redis_py_sends(args):
    """The hot paths pack their own commands; the bytes must be exactly redis-py's."""
    from redis.connection import Connection

    from qdeploy.core.broker import pack

    assert pack(args) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("bad", [None, True, object(), ["list"]])
def test_pack_refuses_what_redis_cannot_store(bad):
    from qdeploy.core.broker import pack

    with pytest.raises(TypeError, match="cannot send"):
        pack(("SET", "k", bad))
