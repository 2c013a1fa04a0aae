"""`qdeploy dashboard` in a real headless Chromium (Debian `chromium`): the page renders the
live nodes and queues from its JSON endpoint; a screenshot is taken and inspected. Also: basic
auth, read-only, 127.0.0.1 by default."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zlib

import pytest

from tests.integration.conftest import REPO, free_port, redis_server, wait_until  # noqa: F401 - fixture
from tests.integration.workers import Master

CHROMIUM = shutil.which("chromium")


@pytest.fixture
def live(redis_server, tmp_path):  # noqa: F811
    namespace = f"dash{os.getpid()}"
    node = Master(redis_server.url, namespace, tmp_path, "--allow-root", "-c", "1").ready()
    port = free_port()
    env = dict(os.environ, QDEPLOY_NAMESPACE=namespace, QDEPLOY_BROKER=redis_server.url, PYTHONPATH=str(REPO),
               QDEPLOY_DASHBOARD_AUTH="admin:pa55")
    dash = subprocess.Popen([sys.executable, "-m", "qdeploy", "dashboard", "--port", str(port), "-A",
                             "tests.integration.tasks:app"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _status(base + "/") == 401, 10, what="the dashboard")
    from qdeploy import App

    app = App("itest", broker=redis_server.url, namespace=namespace)
    app.send_task("t.pid", queue="images", countdown=300)
    app.send_task("t.crash_unknown")  # unknown task: dead-lettered, a FAILURE
    yield base, node, namespace
    dash.terminate()
    dash.wait(10)
    node.proc.kill()
    node.proc.wait()


def _status(url, auth=None, method="GET") -> int:
    request = urllib.request.Request(url, method=method)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _get_json(url, auth):
    request = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.load(reply)


def _chromium(*args) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    profile = tempfile.mkdtemp(prefix="qdeploy-chromium-")
    try:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile}", "--window-size=1280,900", "--virtual-time-budget=4000", *args],
                              capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _png_pixels(data: bytes):
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG: enough for a screenshot."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", None
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
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
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
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def test_dashboard_in_headless_chromium(live, tmp_path):
    base, node, _ = live
    owner = node.argv[node.argv.index("-n") + 1]
    wait_until(lambda: any(n["owner"] == owner for n in _get_json(base + "/api/state", "admin:pa55")["nodes"]), 10,
               what="the node in the dashboard's state")
    def failure_shown():
        state = _get_json(base + "/api/state", "admin:pa55")
        return state if any(t["state"] == "FAILURE" for t in state["tasks"]["failed"]) or state["dead"] else None

    state = wait_until(failure_shown, 15, what="the failed task in the dashboard's state")
    assert {q["queue"]: q["scheduled"] for q in state["queues"]}["images"] == 1

    url = base.replace("http://", "http://admin:pa55@") + "/"
    dom = _chromium("--dump-dom", url)
    assert owner in dom.stdout, dom.stdout[-2000:] + dom.stderr[-2000:]
    assert "images" in dom.stdout and "updated " in dom.stdout and "update failed" not in dom.stdout

    shot = tmp_path / "dashboard.png"
    _chromium(f"--screenshot={shot}", url)
    data = shot.read_bytes()
    assert len(data) > 5000
    width, height, bpp, rows = _png_pixels(data)
    assert (width, height) == (1280, 900)
    colours = {row[x:x + 3] for row in rows[::10] for x in range(0, width * bpp, bpp * 7)}
    assert len(colours) > 20  # header, tables and text: not a blank page
    assert rows[20][:3] == bytes([0x1f, 0x3a, 0x5f])  # the header bar's colour is at the top


def test_auth_read_only_and_headers(live):
    base, _, _ = live
    assert _status(base + "/api/state") == 401
    assert _status(base + "/api/state", "admin:wrong") == 401
    assert _status(base + "/api/state", "admin:pa55") == 200
    assert _status(base + "/", "admin:pa55", method="POST") == 405
    assert _status(base + "/nope", "admin:pa55") == 404
    request = urllib.request.Request(base + "/", headers={"Authorization": "Basic " + base64.b64encode(b"admin:pa55").decode()})
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert "default-src 'self'" in reply.headers["Content-Security-Policy"]
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert b"<script>" not in reply.read()  # no inline script: the CSP can forbid it


def test_binds_loopback_by_default(redis_server):  # noqa: F811
    from qdeploy.core.broker import Broker
    from qdeploy.ops.dashboard import make_server

    server = make_server(Broker(redis_server.url, "x"), port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
