"""Broker URLs: the one grammar (parse, validate, redact) the config and every connection use.

    redis://[[user]:password@]host[:port][/db][?options]
    rediss://...                            TLS; ?ssl_cert_reqs=none|optional|required&ssl_ca_certs=/ca.crt...
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    sentinel://[[user]:password@]host[:port][,host[:port]...][/db]?master=NAME
        [&sentinel_username=U&sentinel_password=P]       the sentinels' own credentials
    sentinels://...                         the same, TLS to the sentinels and the master
    redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0][?options]
    rediss+cluster://...                    Redis Cluster (TLS): any nodes of it, the client finds the rest

Any form takes `wait_replicas=N` (and `wait_timeout=MS`): every publish and ack then waits until N
replicas have it (Redis WAIT), for users who pay a round trip's worth of latency for durability.

Standard library only, so that `qdeploy render` validates a broker without importing redis-py;
`qdeploy.core.connection` (the only module that knows redis-py) turns a `BrokerURL` into a client
and re-exports everything here. A scheme is one row of SCHEMES (plus its branch in
`connection.client_for`).

Every error is one line that never holds a credential: the reason never quotes a piece of the
URL (a mistyped URL can put part of a password where a host or port belongs), and the URL
itself is shown only through `redact()`.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus

MAX_LENGTH = 4096


@dataclass(frozen=True)
class Scheme:
    name: str
    topology: str  # "standalone", "unix", "sentinel", "cluster"
    tls: bool = False
    default_port: int = 6379
    many_hosts: bool = False  # host[:port],host[:port]... (and a client that knows them all)


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("redis", "standalone"),
    Scheme("rediss", "standalone", tls=True),
    Scheme("unix", "unix"),
    Scheme("sentinel", "sentinel", default_port=26379, many_hosts=True),
    Scheme("sentinels", "sentinel", tls=True, default_port=26379, many_hosts=True),
    Scheme("redis+cluster", "cluster", many_hosts=True),
    Scheme("rediss+cluster", "cluster", tls=True, many_hosts=True),
)}
# Spellings other tools use, refused with the one qdeploy knows (one spelling per form).
OTHER_SPELLINGS = {"redis+sentinel": "sentinel", "rediss+sentinel": "sentinels", "redis+socket": "unix",
                   "redis+unix": "unix", "socket": "unix", "redis-sentinel": "sentinel",
                   "cluster": "redis+cluster", "redis-cluster": "redis+cluster", "rediscluster": "redis+cluster",
                   "redis+clusters": "rediss+cluster", "redis-clusters": "rediss+cluster"}
# What a scheme that names both a cluster and sentinels gets: the two never go together.
MIXED = ("Redis Cluster and Sentinel do not mix (a cluster fails over by itself, it has no sentinels): "
         "use redis+cluster://h1:7000,h2:7001 or sentinel://h1:26379,h2:26379/0?master=NAME")


class BrokerURLError(ValueError):
    """A broker URL that cannot be used. `reason` says what was expected (for the config, which
    shows the value itself); str() adds the redacted URL. Neither ever holds a credential."""

    def __init__(self, reason: str, url: Any = None):
        self.reason = reason
        self.shown = shown(url) if isinstance(url, str) else None
        super().__init__(f"bad broker URL {self.shown}: {reason}" if self.shown else f"bad broker URL: {reason}")


# -- query options --------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    parse: Callable[[str], Any]
    what: str  # "expected ..." when parse fails
    secret: bool = False
    topologies: frozenset[str] | None = None  # None: every scheme
    tls: bool = False  # only with a TLS scheme


def _value(regex: str, convert: Callable[[str], Any] = str,
           ok: Callable[[Any], bool] = lambda _: True) -> Callable[[str], Any]:
    """A parser of one query value: it must match `regex`, and `ok` its converted value."""
    def parse(value: str) -> Any:
        if not re.fullmatch(regex, value) or not ok(converted := convert(value)):
            raise ValueError
        return converted
    return parse


_db = _value(r"\d{1,9}", int)
_seconds = _value(r"\d{1,4}(\.\d{1,6})?", float, lambda s: 0 < s <= 3600)
_boolean = _value(r"(?i)true|false|yes|no|1|0", lambda v: v.lower() in ("true", "yes", "1"))
_any = _value(r"[^\x00-\x1f\x7f]{1,1024}")
_file = _value(r"/[^\x00-\x1f\x7f]{0,1023}")
SENTINEL = frozenset({"sentinel"})
_replicas = _value(r"\d{1,2}", int, lambda n: 0 <= n <= 16)
_wait_ms = _value(r"\d{1,6}", int, lambda ms: 1 <= ms <= 600000)
OPTIONS: dict[str, Option] = {
    "db": Option(_db, "a database number"),
    "username": Option(_any, "a user name"),
    "password": Option(_any, "a password", secret=True),
    "socket_timeout": Option(_seconds, "seconds, more than 0 and at most 3600"),
    "socket_connect_timeout": Option(_seconds, "seconds, more than 0 and at most 3600"),
    "master": Option(_value(r"[A-Za-z0-9_.:-]{1,200}"), "the monitored master's name (letters, digits, _ . : -)",
                     topologies=SENTINEL),
    "sentinel_username": Option(_any, "a user name", topologies=SENTINEL),
    "sentinel_password": Option(_any, "a password", secret=True, topologies=SENTINEL),
    "wait_replicas": Option(_replicas, "a number of replicas from 0 to 16 (WAIT after every publish and ack)"),
    "wait_timeout": Option(_wait_ms, "milliseconds from 1 to 600000 (how long a WAIT waits; default 1000)"),
    "ssl_cert_reqs": Option(_value("none|optional|required"), "none, optional or required", tls=True),
    "ssl_check_hostname": Option(_boolean, "true or false", tls=True),
    "ssl_ca_certs": Option(_file, "an absolute path", tls=True),
    "ssl_ca_path": Option(_file, "an absolute path", tls=True),
    "ssl_certfile": Option(_file, "an absolute path", tls=True),
    "ssl_keyfile": Option(_file, "an absolute path", tls=True),
    "ssl_password": Option(_any, "the key file's password", secret=True, tls=True),
}
PUBLIC = frozenset(name for name, option in OPTIONS.items() if not option.secret)
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,252})")
SIMPLE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")


# -- redaction ------------------------------------------------------------------------------
def _userinfo_end(scheme: str, rest: str) -> int:
    """Index of the '@' that ends `user:password@` in the part after '://', or -1: the LAST '@'
    (a password may hold a raw '@'), unless that one sits in a query value
    (`?ssl_ca_certs=/etc/a@b/ca.crt`), which it can only when a plain host list and path stand
    between the query and any '@' before it. The parser splits by this rule, so for a valid URL
    `redact` hides exactly what the parser took as the password."""
    at = rest.rfind("@")
    while at >= 0:
        query = rest.find("?", 0, at)
        if query < 0:
            return at
        start = max(rest.rfind("&", query, at), query) + 1
        if "=" not in rest[start:at] or not _plain(scheme, rest[rest.rfind("@", 0, query) + 1:query]):
            return at
        at = rest.rfind("@", 0, start)
    return -1


def _plain(scheme: str, before_query: str) -> bool:
    """host[:port][,host[:port]...][/DB] (or unix's /path): nothing there can be a password."""
    if scheme.lower() == "unix":
        return before_query.startswith("/")
    hostlist, _, db = before_query.partition("/")
    if db and not db.isdigit():
        return False
    for item in hostlist.split(","):
        if item.startswith("["):
            item = "h" + item.partition("]")[2]
        host, colon, port = item.partition(":")
        if not HOST.fullmatch(host) or (colon and not port.isdigit()):
            return False
    return True


def _redact_query(query: str) -> str:
    """The value of every option that is not a known harmless one becomes ***; an unknown option
    (or a lone word) is hidden whole."""
    parts = []
    for part in query.split("&"):
        key, eq, _ = part.partition("=")
        name = unquote_plus(key)
        parts.append(part if name in PUBLIC or not part else f"{key}=***" if eq and name in OPTIONS else "***")
    return "&".join(parts)


def redact(url: str) -> str:
    """`url` with every credential replaced by ***: the password of `user:password@` and the
    value of every query option but the harmless ones (`password=`, `sentinel_password=`,
    `ssl_password=`; an unknown option whole). A valid broker URL keeps everything else; any
    other text (a mistyped URL, where a password may reach into the host, path or query) is cut
    more widely: whatever may hold a credential goes. It may hide more than the credential,
    never less."""
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    try:
        _parse(url)
    except _Bad:
        return _redact_loosely(scheme, sep, rest) if sep else _redact_loosely("", "", url)
    at = _userinfo_end(scheme, rest)
    user = ""
    if at >= 0:
        name, colon, _ = rest[:at].partition(":")
        user, rest = (f"{name}:***@" if colon else "***@"), rest[at + 1:]
    head, q, query = rest.partition("?")
    return f"{scheme}{sep}{user}{head}{q}{_redact_query(query) if q else ''}"


def _redact_loosely(scheme: str, sep: str, rest: str) -> str:
    """Not a valid URL: everything up to the last '@' goes (a user name shown only when plain),
    and the rest of a query value that '@' may sit in; a "port" that is not a number (`:secret`
    with its '@' missing) goes; query values go as in a valid URL."""
    at = rest.rfind("@")
    user = ""
    if at >= 0:
        head, rest = rest[:at], rest[at + 1:]
        name, colon, _ = head.partition(":")
        user = f"{name}:***@" if colon and re.fullmatch(r"[A-Za-z0-9_.-]*", name) else "***@"
        if "?" in head and "=" in head.partition("?")[2].rpartition("&")[2]:  # the '@' may sit in a query value
            cut = min((i for i in (rest.find("&"), rest.find("?")) if i >= 0), default=len(rest))
            tail = rest[cut + 1:]
            return f"{scheme}{sep}{user}***{rest[cut:cut + 1]}{_redact_query(tail) if tail else ''}"
    head, q, query = rest.partition("?")
    netloc, slash, path = head.partition("/")
    items = [item if re.fullmatch(r"[^:]*(:\d*)?|\[.*\](:\d*)?", item) else item.partition(":")[0] + ":***"
             for item in netloc.split(",")]
    return f"{scheme}{sep}{user}{','.join(items)}{slash}{path}{q}{_redact_query(query) if q else ''}"


WORD = re.compile(r"\S+")
PUNCTUATION = re.compile(r"([\"'(\[{<]*)(.*?)([\"'),\]}>:;.]*)", re.DOTALL)


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted: every word (run of non-space) that holds '://', or a
    ':' and then an '@' (`:secret@host`, a URL's tail), goes through `redact` (quotes, brackets
    and trailing punctuation around it kept). For log lines, error messages and diffs."""
    if not isinstance(text, str) or ("://" not in text and "@" not in text):
        return text
    return WORD.sub(lambda m: _redact_word(m.group()), text)


def _redact_word(word: str) -> str:
    if "://" not in word and ":" not in word.rpartition("@")[0]:
        return word
    parts = PUNCTUATION.fullmatch(word)  # always matches; the quotes and brackets around stay
    return f"{parts[1]}{redact(parts[2])}{parts[3]}" if parts else redact(word)


def shown(url: str, limit: int = 100) -> str:
    """A URL as an error message shows it: redacted, escaped to one line, at most `limit` long."""
    text = repr(redact(url))
    return text if len(text) <= limit else text[:limit - 4] + "...'"


# -- the parser -----------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class BrokerURL:
    """A parsed, validated broker URL. repr() and str() are redacted; `connect()` builds the
    redis-py client (in qdeploy.core.connection)."""

    url: str  # as given
    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()  # () for unix://
    path: str | None = None  # unix:// socket path
    db: int = 0
    username: str | None = None
    password: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # every other query option, parsed

    @property
    def spec(self) -> Scheme:
        return SCHEMES[self.scheme]

    @property
    def topology(self) -> str:
        return self.spec.topology

    @property
    def tls(self) -> bool:
        return self.spec.tls

    @property
    def master(self) -> str | None:
        return self.options.get("master")

    @property
    def cluster(self) -> bool:
        return self.spec.topology == "cluster"

    @property
    def wait(self) -> tuple[int, int] | None:
        """(replicas, timeout ms) for WAIT after every publish and ack, or None (the default:
        asynchronous replication, what Redis does)."""
        replicas = self.options.get("wait_replicas", 0)
        return (replicas, self.options.get("wait_timeout", 1000)) if replicas else None

    @property
    def redacted(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:
        return f"BrokerURL({self.redacted!r})"

    def __str__(self) -> str:
        return self.redacted

    def connect(self, **kwargs):
        """A redis-py client for this URL (nothing sent yet); see `connection.client_for`."""
        from qdeploy.core.connection import client_for

        return client_for(self, **kwargs)

    @classmethod
    def parse(cls, text: Any) -> BrokerURL:
        """The BrokerURL of `text`, or BrokerURLError (one line, no credential)."""
        if isinstance(text, BrokerURL):
            return text
        try:
            return _parse(text)
        except _Bad as exc:
            raise BrokerURLError(exc.reason, text) from None


class _Bad(Exception):
    """Why `_parse` refused a URL (turned into a BrokerURLError by BrokerURL.parse)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason



def _parse(text: Any) -> BrokerURL:
    """The grammar itself; raises _Bad (no display: `redact` calls this on any text)."""
    if not isinstance(text, str):
        raise _Bad("expected a URL string such as redis://127.0.0.1:6379/0")
    if len(text) > MAX_LENGTH:
        raise _Bad(f"expected at most {MAX_LENGTH} characters, got {len(text)}")
    if not all("!" <= c <= "~" for c in text):
        raise _Bad("expected printable ASCII without spaces: percent-encode anything else "
                  "(a space as %20, 'ü' as %C3%BC)")
    scheme, sep, rest = text.partition("://")
    spec = SCHEMES.get(scheme.lower())
    if not sep:
        raise _Bad("expected a URL such as redis://127.0.0.1:6379/0")
    if spec is None:
        raise _Bad(MIXED if "cluster" in scheme.lower() and "sentinel" in scheme.lower()
                   else _unknown_scheme(scheme.lower()))
    if "://" in rest:
        if "cluster" in text.lower() and "sentinel" in text.lower():
            raise _Bad(MIXED)
        if spec.topology == "cluster":
            raise _Bad("expected one URL: list several nodes in one, redis+cluster://h1:7000,h2:7001")
        raise _Bad("expected one URL: list several sentinels in one, "
                  "sentinel://h1:26379,h2:26379/0?master=NAME")
    at = _userinfo_end(scheme, rest)
    userinfo, rest = (rest[:at], rest[at + 1:]) if at >= 0 else (None, rest)
    if "#" in rest:
        raise _Bad("expected no '#': percent-encode it in a password as %23")
    netloc_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    hostlist, rest = rest[:netloc_end], rest[netloc_end:]
    path, _, query = rest.partition("?")
    options = _options(query, spec)
    username, password = _credentials(userinfo, options)
    db = options.pop("db", None)
    if spec.topology == "unix":
        if hostlist:
            raise _Bad("expected unix:///path/to/redis.sock (three slashes: no host)")
        socket = unquote(path)
        if len(socket) < 2 or not socket.isprintable() or len(socket.encode()) > 107:
            raise _Bad("expected the socket's absolute path (printable, at most 107 bytes), "
                      "unix:///path/to/redis.sock")
        return BrokerURL(text, spec.name, (), socket, db or 0, username, password, options)
    hosts = _hosts(hostlist, spec)
    if path not in ("", "/"):
        try:
            path_db = _db(path[1:])
        except ValueError:
            raise _Bad("expected /DB, a database number, after the host") from None
        if db is not None:
            raise _Bad("expected the database once, as /DB or ?db=, not both")
        db = path_db
    if spec.topology == "sentinel" and "master" not in options:
        raise _Bad("expected ?master=NAME: the name the sentinels monitor")
    if spec.topology == "cluster" and db:
        raise _Bad("expected database 0 (or none): a Redis Cluster has only database 0")
    return BrokerURL(text, spec.name, hosts, None, db or 0, username, password, options)


def _unknown_scheme(scheme: str) -> str:
    known = ", ".join(f"{s}://" for s in SCHEMES)
    if scheme in OTHER_SPELLINGS:
        right = OTHER_SPELLINGS[scheme]
        tls = " (sentinels:// for TLS)" if right == "sentinel" else ""
        return f"{scheme}:// is spelt {right}:// in qdeploy{tls}"
    close = difflib.get_close_matches(scheme, list(SCHEMES), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}://?)" if close and re.fullmatch(r"[a-z][a-z0-9+.-]{0,30}", scheme) else ""
    return f"expected a URL starting with one of {known}{hint}"


def _options(query: str, spec: Scheme) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        name = unquote_plus(key)
        if not eq:
            raise _Bad("expected name=value options after '?'")
        option = OPTIONS.get(name)
        if option is None:
            close = difflib.get_close_matches(name, list(OPTIONS), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(OPTIONS)}"
            what = f"'{name}'" if SIMPLE_NAME.fullmatch(name) else "(not shown: not a plain name)"
            raise _Bad(f"unknown query option {what}{hint}")
        if option.topologies is not None and spec.topology not in option.topologies:
            if spec.topology == "cluster" and option.topologies == SENTINEL:
                raise _Bad(f"{name}= is for sentinel:// URLs: {MIXED}")
            where = " and ".join(f"{s.name}://" for s in SCHEMES.values() if s.topology in option.topologies)
            raise _Bad(f"{name}= is for {where} URLs only")
        if option.tls and not spec.tls:
            raise _Bad(f"{name}= needs a TLS scheme (rediss://, sentinels:// or rediss+cluster://)")
        if name in parsed:
            raise _Bad(f"expected {name}= once")
        try:
            parsed[name] = option.parse(unquote_plus(value))
        except ValueError:
            raise _Bad(f"{name}=: expected {option.what}") from None
    return parsed


def _credentials(userinfo: str | None, options: dict[str, Any]) -> tuple[str | None, str | None]:
    username = password = None
    if userinfo:
        if any(c in userinfo for c in "/?#"):
            raise _Bad("percent-encode '/', '?' and '#' in the user name and password (%2F %3F %23)")
        name, _, secret = userinfo.partition(":")
        username, password = unquote(name) or None, unquote(secret) or None
    for key, value in (("username", username), ("password", password)):
        if key in options and value is not None:
            raise _Bad(f"expected the {key} once, in user:password@ or as ?{key}=, not both")
    return options.pop("username", username), options.pop("password", password)


def _hosts(hostlist: str, spec: Scheme) -> tuple[tuple[str, int], ...]:
    if not hostlist:
        if spec.topology == "cluster":
            raise _Bad(f"expected at least one cluster node host[:port], e.g. {spec.name}://10.0.0.1:7000,10.0.0.2:7001")
        raise _Bad("expected at least one sentinel host[:port]" if spec.many_hosts
                  else f"expected a host, e.g. {spec.name}://127.0.0.1:6379/0")
    items = hostlist.split(",")
    if len(items) > 1 and not spec.many_hosts:
        raise _Bad("expected one host: several hosts are for sentinel:// and redis+cluster:// URLs")
    hosts = []
    for item in items:
        if not item:
            raise _Bad("expected host[:port] between the commas, got an empty one")
        if item.startswith("["):
            host, closed, tail = item[1:].partition("]")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise _Bad("expected an IPv6 address in [...]") from None
            if not closed or (tail and not tail.startswith(":")):
                raise _Bad("expected [IPv6]:port")
            port = tail[1:] if tail else None
        else:
            host, colon, tail = item.partition(":")
            if ":" in tail:
                raise _Bad("expected an IPv6 address in brackets, e.g. [::1]:6379")
            if not HOST.fullmatch(host):
                raise _Bad("expected a host name or address (letters, digits, . - _)")
            port = tail if colon else None
        if port is not None and not (re.fullmatch(r"\d{1,5}", port) and 1 <= int(port) <= 65535):
            raise _Bad("expected a port from 1 to 65535")
        hosts.append((host, int(port) if port is not None else spec.default_port))
    if len(set(hosts)) != len(hosts):
        raise _Bad("expected each host once")
    return tuple(hosts)
