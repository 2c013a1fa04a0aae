"""Broker URLs: the one parser (qdeploy.core.urls) behind the config validator and connect(), the
clients built from it, and redaction. No server needed; real servers: tests/integration/test_urls.py."""

from __future__ import annotations

import io
import logging
import string
import subprocess
import sys
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdeploy.core.connection import BrokerURL, BrokerURLError, connect, redact, redact_text
from qdeploy.generator import datatypes

SECRET = "Sekr1t"


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0", dict(scheme="redis", hosts=(("127.0.0.1", 6379),), db=0)),
    ("redis://h", dict(hosts=(("h", 6379),), db=0, username=None, password=None)),
    ("REDIS://h:1/", dict(scheme="redis", hosts=(("h", 1),), db=0)),
    ("redis://:p%40ss@h/3", dict(hosts=(("h", 6379),), db=3, username=None, password="p@ss")),
    ("redis://:p@ss@h/3", dict(hosts=(("h", 6379),), password="p@ss")),  # a raw '@' works, as in redis-py
    ("redis://app:pw@h:7/2", dict(username="app", password="pw", db=2)),
    ("redis://h?password=pw&username=u&db=0", dict(username="u", password="pw", db=0)),
    ("redis://h/0?password=p@ss", dict(password="p@ss", db=0)),
    ("redis://h?db=4&socket_timeout=2.5&socket_connect_timeout=1",
     dict(db=4, options={"socket_timeout": 2.5, "socket_connect_timeout": 1.0})),
    ("redis://[::1]:6380/1", dict(hosts=(("::1", 6380),), db=1)),
    ("rediss://u:p@h:6390/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/a@b/ca.crt&ssl_check_hostname=false",
     dict(scheme="rediss", hosts=(("h", 6390),), db=2, password="p",
          options={"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/a@b/ca.crt", "ssl_check_hostname": False})),
    ("unix:///run/redis/redis.sock", dict(scheme="unix", hosts=(), path="/run/redis/redis.sock", db=0)),
    ("unix://:pw@/run/redis.sock?db=2", dict(path="/run/redis.sock", db=2, password="pw")),
    ("sentinel://:pw@s1:26379,s2:26380/0?master=m",
     dict(scheme="sentinel", hosts=(("s1", 26379), ("s2", 26380)), db=0, password="pw", options={"master": "m"})),
    ("sentinel://app:s3cret@h1:26380,h2,[::1]:26381/3?master=mymaster&sentinel_password=sp&sentinel_username=su",
     dict(hosts=(("h1", 26380), ("h2", 26379), ("::1", 26381)), db=3, username="app", password="s3cret",
          options={"master": "mymaster", "sentinel_password": "sp", "sentinel_username": "su"})),
    ("sentinels://h1,h2/0?master=m&ssl_ca_certs=/ca.crt",
     dict(scheme="sentinels", hosts=(("h1", 26379), ("h2", 26379)), options={"master": "m", "ssl_ca_certs": "/ca.crt"})),
])
def test_every_accepted_form_parses_to_what_it_says(url, expected):
    parsed = BrokerURL.parse(url)
    for name, value in expected.items():
        assert getattr(parsed, name) == value, name
    assert datatypes.broker_url(url) == url  # the config keeps the text it was given
    assert parsed.tls == (parsed.scheme in ("rediss", "sentinels"))


LONG = "redis://:" + SECRET + "@h/0?db=" + "0" * 10240


@pytest.mark.parametrize("url, reason", [
    (f"redis://:{SECRET}@127.0.0.1:99999/0", "expected a port from 1 to 65535"),
    (f"redis://:{SECRET}@127.0.0.1:0/0", "expected a port from 1 to 65535"),
    (f"redis://:{SECRET}@h:port/0", "expected a port from 1 to 65535"),
    (f"redis://:{SECRET}@/0", "expected a host"),
    (f"redis://:{SECRET}@:6379/0", "expected a host name or address"),
    (f"redis://u:{SECRET}@h1,h2/0", "expected one host: several hosts are for sentinel://"),
    (f"http://:{SECRET}@h/0", "expected a URL starting with one of redis://, rediss://, unix://, sentinel://, sentinels://"),
    (f"sentinal://:{SECRET}@h/0?master=m", "(did you mean sentinel://?)"),
    (f"redis+sentinel://:{SECRET}@h:26379/0?master=m", "redis+sentinel:// is spelt sentinel:// in qdeploy (sentinels:// for TLS)"),
    (f"redis+socket://:{SECRET}@/run/r.sock", "is spelt unix://"),
    (f"sentinel://:{SECRET}@h1:26379;sentinel://h2:26379", "expected one URL: list several sentinels in one"),
    (f"redis://:{SECRET}@h/0?pasword={SECRET}", "unknown query option 'pasword' (did you mean 'password'?)"),
    (f"redis://:{SECRET}@h/0?bogus=1", "unknown query option 'bogus'; known: db, username, password"),
    (f"redis://h/0?{SECRET}", "expected name=value options after '?'"),
    (f"redis://h/0?{SECRET}%2Fx=1", "unknown query option (not shown: not a plain name)"),
    (f"sentinel://:{SECRET}@h1:26379,h2:26379/0", "expected ?master=NAME"),
    (f"sentinel://:{SECRET}@/0?master=m", "expected at least one sentinel host[:port]"),
    (f"sentinel://:{SECRET}@h1,,h2/0?master=m", "expected host[:port] between the commas"),
    (f"sentinel://:{SECRET}@h1,/0?master=m", "expected host[:port] between the commas"),
    (f"sentinel://:{SECRET}@h1,h1/0?master=m", "expected each host once"),
    (f"sentinel://:{SECRET}@h1/0?master=m&master=n", "expected master= once"),
    (f"redis://:{SECRET}@h/zero", "expected /DB, a database number"),
    (f"redis://:{SECRET}@h/0/1", "expected /DB, a database number"),
    (f"redis://:{SECRET}@h/?db=x", "db=: expected a database number"),
    (f"redis://:{SECRET}@h/1?db=1", "expected the database once"),
    (f"redis://:{SECRET}@h/0?password={SECRET}", "expected the password once"),
    (f"redis://:{SECRET}@h/0?master=m", "master= is for sentinel:// and sentinels:// URLs only"),
    (f"redis://:{SECRET}@h/0?ssl_ca_certs=/ca.crt", "ssl_ca_certs= needs a TLS scheme"),
    (f"rediss://:{SECRET}@h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs=: expected none, optional or required"),
    (f"rediss://:{SECRET}@h/0?ssl_ca_certs=ca.crt", "ssl_ca_certs=: expected an absolute path"),
    (f"redis://:{SECRET}@h/0?socket_timeout=0", "socket_timeout=: expected seconds"),
    (f"redis://:{SECRET}@h/0?socket_timeout=1e9", "socket_timeout=: expected seconds"),
    (f"redis://:{SECRET}@::1:6379/0", "expected an IPv6 address in brackets"),
    (f"redis://:{SECRET}@[::1/0", "expected [IPv6]:port"),
    (f"redis://:{SECRET}@[nothex]:1/0", "expected an IPv6 address in [...]"),
    (f"redis://:{SECRET}@[::1]x/0", "expected [IPv6]:port"),
    (f"redis://:{SECRET}@h/0#frag", "expected no '#'"),
    (f"redis://:pa/{SECRET}@h/0", "percent-encode '/', '?' and '#' in the user name and password"),
    (f"redis://:pa?{SECRET}@h/0", "percent-encode '/', '?' and '#'"),
    (f"unix://:{SECRET}@host/run/r.sock", "expected unix:///path/to/redis.sock (three slashes: no host)"),
    (f"unix://:{SECRET}@/", "expected the socket's absolute path"),
    (f"unix://:{SECRET}@/tmp/a%0Ab.sock", "expected the socket's absolute path (printable"),
    (f"unix://:{SECRET}@/" + "s" * 120, "at most 107 bytes"),
    (f"redis://:{SECRET}@h/0\n", "expected printable ASCII without spaces"),
    (f"redis://:{SECRET}@h/0\x1b[2J", "expected printable ASCII without spaces"),
    (f"redis://:{SECRET} x@h/0", "expected printable ASCII without spaces"),
    (f"redis://:{SECRET}\u00fc@h/0", "percent-encode anything else"),
    (f"{SECRET}@h:6379", "expected a URL such as redis://127.0.0.1:6379/0"),
    (LONG, f"expected at most 4096 characters, got {len(LONG)}"),
])
def test_each_bad_form_is_one_line_without_the_password(url, reason):
    with pytest.raises(BrokerURLError) as caught:
        BrokerURL.parse(url)
    err = caught.value
    message = str(err)
    assert reason in err.reason and reason in message
    assert SECRET not in message and "\n" not in message and len(message) < 400, message
    assert message.startswith("bad broker URL ") and "\x1b" not in message
    with pytest.raises(BrokerURLError) as again:  # connect() refuses it with the same line
        connect(url)
    assert str(again.value) == message
    with pytest.raises(ValueError) as config:  # and so does the config validator, naming no value
        datatypes.broker_url(url)
    assert str(config.value) == err.reason


@pytest.mark.parametrize("bad", [None, 6379, ["redis://h"], b"redis://h", {"url": "redis://h"}])
def test_non_strings_are_refused(bad):
    with pytest.raises(BrokerURLError, match="expected a URL string"):
        BrokerURL.parse(bad)
    with pytest.raises(ValueError, match="expected a URL string"):
        datatypes.broker_url(bad)


def _pool(client):
    return client.connection_pool.connection_class.__name__, client.connection_pool.connection_kwargs


def test_connect_builds_the_client_the_url_describes():
    kind, kw = _pool(connect("redis://u:pw@127.0.0.1:7/3?socket_timeout=2", socket_timeout=9, client_name="c"))
    assert kind == "Connection"
    assert (kw["host"], kw["port"], kw["db"], kw["username"], kw["password"]) == ("127.0.0.1", 7, 3, "u", "pw")
    assert (kw["socket_timeout"], kw["socket_connect_timeout"], kw["client_name"]) == (2.0, 5.0, "c")
    kind, kw = _pool(connect("rediss://h:1/0?ssl_cert_reqs=none&ssl_ca_certs=/ca.crt"))
    assert kind == "SSLConnection" and (kw["ssl_cert_reqs"], kw["ssl_ca_certs"]) == ("none", "/ca.crt")
    kind, kw = _pool(connect("unix://:pw@/tmp/none.sock?db=1"))
    assert kind == "UnixDomainSocketConnection" and (kw["path"], kw["db"], kw["password"]) == ("/tmp/none.sock", 1, "pw")


def test_sentinel_clients_know_every_sentinel_and_their_own_credentials():
    client = connect("sentinels://:mpw@h1:26380,[::1]/2?master=mm&sentinel_username=su&sentinel_password=spw"
                     "&ssl_ca_certs=/ca.crt", connect_timeout=1.5)
    pool = client.connection_pool
    assert pool.service_name == "mm" and pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert (pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == ("mpw", 2)
    assert pool.connection_kwargs["ssl_ca_certs"] == "/ca.crt"
    sentinels = pool.sentinel_manager.sentinels
    addresses = [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"]) for s in sentinels]
    assert addresses == [("h1", 26380), ("::1", 26379)]
    skw = sentinels[0].connection_pool.connection_kwargs
    assert (skw["username"], skw["password"], skw["ssl_ca_certs"], skw["socket_connect_timeout"]) == ("su", "spw", "/ca.crt", 1.5)
    assert sentinels[0].connection_pool.connection_class.__name__ == "SSLConnection"


def test_repr_and_str_never_show_a_password():
    parsed = BrokerURL.parse(f"sentinel://u:{SECRET}@h/0?master=m&sentinel_password={SECRET}x")
    assert SECRET not in repr(parsed) and SECRET not in str(parsed) and SECRET not in f"{parsed!r} {parsed}"
    assert str(parsed) == "sentinel://u:***@h/0?master=m&sentinel_password=***"
    assert (parsed.password, parsed.options["sentinel_password"]) == (SECRET, SECRET + "x")


@pytest.mark.parametrize("url, shown", [
    ("redis://user:pw@h:1/0", "redis://user:***@h:1/0"),
    ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
    ("redis://h:1/0", "redis://h:1/0"),
    ("redis://pw@h/0", "redis://***@h/0"),  # a lone name before '@' may be a misplaced password
    ("redis://:p@ss:w/rd@h/0", "redis://:***@h/0"),
    ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
    ("redis://h/0?pass%77ord=pw", "redis://h/0?pass%77ord=***"),
    ("sentinel://:a@h1,h2/0?master=m&sentinel_password=b&sentinel_username=su",
     "sentinel://:***@h1,h2/0?master=m&sentinel_password=***&sentinel_username=su"),
    ("rediss://:k@h/0?ssl_password=x&ssl_keyfile=/k@y.pem", "rediss://:***@h/0?ssl_password=***&ssl_keyfile=/k@y.pem"),
    ("redis://h/0?token=abc&lone&db=1", "redis://h/0?***&***&db=1"),
    ("redis://h?password=@pw&db=1", "redis://h?password=***&db=1"),
    ("rediss://u:p@h/0?ssl_ca_certs=/a@b/ca.crt&ssl_password=x@y", "rediss://u:***@h/0?ssl_ca_certs=/a@b/ca.crt&ssl_password=***"),
    # not valid URLs: cut more widely, whatever may hold a piece of the password goes
    ("redis://:a?b=c@h/0", "redis://:***@***"),
    ("redis://:Sekr1t/0", "redis://:***/0"),
    ("redis://h/0?db=1&password=@pw&bogus=1", "redis://***@***&***"),
    (":pw@host:6379", ":***@host:6379"),
    ("http://user:pw@example.com/x", "http://user:***@example.com/x"),
])
def test_redact(url, shown):
    assert redact(url) == shown


def test_redact_text_finds_every_url_and_leaves_the_rest():
    line = ("cannot reach 'redis://:a1@h:1/0' nor sentinel://:b2@h2/0?master=m&sentinel_password=c3, "
            "retrying; consumer w1@host/12.3 at 10:30 and [\"-b\",\"rediss://:d4@x/0\"] or :e5@y")
    out = redact_text(line)
    assert not any(s in out for s in ("a1", "b2", "c3", "d4", "e5")), out
    assert "w1@host/12.3 at 10:30" in out and out.startswith("cannot reach 'redis://:***@h:1/0'")
    assert redact_text("nothing to see") == "nothing to see"


# -- properties: one parser, and a password never shows --------------------------------------
PASSWORD_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%/?#[]"
password = st.builds(lambda a, b: f"{a}{SECRET}{b}", st.text(PASSWORD_CHARS, max_size=8), st.text(PASSWORD_CHARS, max_size=8))
host = st.sampled_from(["h", "127.0.0.1", "[::1]", "redis-1.internal", "", "h:1", "h:0", "h:x", "[::1]:26380", "::1"])
hosts = st.lists(host, min_size=0, max_size=3).map(",".join)
scheme = st.sampled_from(["redis", "rediss", "unix", "sentinel", "sentinels", "redis+sentinel", "http", "Redis"])
path = st.sampled_from(["", "/", "/0", "/15", "/x", "/run/redis.sock", "/1/2"])
query_part = st.sampled_from(["master=m", "db=2", "db=x", "socket_timeout=3", "ssl_cert_reqs=none",
                              "ssl_ca_certs=/a@b/ca.crt", "sentinel_username=su", "bogus=1", "lone", "password=pw"])
query = st.lists(query_part, max_size=3).map(lambda parts: ("?" + "&".join(parts)) if parts else "")


@st.composite
def urls(draw):
    secret = draw(password)
    form = draw(st.sampled_from(["", ":{}@", "user:{}@", "{}@"]))  # "{}@": a password without its ':'
    userinfo = form.format(secret.replace(":", "") if form == "{}@" else secret)
    return draw(scheme) + "://" + userinfo + draw(hosts) + draw(path) + draw(query)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(urls())
def test_the_config_and_connect_accept_exactly_the_same_urls(url):
    try:
        parsed = BrokerURL.parse(url)
    except BrokerURLError as exc:
        assert SECRET not in str(exc) and "\n" not in str(exc)
        with pytest.raises(ValueError):
            datatypes.broker_url(url)
        with pytest.raises(BrokerURLError):
            connect(url)
        return
    assert datatypes.broker_url(url) == url
    client = connect(url)
    kw = client.connection_pool.connection_kwargs
    assert (kw["db"], kw.get("password")) == (parsed.db, parsed.password)
    if parsed.topology == "standalone":
        assert (kw["host"], kw["port"]) == parsed.hosts[0]


@settings(max_examples=300, deadline=None)
@given(urls(), st.sampled_from(["{}", "x {} y", "'{}':", '["-b", "{}"]', "({})"]))
def test_redaction_never_shows_the_password(url, around):
    assert SECRET not in redact(url)
    assert SECRET not in redact_text(around.format(url))


QUERY_CHARS = PASSWORD_CHARS.replace("&", "").replace("#", "").replace("+", "")  # '&' ends a query value


@settings(max_examples=300, deadline=None)
@given(st.text(QUERY_CHARS, max_size=8), st.text(QUERY_CHARS, max_size=8),
       st.sampled_from(["password", "sentinel_password", "ssl_password", "pasword", "secret"]),
       st.sampled_from(["sentinels://h/0?master=m&{}&db=1", "sentinels://h?master=m&{}&db=1", "redis://h/0?{}",
                        "rediss://:x@h:1?{}&ssl_ca_certs=/a@b"]))
def test_query_credentials_never_show(prefix, suffix, key, form):
    url = form.format(f"{key}={prefix}{SECRET}{suffix}")
    assert SECRET not in redact(url) and SECRET not in redact_text(f"error: {url}")


# -- where URLs surface: config, extra args, logs, CLI errors -------------------------------
def test_config_errors_show_the_broker_redacted(isolated, write_config):
    from qdeploy.generator import config

    bad = f"redis://:{SECRET}@127.0.0.1:99999/0"
    for source, kw in (("--broker", dict(cli={"broker": bad})),
                       ("other.toml", dict(explicit=str(write_config(f"broker = '{bad}'\n", "other.toml")))),
                       ("$QDEPLOY_BROKER", dict(environ={"QDEPLOY_BROKER": bad})),
                       ("$QDEPLOY_BROKER", dict(environ={"QDEPLOY_BROKER": f":{SECRET}@h"})),
                       ("$QDEPLOY_BROKER", dict(environ={"QDEPLOY_BROKER": f"redis://h/0?password={SECRET}&x=1"}))):
        with pytest.raises(config.ConfigError) as caught:
            config.load(**kw)
        assert source in str(caught.value) and SECRET not in str(caught.value), caught.value
    with pytest.raises(config.ConfigError) as caught:
        config.load(environ={"QDEPLOY_BROKER": bad})
    assert str(caught.value) == "$QDEPLOY_BROKER: broker = 'redis://:***@127.0.0.1:99999/0': expected a port from 1 to 65535"


def test_extra_args_refuse_credentials_that_would_land_in_0644_files():
    with pytest.raises(ValueError, match="expected no credentials"):
        datatypes.argv_list(["-b", f"redis://:{SECRET}@h/0"])
    with pytest.raises(ValueError, match="expected no credentials"):
        datatypes.argv_list([f"--broker=sentinel://h/0?master=m&sentinel_password={SECRET}"])
    assert datatypes.argv_list(["-b", "redis://h/0", "-n", "w1@%h", "--tag=50% it's"]) == \
        ["-b", "redis://h/0", "-n", "w1@%h", "--tag=50% it's"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_log_line_is_redacted(fmt, monkeypatch):
    from qdeploy.service import logs

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    opts = SimpleNamespace(logfile=None, node="n", owner="n@h", log_format=fmt, log_level="debug")
    logs.setup(opts)
    try:
        log = logging.getLogger("qdeploy.test")
        log.warning("cannot use %s (%d)", f"redis://:{SECRET}@h:1/0", 3)
        try:
            raise ConnectionError(f"sentinel://h/0?master=m&sentinel_password={SECRET}")
        except ConnectionError:
            log.exception("failed")
        log.info("plain line w1@host/1.2")
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert SECRET not in out and "redis://:***@h:1/0 (3)" in out and "sentinel_password=***" in out, out
    assert "plain line w1@host/1.2" in out and "ConnectionError" in out


def test_diff_output_is_redacted(tmp_path):
    from qdeploy.generator import tree
    from qdeploy.generator.render import File

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/qdeploy.toml").write_text(f'broker = "redis://:Old{SECRET}@h:6379/0"\n')
    changes = tree.compare([File("etc/qdeploy.toml", f'broker = "redis://:New{SECRET}@h:6379/0"\n', 0o640, "config")], tmp_path)
    assert len(changes) == 1 and SECRET not in changes[0].diff
    assert '-broker = "redis://:***@h:6379/0"' in changes[0].diff and '+broker = "redis://:***@h:6379/0"' in changes[0].diff


@pytest.mark.parametrize("module", ["common", "runtime"])
def test_cli_error_lines_are_redacted(module, capsys):
    from qdeploy.cli import common, runtime

    with pytest.raises(SystemExit) as code:
        common.fail(f"x redis://:{SECRET}@h/0", 2) if module == "common" else \
            runtime.fail("status", f"x redis://:{SECRET}@h/0\nsecond", 2)
    err = capsys.readouterr().err
    assert code.value.code == 2 and SECRET not in err and "redis://:***@h/0" in err and len(err.splitlines()) == 1


def test_the_config_validates_brokers_without_importing_redis_py():
    done = subprocess.run([sys.executable, "-c", "import sys, qdeploy.generator.config, qdeploy.cli.render\n"
                           "from qdeploy.generator.datatypes import broker_url\n"
                           "broker_url('sentinel://h1,h2/0?master=m')\n"
                           "from qdeploy import _imports\n"
                           "print(_imports.loaded('redis') or 'redis.client' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
