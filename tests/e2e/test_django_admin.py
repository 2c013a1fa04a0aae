"""The Django admin in a real headless Chromium (chromedriver: tests/e2e/webdriver.py): log into a
real Django project's admin (tests/contrib/djangoproj.py, served by `manage.py runserver`), add
a periodic task that runs every 2 s, and watch a beat and a worker that were running before it
existed fire it; then find its runs on the task results page and open one."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from tests.contrib.djangoproj import environ, make_project, migrate
from tests.integration.conftest import make_server  # noqa: F401 - fixture
from tests.seeds.procs import QDEPLOY, Proc

import django  # noqa: F401 - the test extra brings it: missing is an error, not a skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def site(tmp_path, make_server):  # noqa: F811
    root = make_project(tmp_path / "site")
    env = environ(make_server().url)
    migrate(root, env, admin_password="s3cret-pw")
    port = _free_port()
    procs = [Proc([sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], root, env),
             Proc([QDEPLOY, "-A", "proj", "worker", "-l", "INFO", "--allow-root", "-c", "1"], root, env),
             Proc([QDEPLOY, "-A", "proj", "beat", "-l", "INFO", "--allow-root"], root, env)]
    try:
        procs[0].wait_for("Quit the server with", 30)
        procs[1].wait_for("ready: 1 children")
        procs[2].wait_for("ready: 0 entries")
        yield f"http://127.0.0.1:{port}", procs[1], procs[2]
    finally:
        for proc in procs:
            proc.stop()


def test_add_a_2s_interval_in_the_admin_and_a_running_beat_and_worker_fire_it(site, tmp_path):
    from tests.e2e.webdriver import Browser

    base, worker, beat = site
    browser = Browser(1280, 1000)
    try:
        browser.get(f"{base}/admin/login/?next=/admin/qdeploy/periodictask/add/")
        browser.type("#id_username", "admin")
        browser.type("#id_password", "s3cret-pw")
        browser.click("input[type=submit]")
        browser.wait("return location.pathname === '/admin/qdeploy/periodictask/add/'", 15, "the add page")
        browser.type("#id_name", "add every 2s")
        browser.click("#id_task option[value='app1.tasks.add']")
        browser.click("#id_kind option[value='interval']")
        browser.type("#id_every", "2s")
        browser.type("#id_args", "[1, 9]")
        browser.click("input[name=_save]")
        browser.wait("return location.pathname === '/admin/qdeploy/periodictask/'", 15, "back on the list")
        assert "add every 2s" in browser.text("tr.periodic-row[data-name='add every 2s']")
        browser.screenshot(tmp_path / "periodic-tasks.png")

        beat.wait_for("sent add every 2s: app1.tasks.add[", 20)  # the running beat saw the change live
        beat.wait_for("sent add every 2s: app1.tasks.add[", 10, count=2)
        done = worker.wait_for("Task app1.tasks.add[", 15)
        assert "succeeded" in done and done.endswith(": 10")

        browser.get(f"{base}/admin/qdeploy/taskresult/?task=app1.tasks.add")
        browser.wait("return document.querySelectorAll('#result_list tr.result-row').length >= 1", 15, "a result row")
        assert browser.text("#result_list tr.result-row td.task-state") == "SUCCESS"
        browser.click("#result_list tr.result-row th a")
        browser.wait("return !!document.getElementById('task-result')", 15, "the task's page")
        assert browser.text("#task-result") == "10" and browser.text("#task-name") == "app1.tasks.add"
        shot = browser.screenshot(tmp_path / "result.png")
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000

        browser.get(f"{base}/admin/qdeploy/periodictask/")  # disable it in the page: the beat stops sending
        browser.click("tr.periodic-row[data-name='add every 2s'] button[value=disable]")
        browser.wait("return !!document.querySelector(\"tr.periodic-row[data-name='add every 2s'] button[value=enable]\")",
                     15, "the Enable button")
        time.sleep(6)  # beat.max_interval (5 s): by then every running beat has reloaded the schedule
        settled = sum("sent add every 2s" in line for line in beat.lines)
        time.sleep(5)  # two more periods: nothing is sent while it is disabled
        assert sum("sent add every 2s" in line for line in beat.lines) == settled
    finally:
        browser.close()
