"""A small W3C WebDriver client for Debian's chromedriver + headless chromium (no selenium):
start chromedriver on a free port, open a session, navigate, run scripts, wait for a condition,
find elements, type, press keys, click, read text, resize, take screenshots. Used by the
dashboard's and the Django admin's browser tests (tests/e2e/test_dashboard.py,
tests/e2e/test_django_admin.py)."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
KEYS = {"enter": "\ue007", "tab": "\ue004", "space": " ", "escape": "\ue00c", "backspace": "\ue003",
        "up": "\ue013", "down": "\ue015", "left": "\ue012", "right": "\ue014", "shift": "\ue008"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(AssertionError):
    pass


class Browser:
    def __init__(self, width: int = 1280, height: int = 900):
        if CHROMIUM is None or CHROMEDRIVER is None:
            pytest.fail("chromium and chromedriver are needed (apt-get install -y chromium chromium-driver)")
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="qdeploy-webdriver-")
        self.session: str | None = None
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._call("GET", "/status")["value"].get("ready"):
                    break
            except (OSError, WebDriverError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise WebDriverError("chromedriver did not come up")
            time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]}}}}
        self.session = self._call("POST", "/session", caps)["value"]["sessionId"]

    # -- the protocol --------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return json.load(reply)
        except urllib.error.HTTPError as exc:
            raise WebDriverError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def _s(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)["value"]

    # -- pages and scripts ---------------------------------------------------------------------
    def get(self, url: str) -> None:
        self._s("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return self._s("GET", "/url")

    @property
    def source(self) -> str:
        return self._s("GET", "/source")

    def js(self, script: str, *args):
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def js_async(self, script: str, *args):
        return self._s("POST", "/execute/async", {"script": script, "args": list(args)})

    def wait(self, script: str, timeout: float = 10, what: str = ""):
        """Run `script` until it returns something truthy (that is returned)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script)
            if value:
                return value
            if time.monotonic() > deadline:
                raise WebDriverError(f"timed out after {timeout}s waiting for {what or script}")
            time.sleep(0.05)

    def size(self, width: int, height: int) -> None:
        self._s("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, path=None) -> bytes:
        data = base64.b64decode(self._s("GET", "/screenshot"))
        if path is not None:
            with open(path, "wb") as fh:
                fh.write(data)
        return data

    # -- elements --------------------------------------------------------------------------------
    def find(self, css: str) -> str:
        return self._s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def find_all(self, css: str) -> list[str]:
        return [e[ELEMENT] for e in self._s("POST", "/elements", {"using": "css selector", "value": css})]

    def click(self, css: str, attempts: int = 5) -> None:
        """Click the element `css` finds; found again if a live update replaced it in between."""
        for attempt in range(attempts):
            try:
                return self._s("POST", f"/element/{self.find(css)}/click")
            except WebDriverError as exc:
                if "stale element reference" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05)

    def type(self, css: str, text: str, clear: bool = True) -> None:
        element = self.find(css)
        if clear:
            self._s("POST", f"/element/{element}/clear")
        self._s("POST", f"/element/{element}/value", {"text": text})

    def select(self, css: str, value: str) -> None:
        self.click(f"{css} option[value='{value}']")

    def text(self, css: str) -> str:
        return self._s("GET", f"/element/{self.find(css)}/text")

    def keys(self, *keys: str) -> None:
        """Press keys where the focus is: names ("enter", "tab", "space", "escape"...) or characters."""
        actions = []
        for key in keys:
            for char in [KEYS[key]] if key in KEYS else list(key):
                actions += [{"type": "keyDown", "value": char}, {"type": "keyUp", "value": char}]
        self._s("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})

    # -- the end -------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            if self.session:
                self._call("DELETE", f"/session/{self.session}")
        except (OSError, WebDriverError):
            pass
        self.session = None
        self.driver.terminate()
        try:
            self.driver.wait(10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    quit = close
