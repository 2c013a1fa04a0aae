"""The dashboard's pure logic: its flags, who is asking (basic auth, a trusted proxy's header),
CSRF checks, the tasks list's query string, the SVG charts with hostile names, percentiles and
the timeline. The HTTP server, the page and the actions are tested for real in
tests/e2e/test_dashboard.py."""

from __future__ import annotations

import base64
import math
import time
import xml.etree.ElementTree as ET
from email.message import Message

import pytest

from qdeploy.ops.dashboard import Options, charts
from qdeploy.ops.dashboard.api import BadRequest, parse_hours, parse_task_query, percentile, timeline
from qdeploy.ops.dashboard.auth import Auth, Refused, parse_proxies

HOSTILE = ["<script>alert(1)</script>", "a&b", "\"quoted' name", "]]><x>", "snow\u2603man\U0001f600", "\u202eevil"]


def headers(**values) -> Message:
    message = Message()
    for key, value in values.items():
        for v in value if isinstance(value, list) else [value]:
            message[key.replace("_", "-")] = v
    return message


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


# -- flags ---------------------------------------------------------------------------------------
def test_defaults_are_loopback_read_only_and_anonymous():
    options = Options.parse()
    assert (options.bind, options.port, options.allow_actions, options.show_args) == ("127.0.0.1", 5555, False, False)
    assert options.auth is not None and not options.auth.required
    assert options.describe(5555) == "dashboard on http://127.0.0.1:5555/ (read-only)"
    both = Options.parse(bind="::1", port="0", auth="ops:s3cret:with:colons", trusted_header="X-Forwarded-User",
                         trusted_proxies=("10.0.0.0/8", "::1"), allow_actions=True, show_args=True, refresh="0.5")
    assert both.auth.basic == b"ops:s3cret:with:colons" and both.auth.trusted_header == "X-Forwarded-User"
    assert both.describe(8080) == ("dashboard on http://[::1]:8080/ (basic auth, user from X-Forwarded-User, "
                                   "actions on, arguments shown)")


@pytest.mark.parametrize("flags, text", [
    ({"port": "http"}, "--port 'http'"), ({"port": "-1"}, "--port -1"), ({"port": "65536"}, "--port 65536"),
    ({"port": "1e3"}, "--port"), ({"refresh": "0.1"}, "--refresh"), ({"refresh": "inf"}, "--refresh"),
    ({"refresh": "soon"}, "--refresh 'soon'"), ({"bind": ""}, "--bind"), ({"bind": "a b"}, "--bind"),
    ({"bind": "x" * 300}, "--bind"), ({"auth": "nopassword"}, "USER:PASS"), ({"auth": "user:"}, "USER:PASS"),
    ({"auth": ":pass"}, "USER:PASS"), ({"auth": "us er:pass"}, "user name"), ({"auth": "u:pa\nss"}, "printable"),
    ({"auth": "u:" + "p" * 2000}, "1024"), ({"trusted_header": "X User"}, "--trusted-header"),
    ({"trusted_header": "X-User\r\nInjected: 1"}, "--trusted-header"), ({"trusted_header": "Cookie"}, "cannot name"),
    ({"trusted_header": "x-csrf-token"}, "cannot name"),
    ({"trusted_header": "X-User", "trusted_proxies": ("10.0.0.0/33",)}, "--trusted-proxy '10.0.0.0/33'"),
    ({"trusted_proxies": ("10.0.0.1",)}, "only with --trusted-header"),
    ({"allow_actions": True}, "--allow-actions needs --auth"),
])
def test_bad_flags_are_one_line(flags, text):
    with pytest.raises(ValueError) as err:
        Options.parse(**flags)
    assert text in str(err.value) and "\n" not in str(err.value)


# -- who is asking ---------------------------------------------------------------------------------
def test_basic_auth_compares_user_and_password():
    auth = Auth(basic=b"ops:pw")
    assert auth.user(headers(Authorization=basic("ops:pw")), "10.1.1.1") == "ops"
    for bad in (basic("ops:PW"), basic("other:pw"), basic("ops:pw2"), "Basic !!!", "Basic", "Digest abc", ""):
        with pytest.raises(Refused) as err:
            auth.user(headers(Authorization=bad), "10.1.1.1")
        assert err.value.status == 401 and err.value.challenge
    with pytest.raises(Refused):
        auth.user(headers(), "127.0.0.1")


def test_the_trusted_header_is_believed_only_from_a_trusted_proxy():
    auth = Auth(trusted_header="X-Forwarded-User")
    assert auth.user(headers(X_Forwarded_User="alice@example.com"), "127.0.0.1") == "alice@example.com"
    assert auth.user(headers(X_Forwarded_User="bob"), "::ffff:127.0.0.1") == "bob"  # IPv4 mapped
    assert auth.user(headers(X_Forwarded_User="bob"), "::1") == "bob"
    for peer in ("10.0.0.5", "::2", "not-an-address", ""):
        with pytest.raises(Refused) as err:
            auth.user(headers(X_Forwarded_User="alice"), peer)
        assert err.value.status == 403
    for bad in ("al ice", "alice\x00", "a" * 129, "", "alice,bob", "alice;admin", "ålice"):
        with pytest.raises(Refused) as err:
            auth.user(headers(X_Forwarded_User=bad), "127.0.0.1")
        assert err.value.status == 400
    with pytest.raises(Refused) as err:
        auth.user(headers(X_Forwarded_User=["alice", "admin"]), "127.0.0.1")
    assert err.value.status == 400
    with pytest.raises(Refused) as err:  # nothing from the proxy: not authenticated
        auth.user(headers(), "127.0.0.1")
    assert err.value.status == 401
    wider = Auth(trusted_header="X-Forwarded-User", proxies=parse_proxies(["10.0.0.0/8"]))
    assert wider.user(headers(X_Forwarded_User="carol"), "10.2.3.4") == "carol"
    with pytest.raises(Refused):
        wider.user(headers(X_Forwarded_User="carol"), "127.0.0.1")


def test_without_trusted_header_the_header_is_ignored():
    assert Auth().user(headers(X_Forwarded_User="mallory"), "127.0.0.1") is None
    basic_only = Auth(basic=b"ops:pw")
    with pytest.raises(Refused):
        basic_only.user(headers(X_Forwarded_User="ops"), "127.0.0.1")
    assert basic_only.user(headers(X_Forwarded_User="mallory", Authorization=basic("ops:pw")), "127.0.0.1") == "ops"


def test_csrf_token_is_per_user_and_per_process():
    auth, other = Auth(basic=b"ops:pw"), Auth(basic=b"ops:pw")
    token = auth.token("ops")
    assert token == auth.token("ops") != auth.token("bob") and token != other.token("ops")
    good = {"X-CSRF-Token": token, "Content-Type": "application/json; charset=utf-8"}
    auth.check_change(headers(**good), "ops", "dash:5555")
    auth.check_change(headers(**good, Origin="http://dash:5555", Sec_Fetch_Site="same-origin"), "ops", "dash:5555")
    for extra, status in [({"X-CSRF-Token": ""}, 403), ({"X-CSRF-Token": auth.token("bob")}, 403),
                          ({"X-CSRF-Token": other.token("ops")}, 403), ({"X-CSRF-Token": token + "\u00e9"}, 403),
                          ({"Content-Type": "text/plain"}, 415), ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
                          ({"Origin": "http://evil.example"}, 403), ({"Origin": "null"}, 403),
                          ({"Origin": "http://dash:5555.evil.example"}, 403), ({"Sec-Fetch-Site": "cross-site"}, 403),
                          ({"Sec-Fetch-Site": "same-site"}, 403)]:
        with pytest.raises(Refused) as err:
            auth.check_change(headers(**{k.replace("-", "_"): v for k, v in {**good, **extra}.items()}), "ops", "dash:5555")
        assert err.value.status == status, extra
    without = {k: v for k, v in good.items() if k != "X-CSRF-Token"}
    with pytest.raises(Refused):
        auth.check_change(headers(**{k.replace("-", "_"): v for k, v in without.items()}), "ops", "dash:5555")


# -- the tasks list's query ------------------------------------------------------------------------
def test_query_string_to_query():
    q = parse_task_query("q=h.add&node=w1&state=FAILURE,retry&state=SUCCESS&since=100&until=200.5&sort=started"
                         "&page=3&per_page=20", show_args=False)
    assert (q.q, q.node, q.states, q.since, q.until, q.sort, q.offset, q.limit) == \
        ("h.add", "w1", ("FAILURE", "RETRY", "SUCCESS"), 100.0, 200.5, "started", 40, 20)
    assert parse_task_query("", show_args=False).limit == 50
    assert parse_task_query("args=user%40x", show_args=True).args == "user@x"


@pytest.mark.parametrize("raw", [
    "x=1", "%ff=1", "q=a&q=b", "q=" + "a" * 201, "q=%00", "q=%1b[31m", "state=NOPE", "state=" + ",".join(["SUCCESS"] * 7),
    "since=nan", "since=-1", "until=1e12", "since=yesterday", "page=0", "page=1.5", "page=10002", "per_page=201",
    "per_page=0", "sort=name", "args=x", "&".join(f"k{i}=1" for i in range(41)), "a" * 2001,
])
def test_bad_query_strings_are_one_line(raw):
    with pytest.raises(BadRequest) as err:
        parse_task_query(raw, show_args=False)
    assert str(err.value) and "\n" not in str(err.value)


def test_hours():
    assert parse_hours("") == 1 and parse_hours("hours=24") == 24
    for bad in ("hours=2", "hours=-1", "hours=nan", "hours=x", "hours=1e400"):
        with pytest.raises(BadRequest):
            parse_hours(bad)


# -- charts, percentiles, timeline ---------------------------------------------------------------
def test_charts_are_well_formed_svg_whatever_the_names():
    now = time.time()
    series = [{"t": 60 * (int(now // 60) - i), "success": i, "failure": i % 3, "retry": 1} for i in range(60)][::-1]
    samples = [{"t": now - 60 * i, "q": [{"queue": name, "ready": i, "in_flight": 1, "scheduled": 0, "dead": 2}
                                         for name in HOSTILE]} for i in range(10)]
    samples.append({"t": now, "q": ["junk", {"queue": 5}, {"queue": "q", "ready": True, "scheduled": -3, "dead": "x"}]})
    rows = [{"name": name, "count": 10, "p50": 0.01, "p90": 0.2, "p99": 3.0} for name in HOSTILE]
    rows.append({"name": "nothing", "count": 0, "p50": None, "p90": None, "p99": None})
    for svg in (charts.throughput(series), charts.throughput(series, only="failure"), charts.throughput([]),
                charts.queues(samples, 1), charts.queues(samples, 24, fields=("dead",)), charts.queues([], 1),
                charts.runtimes(rows), charts.runtimes([])):
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert not root.findall(".//{http://www.w3.org/2000/svg}script") and "<script" not in svg
    assert "&lt;script&gt;" in charts.runtimes(rows)


def test_percentiles_from_buckets():
    from qdeploy.ops.metrics import BUCKETS

    counts = [0] * (len(BUCKETS) + 1)
    counts[0] = 50  # 50 tasks up to 5 ms
    counts[4] = 50  # 50 between 50 and 100 ms
    assert percentile(counts, 0.5) == pytest.approx(0.005)
    assert percentile(counts, 0.9) == pytest.approx(0.05 + 0.05 * 40 / 50)
    assert percentile([0] * len(counts), 0.5) is None
    slowest = [0] * len(counts)
    slowest[-1] = 3  # beyond the last bucket: its lower bound
    assert percentile(slowest, 0.99) == BUCKETS[-1]
    assert all(math.isfinite(percentile(counts, q)) for q in (0.0, 0.01, 1.0))


def test_timeline_orders_every_delivery():
    record = {"sent": 10.0, "eta": 12.0, "received": 13.0, "started": 13.0, "done": 14.5, "state": "SUCCESS",
              "node": "w@h", "pid": 7, "attempts": [{"state": "RETRY", "started": 10.5, "done": 11.0, "exc": "Retry: later",
                                                     "node": "w@h", "pid": 6},
                                                    {"state": "PENDING", "started": 11.5, "killed": "crash"}]}
    steps = timeline(record)
    assert [s["what"] for s in steps] == ["sent", "started", "retry", "started", "due (ETA)", "received", "started",
                                          "success"]
    assert [s["time"] for s in steps] == sorted(s["time"] for s in steps)
    assert timeline({"attempts": [{"state": "RETRY", "started": "not a time"}], "sent": "x"}) == []
