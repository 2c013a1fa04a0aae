"""`qdeploy dashboard` in a real headless Chromium (Debian's chromium, driven over WebDriver by
chromedriver: tests/e2e/webdriver.py), against a real worker master and a private redis-server.

One browser and one worker serve the whole module (the tests run in file order and build on
each other: the layout first, the actions later, the node's shutdown last). What is checked,
by the issue's items: layout at 1024, 1280 and 1920 px (no horizontal overflow, measured in the
page, and screenshots), search, filters and paging, the task detail with its timeline and links,
live updates without a reload, the keyboard, every action through the page with its CSRF token
(and refused without it, or when actions are off), the audit log, a restart that keeps the
history, the task killed at its hard time limit shown with its name, auth (basic, a trusted
proxy's header, that header ignored without --trusted-header), and hostile input (markup in a
task name, non-UTF-8 records, garbage and oversize requests, wrong methods)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from qdeploy import App
from qdeploy.beat.entry import dynamic_spec
from qdeploy.beat.store import BeatStore
from qdeploy.ops.history import HistoryStore
from tests.e2e.webdriver import Browser
from tests.integration.conftest import REPO, redis_server, wait_until  # noqa: F401 - fixture
from tests.integration.history_tasks import XSS_NAME
from tests.integration.workers import Master

APP = "tests.integration.history_tasks:app"
USER, PASSWORD = "admin", "pa55"
WIDTHS = (1024, 1280, 1920)
PAGES = ("/tasks", "/workers", "/queues", "/charts", "/schedule", "/dead", "/audit")
HEADER_RGB = bytes([0x1f, 0x3a, 0x5f])
STATIC = REPO / "qdeploy" / "ops" / "dashboard" / "static"


# -- the parts ---------------------------------------------------------------------------------
class Dashboard:
    """`python -m qdeploy dashboard --port 0 ...` as a subprocess; its URL read from its banner."""

    def __init__(self, url: str, namespace: str, cwd: Path, *args: str):
        env = dict(os.environ, QDEPLOY_NAMESPACE=namespace, QDEPLOY_BROKER=url, PYTHONPATH=str(REPO),
                   PYTHONUNBUFFERED="1")
        env.pop("QDEPLOY_CONFIG", None)
        env.pop("QDEPLOY_DASHBOARD_AUTH", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "qdeploy", "dashboard", "--port", "0", "-A", APP, *args],
                                     env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        banner = self.proc.stdout.readline()
        assert banner.startswith("dashboard on http://127.0.0.1:"), banner + self.proc.stdout.read()
        self.base = banner.split()[2].rstrip("/")
        self.port = int(self.base.rsplit(":", 1)[1])
        self.login = self.base.replace("http://", f"http://{USER}:{PASSWORD}@")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class InProcess:
    """A dashboard served from a thread of this process (the variants: other auth, actions off)."""

    def __init__(self, app, **flags):
        from qdeploy.ops.dashboard import Options, build

        self.server = build(app, Options.parse(port=0, **flags))
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class World:
    def __init__(self, redis_url, namespace, tmp, master, app, store, ids, dash):
        self.redis_url, self.namespace, self.tmp = redis_url, namespace, tmp
        self.master, self.app, self.store, self.ids, self.dash = master, app, store, ids, dash
        self.owner = master.argv[master.argv.index("-n") + 1]


def basic(user=USER, password=PASSWORD) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def call(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
         length: bool = True):
    """(status, headers, body) of one request, sent exactly as given (http.client: duplicate
    headers, no Content-Length...)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True, skip_host="Host" in (headers or {}))
        for key, value in (headers or {}).items():
            for v in value if isinstance(value, list) else [value]:
                conn.putheader(key, v)
        if body is not None and length:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        reply = conn.getresponse()
        return reply.status, reply.headers, reply.read()
    finally:
        conn.close()


def get_json(port: int, path: str, headers=None):
    status, _, body = call(port, "GET", path, headers if headers is not None else basic())
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def session_token(port: int, headers=None) -> str:
    return get_json(port, "/api/session", headers)["csrf"]


def post(port: int, action: str, args: dict, token: str | None, headers=None):
    h = dict(headers if headers is not None else basic(), **{"Content-Type": "application/json"})
    if token is not None:
        h["X-CSRF-Token"] = token
    return call(port, "POST", f"/api/action/{action}", h, json.dumps(args).encode())


def refused(reply, status: int, text: str = "") -> None:
    code, headers, body = reply
    assert code == status, (code, body[:300])
    error = json.loads(body)["error"]
    assert "\n" not in error and text in error, error


def finished(store, ids, states=("SUCCESS", "FAILURE")):
    def check():
        got = store.get_many(ids)
        return got if all(r is not None and r["state"] in states for r in got) else None
    return check


@pytest.fixture(scope="module")
def world(redis_server, tmp_path_factory):  # noqa: F811
    namespace = f"dash{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("dashboard")
    master = Master(redis_server.url, namespace, tmp, "--allow-root", "-A", APP, "-c", "2").ready()
    app = App("htest", broker=redis_server.url, namespace=namespace)
    store = HistoryStore(redis_server.client(), namespace)
    ids = {f"add{i}": app.send_task("h.add", (i, i)).id for i in range(20)}
    ids["fail"] = app.send_task("h.fail", ("no <b>way</b>",)).id
    ids["flaky"] = app.send_task("h.flaky", ("f1",)).id
    ids["stuck"] = app.send_task("h.stuck", (30,), time_limit=1).id
    ids["xss"] = app.send_task(XSS_NAME, ("<script>document.title='pwned'</script>",)).id
    ids["once"] = app.send_task("h.once", ("o1",)).id
    last = (app.signature("h.add", (1, 2)) | app.signature("h.add", (3,))).apply_async()
    ids["chain2"], ids["chain1"] = last.id, last.parent.id
    ids["dead"] = app.send_task("h.unknown", (1,)).id  # no such task: dead-lettered
    ids["later"] = app.send_task("h.add", (5, 5), queue="later", countdown=3600).id  # scheduled, nobody consumes it
    BeatStore(app.transport).put("dash-tick", dynamic_spec("dash-tick", "h.add", 3600.0, args=(40, 2)))
    wanted = [v for k, v in ids.items() if k not in ("dead", "later")]
    wait_until(finished(store, wanted), 30, what="every task in the history")
    dash = Dashboard(redis_server.url, namespace, tmp, "--auth", f"{USER}:{PASSWORD}", "--allow-actions",
                     "--show-args", "--refresh", "0.5")
    w = World(redis_server.url, namespace, tmp, master, app, store, ids, dash)
    yield w
    w.dash.stop()
    (tmp / "master.log").write_text(master.output())  # kills it if a test left it running; kept for a failed run


@pytest.fixture(scope="module")
def browser():
    b = Browser(1280, 900)
    yield b
    b.close()


def open_page(b: Browser, world: World, path: str) -> None:
    b.get(world.dash.login + path)
    b.wait("return document.getElementById('updated').textContent.startsWith('updated')", 15,
           f"the first update of {path}")


def rows(b: Browser, table: str = "tasks-table") -> list[list[str]]:
    return b.js(f"return [...document.querySelectorAll('#{table} tbody tr')].map(tr => [...tr.cells].map(c => c.textContent))")


OVERFLOW = """
const w = window.innerWidth, bad = [];
for (const e of document.querySelectorAll('body *')) {
  const r = e.getBoundingClientRect();
  if (r.width === 0 && r.height === 0) continue;
  const name = e.tagName + (e.id ? '#' + e.id : '') + (e.className && typeof e.className === 'string' ? '.' + e.className : '');
  if (r.right > w + 0.5) bad.push(name + ' right=' + Math.round(r.right));
  if (!['INPUT', 'SELECT', 'TEXTAREA', 'HTML', 'BODY'].includes(e.tagName) && e.clientWidth > 0
      && e.scrollWidth > e.clientWidth + 1) bad.push(name + ' clips ' + e.scrollWidth + '>' + e.clientWidth);
}
return {scroll: document.documentElement.scrollWidth, inner: w, bad: bad.slice(0, 10)};
"""


# -- layout --------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", WIDTHS)
def test_nothing_is_cut_off_from_1024_to_1920_px(world, browser, width, tmp_path):
    browser.size(width, 900)
    for path in (*PAGES, f"/task/{world.ids['stuck']}", f"/task/{world.ids['flaky']}"):
        open_page(browser, world, path)
        if path in ("/charts", "/queues"):
            browser.wait("return [...document.images].filter(i => i.offsetParent).every(i => i.complete && i.naturalWidth > 0)",
                         10, "the charts")
        if path == "/workers":
            browser.wait("return document.querySelectorAll('#workers article').length > 0", 10, "the node")
        layout = browser.js(OVERFLOW)
        assert layout["inner"] == width, layout
        assert layout["scroll"] <= layout["inner"] and not layout["bad"], (path, layout)
        if path in ("/tasks", "/workers"):
            shot = tmp_path / f"dashboard-{width}{path.replace('/', '-')}.png"
            shot.write_bytes(browser.screenshot())
            png_width, _, bpp, pixels = _png_pixels(shot.read_bytes())
            assert png_width == width
            top, right = pixels[5], browser.js("return document.documentElement.clientWidth") - 1  # left of a scrollbar
            assert top[:3] == HEADER_RGB and top[right * bpp:right * bpp + 3] == HEADER_RGB  # the bar spans the width
            colours = {row[x:x + 3] for row in pixels[::10] for x in range(0, width * bpp, bpp * 7)}
            assert len(colours) > 20  # tables and text: not a blank page
    # the check itself finds what it is for: an element wider than the window, a cell that clips
    browser.js("document.querySelector('main').append(Object.assign(document.createElement('div'), {id: 'wide'}));"
               "document.getElementById('wide').style.width = '3000px'")
    assert any(b.startswith("DIV#wide right=") for b in browser.js(OVERFLOW)["bad"])


# -- tasks ---------------------------------------------------------------------------------------
def test_search_filters_sort_and_paging(world, browser):
    browser.size(1280, 900)
    open_page(browser, world, "/tasks")
    everything = rows(browser)
    assert len(everything) >= 27 and {"h.add", "h.fail", "h.stuck", XSS_NAME} <= {r[0] for r in everything}
    browser.type("#search input[name=q]", "h.fail")
    browser.keys("enter")
    browser.wait("return location.search === '?q=h.fail' && document.querySelectorAll('#tasks-table tbody tr').length === 1",
                 10, "the narrowed list")
    (row,) = rows(browser)
    assert row[0] == "h.fail" and row[1] == world.ids["fail"] and row[2] == "FAILURE" and row[6] == world.owner
    assert "1–1 of 1 tasks" in browser.text("#tasks-info")
    # by id, by worker, by arguments (shown: --show-args), by state, oldest first, paging
    browser.type("#search input[name=q]", world.ids["stuck"])
    browser.keys("enter")
    browser.wait("return document.querySelector('#tasks-table tbody tr td').textContent === 'h.stuck'", 10, "by id")
    browser.click("#clear")
    browser.type("#search input[name=args]", "o1")
    browser.click("#search button[type=submit]")
    browser.wait("return document.querySelectorAll('#tasks-table tbody tr').length === 1", 10, "by arguments")
    assert rows(browser)[0][0] == "h.once"
    # 23 successes (20 adds, flaky, the chain's two steps): pages of 10, oldest first
    browser.get(world.dash.login + f"/tasks?node={world.owner}&state=SUCCESS&sort=started&per_page=10")
    browser.wait("return document.getElementById('tasks-info').textContent.includes(' of 23 ')", 10, "filtered list")
    seen: list[str] = []
    for page in (1, 2, 3):
        if page > 1:
            browser.click("#next")
            browser.wait(f"return location.search.includes('page={page}') && "
                         f"document.getElementById('page-no').textContent === 'page {page}'", 10, f"page {page}")
            browser.wait("return document.getElementById('tasks-info').textContent.startsWith('" + str(page * 10 - 9) + "')",
                         10, "its rows")
        got = rows(browser)
        assert len(got) == (10 if page < 3 else 3) and all(r[2] == "SUCCESS" and r[6] == world.owner for r in got)
        assert [r[4] for r in got] == sorted(r[4] for r in got)  # oldest first
        assert browser.js("return document.getElementById('next').disabled") == (page == 3)
        seen += [r[1] for r in got]
    assert len(set(seen)) == 23 and world.ids["add0"] in seen[:2]
    assert browser.js("return document.querySelector('#search input[name=state][value=SUCCESS]').checked")
    assert browser.js("return document.querySelector('#search select[name=per_page]').value") == "10"
    # a time range: everything started in the last 15 minutes; nothing before an hour ago
    browser.get(world.dash.login + "/tasks?range=900")
    browser.wait("return document.querySelectorAll('#tasks-table tbody tr').length >= 27", 10, "last 15 minutes")
    until = int(time.time()) - 3600
    browser.get(world.dash.login + f"/tasks?range=custom&since={until - 3600}&until={until}")
    browser.wait("return document.getElementById('tasks-info').textContent.startsWith('no task matches')", 10, "empty range")
    assert browser.js("return !document.querySelector('.custom-range').hidden")


def test_live_updates_without_a_reload(world, browser):
    open_page(browser, world, "/tasks")
    browser.js("window.notReloaded = true")
    before = len(rows(browser))
    new = world.app.send_task("h.add", (100, 1)).id
    browser.wait(f"return [...document.querySelectorAll('#tasks-table a')].some(a => a.textContent === 'h.add' "
                 f"&& a.getAttribute('href') === '/task/{new}')", 15, "the new task in the list")
    assert browser.js("return window.notReloaded === true") and len(rows(browser)) == before + 1


def test_task_killed_at_its_hard_time_limit_shows_its_name(world, browser):
    open_page(browser, world, "/tasks?q=h.stuck")
    (row,) = rows(browser)
    assert row[0] == "h.stuck" and row[2] == "FAILURE" and row[5].endswith(" s")
    open_page(browser, world, f"/task/{world.ids['stuck']}")
    browser.wait("return document.getElementById('task-title').textContent === 'h.stuck'", 10, "the detail")
    fields = dict(rows(browser, "task-fields"))
    assert fields["Name"] == "h.stuck" and fields["Killed"].startswith("time limit")
    assert fields["Exception"].startswith("TimeLimitExceeded")


def test_task_detail_timeline_arguments_result_and_links(world, browser):
    open_page(browser, world, "/tasks?q=h.flaky")
    browser.click("#tasks-table tbody a")  # a link of the list: the page changes without a reload
    browser.wait("return location.pathname.startsWith('/task/') && document.querySelectorAll('#timeline li').length >= 6",
                 10, "the timeline")
    assert browser.js("return document.activeElement.id") == "h-task"  # focus moved to the new page's heading
    steps = browser.js("return [...document.querySelectorAll('#timeline li .what')].map(e => e.firstChild.textContent)")
    assert steps[0] == "sent" and steps[-1] == "success" and "retry" in steps and steps.count("started") == 2, steps
    fields = dict(rows(browser, "task-fields"))
    assert fields["Name"] == "h.flaky" and fields["Retries"] == "1" and fields["Runtime"] != "-"
    assert int(fields["Child pid"]) > 1 and fields["Worker"] == world.owner
    assert "Not kept" in browser.js("return document.getElementById('task-args').textContent")  # history_args = failures

    open_page(browser, world, f"/task/{world.ids['fail']}")
    browser.wait("return document.getElementById('task-result').textContent.includes('ValueError')", 10, "the result")
    result = browser.js("return document.getElementById('task-result').textContent")
    assert "no <b>way</b>" in result and "Traceback" in result and "raise ValueError(message)" in result
    assert browser.js("return document.querySelectorAll('#task-result b').length") == 0  # markup stayed text

    open_page(browser, world, f"/task/{world.ids['chain1']}")
    browser.wait("return document.getElementById('task-links').textContent.includes('Children')", 10, "the chain link")
    browser.click(f"#task-links a[href='/task/{world.ids['chain2']}']")
    browser.wait("return document.getElementById('task-links').textContent.includes('Parent')", 10, "the parent link")
    assert browser.js("return location.pathname") == f"/task/{world.ids['chain2']}"
    assert browser.js(f"return !!document.querySelector(\"#task-links a[href='/task/{world.ids['chain1']}']\")")


def test_markup_in_a_task_name_stays_text(world, browser):
    open_page(browser, world, "/tasks")
    names = [r[0] for r in rows(browser)]
    assert XSS_NAME in names
    assert browser.js("return document.querySelectorAll('#page-tasks img, #page-tasks script').length") == 0
    open_page(browser, world, f"/task/{world.ids['xss']}")
    browser.wait(f"return document.getElementById('task-title').textContent === {json.dumps(XSS_NAME)}", 10, "the title")
    assert "pwned" not in browser.js("return document.title")
    assert browser.js("return document.querySelectorAll('#page-task img, #page-task script').length") == 0
    svg = call(world.dash.port, "GET", "/chart/runtimes.svg?hours=1", basic())[2].decode()
    ET.fromstring(svg)  # well-formed: the name was escaped
    assert "<img" not in svg and "h.&lt;img/src=x/onerror=" in svg


# -- keyboard --------------------------------------------------------------------------------------
def test_keyboard_skip_link_focus_and_keys(world, browser):
    open_page(browser, world, "/tasks")
    browser.js("document.activeElement.blur(); window.scrollTo(0, 0)")
    browser.keys("tab")
    skip = browser.js("const e = document.activeElement, r = e.getBoundingClientRect(); return [e.className, "
                      "e.textContent, r.top >= 0 && r.bottom <= innerHeight, getComputedStyle(e).outlineStyle]")
    assert skip[:3] == ["skip", "Skip to content", True] and skip[3] != "none"  # visible, with a visible focus ring
    browser.keys("enter")
    assert browser.js("return document.activeElement.id") == "main"
    browser.keys("tab")
    assert browser.js("return document.activeElement.name") == "q"
    browser.keys(*"h.fail", "enter")
    browser.wait("return location.search === '?q=h.fail'", 10, "a search by keyboard")
    browser.js("document.querySelector('#search input[value=FAILURE]').focus()")
    browser.keys("space")
    assert browser.js("return document.querySelector('#search input[value=FAILURE]').checked")
    ring = browser.js("return getComputedStyle(document.activeElement).outlineStyle")
    assert ring != "none"
    # every control of every page can take the focus (no click-only <div>s)
    for path in PAGES:
        open_page(browser, world, path)
        clickable = browser.js("return [...document.querySelectorAll('[onclick], .sort, button, a')].filter(e => e.offsetParent)"
                               ".filter(e => e.tabIndex < 0).map(e => e.outerHTML.slice(0, 80))")
        assert clickable == [], (path, clickable)
    # a nav link by keyboard: focus it, Enter
    browser.js("document.querySelector('#nav a[data-page=workers]').focus()")
    browser.keys("enter")
    browser.wait("return location.pathname === '/workers' && document.activeElement.id === 'h-workers'", 10,
                 "workers by keyboard")


# -- actions -------------------------------------------------------------------------------------
def test_retry_a_failed_task_through_the_page(world, browser):
    once = world.ids["once"]
    assert world.store.get(once)["state"] == "FAILURE"
    open_page(browser, world, f"/task/{once}")
    browser.wait("return [...document.querySelectorAll('#task-actions button')].some(b => b.textContent === 'Retry')", 10,
                 "the retry button")
    browser.click("#task-actions button.primary")
    browser.wait("return document.getElementById('notice').textContent.includes(': done')", 10, "the action's answer")
    record = wait_until(lambda: (r := world.store.get(once)) and r["state"] == "SUCCESS" and r, 15, what="the retried run")
    assert [a["state"] for a in record["attempts"]] == ["FAILURE"]
    assert world.app.AsyncResult(once).get(timeout=5) == 2
    # a second click (or a second dashboard) cannot send it again: it is not a FAILURE any more
    refused(post(world.dash.port, "retry", {"id": once}, session_token(world.dash.port)), 409, "only a FAILURE is retried")


def test_the_same_post_without_the_token_is_refused(world, browser):
    open_page(browser, world, "/tasks")
    script = """const done = arguments[arguments.length - 1];
      fetch(location.origin + '/api/action/revoke', {method: 'POST', headers: arguments[0], body: JSON.stringify({id: 'x-1'})})
        .then(r => r.json().then(b => done([r.status, b.error])), e => done(String(e)));"""
    status, error = browser.js_async(script, {"Content-Type": "application/json"})
    assert status == 403 and "CSRF" in error
    status, _ = browser.js_async(script, {"Content-Type": "application/json", "X-CSRF-Token": "forged"})
    assert status == 403
    port, token = world.dash.port, session_token(world.dash.port)
    refused(post(port, "revoke", {"id": "x-1"}, None), 403, "CSRF")
    refused(post(port, "revoke", {"id": "x-1"}, token + "x"), 403, "CSRF")
    refused(post(port, "revoke", {"id": "x-1"}, token, {**basic(), "Origin": "http://evil.example"}), 403, "cross-origin")
    refused(post(port, "revoke", {"id": "x-1"}, token, {**basic(), "Sec-Fetch-Site": "cross-site"}), 403, "cross-site")
    h = {**basic(), "Content-Type": "text/plain", "X-CSRF-Token": token}
    refused(call(port, "POST", "/api/action/revoke", h, b'{"id": "x-1"}'), 415)
    assert post(port, "revoke", {"id": "x-1"}, token)[0] == 200  # the same, done right
    # a token is worth nothing for another user, and nothing after a restart (checked in the restart test)
    assert session_token(port) == token


def test_terminate_a_running_task(world, browser):
    task_id = world.app.send_task("h.sleep", (60,)).id
    wait_until(lambda: (world.store.get(task_id) or {}).get("state") == "STARTED", 15, what="the running task")
    # the Workers page: the node's processes, the task it runs now, its child exits and config
    open_page(browser, world, "/workers")
    browser.wait(f"return !!document.querySelector(\"#workers a[href='/task/{task_id}']\")", 15, "the current task")
    node = browser.js("const a = document.querySelector('#workers article'); return {"
                      "h: a.querySelector('h2').textContent, text: a.textContent, "
                      "procs: a.querySelectorAll('.node-grid > div:nth-child(2) table.grid')[0].tBodies[0].rows.length, "
                      "exits: [...a.querySelectorAll('.node-grid > div:nth-child(3) table.grid tbody tr')]"
                      ".map(r => [...r.cells].map(c => c.textContent))}")
    assert node["h"].endswith(world.owner) and node["procs"] == 2
    assert ["time_limit", "1"] in node["exits"] and ["crash", "0"] in node["exits"]  # h.stuck's child, killed at 1 s
    for text in ("Pool2", "Tasks failed", "max tasks per child", "h.sleep", "graceful timeout"):
        assert text in node["text"], text
    open_page(browser, world, f"/task/{task_id}")
    browser.wait("return [...document.querySelectorAll('#task-actions button')].map(b => b.textContent).join() === "
                 "'Revoke,Terminate'", 10, "the buttons of a running task")
    browser.click("#task-actions button.danger")
    assert browser.js("return document.getElementById('confirm').open")
    assert browser.js("return document.activeElement.id") == "confirm-cancel"  # the safe choice has the focus
    browser.click("#confirm-ok")
    record = wait_until(lambda: (r := world.store.get(task_id)) and r["state"] == "REVOKED" and r, 20, what="REVOKED")
    assert record["name"] == "h.sleep"
    browser.wait("return document.getElementById('task-fields').textContent.includes('REVOKED')", 15, "the page updated")


def test_dead_letters_requeue_and_purge(world, browser):
    dead = world.ids["dead"]
    open_page(browser, world, "/dead")
    browser.wait(f"return !!document.querySelector('#dead-table input[value=\"{dead}\"]')", 10, "the dead letter")
    browser.click(f"#dead-table input[value='{dead}']")
    browser.click("#dead-actions button[data-key='btn:Requeue selected']")
    browser.wait("return document.getElementById('notice').textContent.includes('(1 requeued, 0 skipped)')", 10, "requeued")
    # the worker dead-letters it again (still no such task): then purge, confirmed in the dialog
    wait_until(lambda: world.app.transport.client.llen(world.app.transport.keys.dead) >= 1, 15, what="dead again")
    browser.click("#dead-actions button.danger")
    browser.click("#confirm-ok")
    browser.wait("return document.getElementById('notice').textContent.includes('purged')", 10, "purged")
    assert world.app.transport.client.llen(world.app.transport.keys.dead) == 0


def test_schedule_disable_enable_and_run_now(world, browser):
    store = BeatStore(world.app.transport)
    open_page(browser, world, "/schedule")
    browser.wait("return document.getElementById('schedule-table').textContent.includes('dash-tick')", 10, "the entry")
    browser.click("button[data-key='sched:dash-tick:toggle']")
    wait_until(lambda: "dash-tick" in store.load()[2], 10, what="disabled")
    browser.wait("return document.querySelector(\"button[data-key='sched:dash-tick:toggle']\").textContent === 'Enable'",
                 10, "the Enable button")
    browser.click("button[data-key='sched:dash-tick:toggle']")
    wait_until(lambda: "dash-tick" not in store.load()[2], 10, what="enabled again")
    browser.click("button[data-key='sched:dash-tick:run']")
    text = browser.wait("const t = document.getElementById('notice').textContent; return t.includes('sent as') && t", 10)
    sent = text.split("sent as ")[1].rstrip(")")
    assert world.app.AsyncResult(sent).get(timeout=10) == 42
    refused(post(world.dash.port, "schedule-run", {"name": "no-such"}, session_token(world.dash.port)), 409, "no schedule")


def test_grow_and_shrink_the_pool_by_keyboard(world, browser):
    open_page(browser, world, "/workers")
    key = f"node:{world.owner}:grow"
    browser.wait(f"return !!document.querySelector(\"button[data-key='{key}']\")", 10, "the node's buttons")
    browser.js(f"document.querySelector(\"button[data-key='{key}']\").focus()")
    browser.keys("enter")
    pool = lambda: world.app.transport.client.get(world.app.transport.keys.prefix("heartbeat") + world.owner)  # noqa: E731
    wait_until(lambda: json.loads(pool() or b"{}").get("pool") == 3, 15, what="a pool of 3")
    # the page updated in place, and the focus is still on the button it was on
    browser.wait("return document.querySelector('#workers table.kv').textContent.includes('Pool3')", 15, "pool 3 shown")
    assert browser.js("return document.activeElement.dataset.key") == key
    browser.js(f"document.querySelector(\"button[data-key='node:{world.owner}:shrink']\").focus()")
    browser.keys("space")
    wait_until(lambda: json.loads(pool() or b"{}").get("pool") == 2, 15, what="a pool of 2 again")
    refused(post(world.dash.port, "pool-grow", {"node": "nobody@nowhere", "n": 1}, session_token(world.dash.port)), 404)
    refused(post(world.dash.port, "pool-grow", {"node": world.owner, "n": 10**6}, session_token(world.dash.port)), 400)


def test_every_action_is_in_the_audit_log(world, browser):
    open_page(browser, world, "/audit")
    browser.wait("return document.querySelectorAll('#audit-table tbody tr').length >= 8", 10, "the audit rows")
    entries = rows(browser, "audit-table")
    actions = {r[3] for r in entries}
    assert {"retry", "revoke", "dead-requeue", "dead-purge", "schedule-disable", "schedule-enable", "schedule-run",
            "pool-grow", "pool-shrink"} <= actions, actions
    assert all(r[1] == USER and r[2] == "127.0.0.1" for r in entries)
    assert any(r[3] == "retry" and r[5].startswith("refused") for r in entries)  # refusals are logged too
    log = world.store.audit_log(100)
    assert log[0]["user"] == USER and isinstance(log[0]["time"], float)


# -- actions off, auth ---------------------------------------------------------------------------
def test_actions_are_refused_when_off(world, browser):
    off = InProcess(world.app, auth=f"{USER}:{PASSWORD}")
    try:
        token = session_token(off.port)
        refused(post(off.port, "revoke", {"id": "x-2"}, token), 403, "actions are off")
        refused(post(off.port, "retry", {"id": world.ids["fail"]}, token), 403, "actions are off")
        b = browser
        b.get(f"http://{USER}:{PASSWORD}@127.0.0.1:{off.port}/task/{world.ids['fail']}")
        b.wait("return document.getElementById('task-title').textContent === 'h.fail'", 10, "the task page")
        assert b.js("return document.querySelectorAll('main button.primary, main button.danger').length") == 0
        assert b.js("return document.getElementById('who').textContent") == f"signed in as {USER} · read-only"
        assert b.js("return document.getElementById('task-args').textContent").startswith("Hidden")  # no --show-args
        # and without --show-args the API keeps arguments to itself too
        record = get_json(off.port, f"/api/task/{world.ids['fail']}")["record"]
        assert "args" not in record and "call" not in json.dumps(get_json(off.port, "/api/tasks?q=h.fail"))
        refused(call(off.port, "GET", "/api/tasks?args=o1", basic()), 400, "--show-args")
    finally:
        off.stop()


def test_basic_auth(world):
    port = world.dash.port
    status, headers, _ = call(port, "GET", "/api/session")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert call(port, "GET", "/", basic(USER, "wrong"))[0] == 401
    assert call(port, "GET", "/", basic("other", PASSWORD))[0] == 401
    assert call(port, "GET", "/", {"Authorization": "Basic %%%"})[0] == 401
    assert call(port, "GET", "/", {"Authorization": "Bearer abc"})[0] == 401
    assert get_json(port, "/api/session")["user"] == USER
    # without --trusted-header the header is never read: it neither logs in nor replaces basic auth
    assert call(port, "GET", "/api/session", {"X-Forwarded-User": USER})[0] == 401
    assert get_json(port, "/api/session", {**basic(), "X-Forwarded-User": "mallory"})["user"] == USER


def test_trusted_header_auth(world):
    proxied = InProcess(world.app, trusted_header="X-Forwarded-User", allow_actions=True)
    elsewhere = InProcess(world.app, trusted_header="X-Forwarded-User", trusted_proxies=("10.0.0.0/8",))
    anonymous = InProcess(world.app)
    try:
        port = proxied.port
        alice = {"X-Forwarded-User": "alice@example.com"}
        session = get_json(port, "/api/session", alice)
        assert session["user"] == "alice@example.com" and session["actions"] is True
        assert call(port, "GET", "/api/session")[0] == 401  # no header: not through the proxy
        for bad in ("al ice", "alice\x7f", "x" * 129, "", "alice,bob"):
            assert call(port, "GET", "/api/session", {"X-Forwarded-User": bad})[0] in (400, 401), bad
        assert call(port, "GET", "/api/session", {"X-Forwarded-User": ["alice", "bob"]})[0] == 400
        # an action by the proxy's user, with its token (a token is per user)
        bob_token = session_token(port, {"X-Forwarded-User": "bob"})
        refused(post(port, "revoke", {"id": "x-3"}, bob_token, alice), 403, "CSRF")
        assert post(port, "revoke", {"id": "x-3"}, session["csrf"], {**alice, "X-Forwarded-For": "203.0.113.9"})[0] == 200
        entry = world.store.audit_log(1)[0]
        assert entry["user"] == "alice@example.com" and entry["from"] == "203.0.113.9 via 127.0.0.1"
        assert post(port, "revoke", {"id": "x-3"}, session["csrf"], {**alice, "X-Forwarded-For": "<b>x</b>"})[0] == 200
        assert world.store.audit_log(1)[0]["from"] == "127.0.0.1"  # not an address list: not believed
        # from an address that is not a trusted proxy: refused, not ignored
        refused(call(elsewhere.port, "GET", "/api/session", alice), 403, "trusted proxy")
        # without --trusted-header: ignored (an anonymous read-only dashboard stays anonymous)
        assert get_json(anonymous.port, "/api/session", alice)["user"] is None
        refused(post(anonymous.port, "revoke", {"id": "x-3"}, session_token(anonymous.port, alice), alice), 403, "off")
    finally:
        for server in (proxied, elsewhere, anonymous):
            server.stop()


def test_bad_flags_one_line_and_non_zero(world):
    env = dict(os.environ, PYTHONPATH=str(REPO), QDEPLOY_BROKER=world.redis_url, QDEPLOY_NAMESPACE=world.namespace)
    env.pop("QDEPLOY_DASHBOARD_AUTH", None)
    cases = [
        (["--port", "http"], "--port 'http': expected a port number"),
        (["--port", "70000"], "--port 70000"),
        (["--refresh", "0"], "--refresh"),
        (["--refresh", "nan"], "--refresh"),
        (["--auth", "admin"], "--auth: expected USER:PASS"),
        (["--auth", ":pw"], "--auth: expected USER:PASS"),
        (["--auth", "a b:pw"], "--auth: the user name"),
        (["--trusted-header", "X Forwarded"], "--trusted-header"),
        (["--trusted-header", "Authorization"], "cannot name the user"),
        (["--trusted-header", "X-User", "--trusted-proxy", "not-an-ip"], "--trusted-proxy 'not-an-ip'"),
        (["--trusted-proxy", "10.0.0.1"], "only with --trusted-header"),
        (["--allow-actions"], "--allow-actions needs --auth"),
        (["--bind", "256.1.1.1"], "cannot listen on 256.1.1.1"),
        (["--bind", "127.0.0.1", "--port", str(world.dash.port)], "cannot listen on"),
    ]
    for args, text in cases:
        proc = subprocess.run([sys.executable, "-m", "qdeploy", "dashboard", "-A", APP, *args], env=env, cwd=world.tmp,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and text in proc.stderr, (args, proc.stderr)
        assert proc.stderr.startswith("qdeploy dashboard: error: ")


# -- hostile input -------------------------------------------------------------------------------
def test_hostile_requests(world):
    port, auth = world.dash.port, basic()
    # URLs: too long for us, too long for http.server, garbage in every parameter
    refused(call(port, "GET", "/api/tasks?q=" + "a" * 9000, auth), 414)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(100).split(b" ")[1] == b"414"
    for query, text in [("%ff%fe=1", "unknown parameter"), ("state=%3Cscript%3E", "is not one of"), ("page=-1", "page"),
                        ("per_page=1e309", "per_page"), ("since=nan", "since"), ("until=1e300", "until"),
                        ("q=" + "x" * 201, "at most 200"), ("q=%00", "printable"), ("q=a&q=b", "more than once"),
                        ("page=1.5", "whole numbers"), ("page=999999", "page"), ("&".join(f"p{i}=1" for i in range(50)), ""),
                        ("sort=name", "sort"), ("args=x&sort=-runtime", "sort")]:
        refused(call(port, "GET", "/api/tasks?" + query, auth), 400, text)
    refused(call(port, "GET", "/api/task/%ff%fe", auth), 400, "not a task id")
    refused(call(port, "GET", "/api/task/" + "a" * 300, auth), 400)
    refused(call(port, "GET", "/api/task/no-such-task", auth), 404)
    refused(call(port, "GET", "/api/charts?hours=2", auth), 400, "hours")
    refused(call(port, "GET", "/chart/queues.svg?hours=-1", auth), 400, "hours")
    refused(call(port, "GET", "/chart/../../etc/passwd", auth), 404)
    refused(call(port, "GET", "/static/../server.py", auth), 404)
    refused(call(port, "GET", "/api//session", auth), 404)
    # methods
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
        status, headers, _ = call(port, method, "/api/tasks", auth)
        assert status == 405 and headers["Allow"] == "GET, HEAD, POST", method
    refused(call(port, "POST", "/api/tasks", {**auth, "Content-Type": "application/json"}, b"{}"), 405)
    status, headers, body = call(port, "HEAD", "/tasks", auth)
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
    # bodies
    token = session_token(port)
    h = {**auth, "Content-Type": "application/json", "X-CSRF-Token": token}
    refused(call(port, "POST", "/api/action/revoke", h, b"x" * 20000), 413)
    refused(call(port, "POST", "/api/action/revoke", {**h, "Content-Length": "99999999999999999999"}, b"{}", length=False), 413)
    refused(call(port, "POST", "/api/action/revoke", {**h, "Content-Length": "abc"}, b"{}", length=False), 411)
    refused(call(port, "POST", "/api/action/revoke", h, None), 411)
    refused(call(port, "POST", "/api/action/revoke", h, b"\xff\xfe not json"), 400, "not JSON")
    refused(call(port, "POST", "/api/action/revoke", h, b"[" * 10000), 400, "not JSON")
    refused(call(port, "POST", "/api/action/revoke", h, b"[1, 2]"), 400, "JSON object")
    refused(call(port, "POST", "/api/action/launch-missiles", h, b"{}"), 404, "unknown action")
    refused(call(port, "POST", "/api/action/revoke", h, json.dumps({"id": "bad id\n"}).encode()), 400, "task id")
    refused(call(port, "POST", "/api/action/revoke", h, json.dumps({"id": "x", "terminate": "yes"}).encode()), 400)
    refused(call(port, "POST", "/api/action/dead-requeue", h, json.dumps({"ids": ["x"] * 1001}).encode()), 400)
    refused(call(port, "POST", "/api/action/dead-purge", h, b"{}"), 400, "confirm")
    refused(call(port, "POST", "/api/action/schedule-enable", h, json.dumps({"name": "\x00" * 10}).encode()), 409)
    # still serving
    assert get_json(port, "/api/session")["user"] == USER


def test_non_utf8_and_garbage_history_records(world, browser):
    client, keys = world.store.client, world.store.keys
    good_id = "f" * 8 + "-garbage-record"
    client.hset(keys.rec, mapping={good_id: b"FAILURE\tw\xff@h\tbad\xfename\tq\xff\tnot-a-pid\t1\t\t\xff\xfe\texc \xff",
                                   b"\xff\xfe-bad-id": b"SUCCESS\tw@h\tok\t\t\t1",
                                   "short-record": b"\xff"})
    now = int(time.time() * 1e6)
    client.zadd(keys.time, {good_id: now, b"\xff\xfe-bad-id": now, "short-record": now, "no-record-at-all": now})
    client.zadd(keys.combos, {b"FAILURE\tw\xff@h\tbad\xfename": 0})
    client.zadd(keys.combo("") .encode() + b"FAILURE\tw\xff@h\tbad\xfename", {good_id: now})
    client.lpush(world.app.transport.keys.dead, b"\xff\xfe not json")
    client.zadd(keys.queues, {b"\xff not json": time.time()})
    client.lpush(keys.audit, b"\xff\xfe")
    try:
        port = world.dash.port
        page = get_json(port, "/api/tasks")
        shown = [r for r in page["rows"] if r["id"] == good_id]
        assert shown and shown[0]["name"] == "bad\ufffdname" and shown[0]["node"] == "w\ufffd@h" and "pid" not in shown[0]
        get_json(port, "/api/tasks?q=bad")  # answered (its combo's key is not UTF-8: no rows, no error)
        assert get_json(port, f"/api/task/{good_id}")["record"]["state"] == "FAILURE"
        for path in ("/api/overview", "/api/dead", "/api/queues?hours=1", "/api/audit", "/api/charts?hours=24",
                     "/api/workers", "/chart/queues.svg?hours=1", "/chart/dead.svg?hours=1"):
            status, _, body = call(port, "GET", path, basic())
            assert status == 200, (path, body[:200])
        open_page(browser, world, "/tasks")
        assert "bad\ufffdname" in {r[0] for r in rows(browser)}
        assert "update failed" not in browser.js("return document.getElementById('updated').textContent")
        open_page(browser, world, "/dead")
        assert "unreadable dead-letter record" in browser.js("return document.getElementById('dead-table').textContent")
    finally:
        client.hdel(keys.rec, good_id, b"\xff\xfe-bad-id", "short-record")
        client.zrem(keys.time, good_id, b"\xff\xfe-bad-id", "short-record", "no-record-at-all")
        client.zrem(keys.combos, b"FAILURE\tw\xff@h\tbad\xfename")
        client.delete(keys.combo("").encode() + b"FAILURE\tw\xff@h\tbad\xfename")
        client.delete(world.app.transport.keys.dead)
        client.zrem(keys.queues, b"\xff not json")
        client.lrem(keys.audit, 0, b"\xff\xfe")


# -- serving -------------------------------------------------------------------------------------
def test_security_headers_and_everything_served_locally(world, browser):
    status, headers, body = call(world.dash.port, "GET", "/tasks", basic())
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
    html = body.decode()
    assert "<script>" not in html and "<script src=\"/static/app.js\"></script>" in html and " style=" not in html
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "innerHTML" not in text, name  # no CDN, never HTML
    svg_headers = call(world.dash.port, "GET", "/chart/throughput.svg?hours=1", basic())[1]
    assert svg_headers["Content-Type"] == "image/svg+xml; charset=utf-8"
    assert "script-src" not in svg_headers["Content-Security-Policy"]  # default-src 'none': no script in a chart
    open_page(browser, world, "/charts")
    browser.wait("return [...document.images].filter(i => i.offsetParent).every(i => i.complete && i.naturalWidth > 0)",
                 10, "the charts")
    origins = browser.js("return [...new Set(performance.getEntriesByType('resource').map(e => new URL(e.name).origin))]")
    assert origins == [f"http://127.0.0.1:{world.dash.port}"]
    assert browser.js("return document.querySelectorAll('#runtimes-table tbody tr').length") >= 4


def test_queues_and_charts(world, browser):
    open_page(browser, world, "/queues")
    browser.wait("return document.getElementById('queues-table').textContent.includes('later')", 10, "the queues")
    queues = {r[0]: r for r in rows(browser, "queues-table")}
    assert queues["later"][1:4] == ["0", "0", "1"] and "default" in queues  # ready, in flight, scheduled
    browser.wait("return document.querySelectorAll('#samples-table tbody tr td.empty').length === 0", 10, "a sample")
    assert any(r[1] == "later" and r[4] == "1" for r in rows(browser, "samples-table"))  # over time, sampled into Redis
    assert "later" in call(world.dash.port, "GET", "/chart/queues.svg?hours=1", basic())[2].decode()
    throughput = call(world.dash.port, "GET", "/chart/throughput.svg?hours=3", basic())[2].decode()
    assert " success</title>" in throughput and " failure</title>" in throughput
    failures = call(world.dash.port, "GET", "/chart/failures.svg?hours=6", basic())[2].decode()
    assert " failure</title>" in failures and " success</title>" not in failures
    data = get_json(world.dash.port, "/api/charts?hours=24")
    assert sum(m["success"] for m in data["series"]) >= 23 and sum(m["failure"] for m in data["series"]) >= 4
    stuck = next(r for r in data["runtimes"] if r["name"] == "h.stuck")
    assert 0.5 <= stuck["p50"] <= 2.5  # its bucket: 1 to 2.5 s
    open_page(browser, world, "/charts")
    browser.js("const s = document.querySelector('select.hours[data-for=charts]'); s.value = '6';"
               "s.dispatchEvent(new Event('change'))")
    browser.wait("return document.getElementById('chart-runtimes').src.includes('hours=6')", 10, "6 hours")


def test_a_restart_keeps_the_history(world, browser):
    before = get_json(world.dash.port, "/api/tasks?per_page=200")
    old_token = session_token(world.dash.port)
    world.dash.stop()
    world.dash = Dashboard(world.redis_url, world.namespace, world.tmp, "--auth", f"{USER}:{PASSWORD}", "--allow-actions",
                           "--show-args", "--refresh", "0.5")
    after = get_json(world.dash.port, "/api/tasks?per_page=200")
    assert after["total"] == before["total"] and [r["id"] for r in after["rows"]] == [r["id"] for r in before["rows"]]
    refused(post(world.dash.port, "revoke", {"id": "x-4"}, old_token), 403, "CSRF")  # tokens die with the process
    open_page(browser, world, f"/task/{world.ids['flaky']}")
    browser.wait("return document.querySelectorAll('#timeline li').length >= 6", 10, "the timeline after the restart")
    assert len(get_json(world.dash.port, "/api/audit")["rows"]) >= 8  # the audit log lives in Redis too


def test_shut_a_node_down_through_the_page(world, browser):
    open_page(browser, world, "/workers")
    key = f"node:{world.owner}:shutdown"
    browser.wait(f"return !!document.querySelector(\"button[data-key='{key}']\")", 10, "the shutdown button")
    browser.click(f"button[data-key='{key}']")
    browser.keys("escape")  # the dialog: Escape cancels
    assert not browser.js("return document.getElementById('confirm').open") and world.master.proc.poll() is None
    browser.click(f"button[data-key='{key}']")
    browser.click("#confirm-ok")
    assert world.master.proc.wait(30) == 0  # a warm shutdown
    browser.wait("return document.getElementById('workers-info').textContent.startsWith('0 node')", 20, "no node online")
    assert world.store.audit_log(1)[0]["action"] == "shutdown"


def test_wheel_ships_the_page(tmp_path):
    import zipfile

    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True)
    (wheel,) = dist.glob("qdeploy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "app.js", "style.css"):
        assert f"qdeploy/ops/dashboard/static/{name}" in names
    assert "qdeploy/ops/dashboard/__init__.py" in names and "qdeploy/ops/dashboard.py" not in names
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("qdeploy/ops/dashboard/static/app.js") == (STATIC / "app.js").read_bytes()


def test_binds_loopback_by_default(redis_server):  # noqa: F811
    from qdeploy.ops.dashboard import Options

    assert Options.parse().bind == "127.0.0.1"
    app = App("htest", broker=redis_server.url, namespace="bind-test")
    server = InProcess(app)
    try:
        assert server.server.server_address[0] == "127.0.0.1"
        # no auth: only an IP address or localhost in Host (a DNS-rebinding page sends its own name)
        for host in (f"127.0.0.1:{server.port}", "localhost", f"localhost:{server.port}", "[::1]:5555", "10.1.2.3"):
            assert call(server.port, "GET", "/api/session", {"Host": host})[0] == 200, host
        for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example", "a b", "[::1", ""):
            refused(call(server.port, "GET", "/api/session", {"Host": host}), 421, "DNS rebinding")
    finally:
        server.stop()
    guarded = InProcess(app, auth=f"{USER}:{PASSWORD}")  # with auth a rebound page has no credentials
    try:
        assert call(guarded.port, "GET", "/api/session", {"Host": "dash.example.com", **basic()})[0] == 200
        refused(call(guarded.port, "GET", "/api/session", {"Host": "evil.example"}), 401)
    finally:
        guarded.stop()


def _png_pixels(data: bytes):
    """(width, height, bytes per pixel, rows) of an 8-bit, non-interlaced PNG: enough for a screenshot."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 3
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride, out, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        out.append(bytes(line))
        prev = line
    return width, height, bpp, out
