"""A real Django project (tests/contrib/djangoproj.py: seed 004's layout) on real workers and
beats: the seed's files run with only the import line changed, from the project directory with
no PYTHONPATH; `python manage.py qdeploy worker|beat|schedule`; the Celery settings qdeploy does
not support are warned about at start; the admin's result and periodic-task pages (Django's test
client, in the project's own process) with their bad inputs and permissions; database
connections after fork and a connection the PostgreSQL server drops (a real server, a private
database)."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid

import pytest

from tests.contrib.djangoproj import POSTGRES, environ, make_project, manage, migrate
from tests.integration.conftest import wait_until
from tests.seeds.procs import QDEPLOY, Proc

import django  # noqa: F401 - the test extra brings it: missing is an error, not a skip


@pytest.fixture
def redis_url(make_server):
    return make_server().url


def shell(root, env, code: str) -> dict:
    """Run `code` in the project's own process (manage.py shell); it prints one JSON line last."""
    done = manage(root, env, "shell", "-c", textwrap.dedent(code))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def project(tmp_path, redis_url):
    root = make_project(tmp_path / "site")
    env = environ(redis_url)
    migrate(root, env, admin_password="pw")
    return root, env


def test_the_seed_layout_runs_with_only_the_import_line_changed(project):
    root, env = project
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "-l", "INFO", "--allow-root", "-c", "2"], root, env)
    try:
        worker.wait_for("ready: 2 children")
        got = shell(root, env, """
            import json
            from app1.tasks import simple_task
            from proj.celery import debug_task
            r = simple_task.delay(1, 9)
            d = debug_task.delay()
            print(json.dumps({"sum": r.get(timeout=15), "debug": d.get(timeout=15), "queue": simple_task.app.default_queue}))
        """)
        assert got == {"sum": 10, "debug": None, "queue": "default"}
        worker.wait_for("Task app1.tasks.simple_task[")
        worker.wait_for("Request: Request(id=")  # debug_task's print, in the worker's log
    finally:
        assert worker.stop() == 0
    warnings = "\n".join(line for line in worker.lines if "WARNING" in line)
    assert "CELERY_CACHE_BACKEND is not supported by qdeploy" in warnings
    assert "CELERY_BEAT_SCHEDULER = 'django_celery_beat.schedulers:DatabaseScheduler' is ignored" in warnings
    assert "CELERY_RESULT_BACKEND = 'django-db': results stay in Redis" in warnings
    assert "CELERY_WORKER_MAX_TASKS_PER_CHILD" not in warnings and "CELERY_TIMEZONE" not in warnings


def test_manage_py_qdeploy_worker_beat_and_schedule(project):
    root, env = project
    added = manage(root, env, "qdeploy", "schedule", "add", "tick", "app1.tasks.add", "--every", "1s", "--args", "[20, 22]")
    assert added.returncode == 0 and added.stdout.strip() == "added tick", added.stdout + added.stderr
    worker = Proc([sys.executable, "manage.py", "qdeploy", "worker", "-l", "info",
                   "--allow-root", "-c", "1"], root, env)
    beat = Proc([sys.executable, "manage.py", "qdeploy", "beat", "-l", "info", "--allow-root"], root, env)
    try:
        beat.wait_for("sent tick: app1.tasks.add[", 20)
        worker.wait_for("Task app1.tasks.add[", 20)
        assert "succeeded" in worker.wait_for("Task app1.tasks.add[") and ": 42" in worker.wait_for("Task app1.tasks.add[")
    finally:
        assert beat.stop() == 0
        assert worker.stop() == 0
    listed = manage(root, env, "qdeploy", "schedule", "list", "--json")
    assert json.loads(listed.stdout)["entries"][0]["name"] == "tick"
    bad = manage(root, env, "qdeploy", "worker", "--autoscale=1,5")
    assert bad.returncode == 2 and "MAX (1) is below MIN (5)" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


ADMIN_SCRIPT = """
import json, time
from django.contrib.auth.models import Permission, User
from django.test import Client
from app1.tasks import add, boom

ok, bad = add.delay(2, 3), boom.delay()
ok.get(timeout=15)
try:
    bad.get(timeout=15)
except Exception:
    pass
time.sleep(1.0)  # the master writes the task history every ~200 ms
c = Client()
c.force_login(User.objects.get(username="admin"))
out = {}
def page(url):
    r = c.get(url)
    return r.status_code, r.content.decode()
status, html = page("/admin/qdeploy/taskresult/")
out["list"] = [status, ok.id in html, bad.id in html, "app1.tasks.add" in html]
found = page("/admin/qdeploy/taskresult/?q=boom")[1]
out["search_name"] = [bad.id in found, ok.id in found]
out["search_id"] = ok.id in page(f"/admin/qdeploy/taskresult/?q={ok.id}")[1]
out["by_state"] = [bad.id in page("/admin/qdeploy/taskresult/?state=FAILURE")[1],
                   ok.id in page("/admin/qdeploy/taskresult/?state=FAILURE")[1]]
found = page("/admin/qdeploy/taskresult/?task=app1.tasks.add")[1]
out["by_task"] = ok.id in found and bad.id not in found
out["by_date"] = ok.id in page("/admin/qdeploy/taskresult/?date=today")[1]
out["bad_state"] = page("/admin/qdeploy/taskresult/?state=<script>")[0]
out["bad_page"] = page("/admin/qdeploy/taskresult/?p=zzz")[0]
detail = page(f"/admin/qdeploy/taskresult/{bad.id}/change/")
out["detail"] = [detail[0], "ValueError" in detail[1], "Traceback" in detail[1], "boom from app1" in detail[1]]
out["detail_ok"] = '<pre id="task-result">5</pre>' in page(f"/admin/qdeploy/taskresult/{ok.id}/change/")[1]
out["detail_missing"] = page("/admin/qdeploy/taskresult/00000000-0000-0000-0000-000000000000/change/")[0]
out["detail_junk"] = page("/admin/qdeploy/taskresult/..%2F..%2Fetc/change/")[0]

form = {"name": "every2", "task": "app1.tasks.add", "kind": "interval", "every": "2s", "args": "[1, 9]",
        "kwargs": "{}", "enabled": "on"}
out["add"] = c.post("/admin/qdeploy/periodictask/add/", form).status_code
out["duplicate"] = "exists already" in c.post("/admin/qdeploy/periodictask/add/", form).content.decode()
bads = {"json": dict(form, name="b1", args="[1"), "cron": dict(form, name="b2", kind="crontab", cron="99 * * * *"),
        "solar": dict(form, name="b3", kind="solar", solar_event="sunrise", latitude="95", longitude="0"),
        "name": dict(form, name="a\\nb"), "long": dict(form, name="x" * 201), "none": dict(form, name="b4", task=""),
        "every": dict(form, name="b5", every="-3s"), "kw": dict(form, name="b6", kwargs="[]")}
out["bad_forms"] = {k: c.post("/admin/qdeploy/periodictask/add/", v).status_code for k, v in bads.items()}
melbourne = dict(form, name="add-at-melbourne-sunset", kind="solar", solar_event="sunset", latitude="-37.81753",
                 longitude="144.96715", args="[16, 16]")
out["solar"] = c.post("/admin/qdeploy/periodictask/add/", melbourne).status_code
out["cron"] = c.post("/admin/qdeploy/periodictask/add/", dict(form, name="monday", kind="crontab",
                                                              cron="30 7 * * mon")).status_code
listing = page("/admin/qdeploy/periodictask/")[1]
out["listed"] = ["every2" in listing, "b1" in listing, "b2" in listing]
out["kinds"] = ["solar: sunset at -37.81753, 144.96715" in listing, "crontab: 30 7 * * mon" in listing]
edit = dict(form, kind="crontab", cron="*/5 * * * *", timezone="Asia/Shanghai", args="[2, 2]")
out["edit"] = c.post("/admin/qdeploy/periodictask/every2/change/", edit).status_code
out["edited"] = "*/5 * * * *" in page("/admin/qdeploy/periodictask/")[1]
out["disable"] = c.post("/admin/qdeploy/periodictask/", {"action": "disable", "name": "every2"}).status_code
out["disabled"] = 'value="enable"' in page("/admin/qdeploy/periodictask/")[1]
c.post("/admin/qdeploy/periodictask/", {"action": "enable", "name": "every2"})
run = c.post("/admin/qdeploy/periodictask/", {"action": "run", "name": "every2"}, follow=True).content.decode()
out["run"] = "sent now as task" in run.lower()
def act(action, name):
    return c.post("/admin/qdeploy/periodictask/", {"action": action, "name": name}, follow=True).content.decode().lower()
out["run_missing"] = "no periodic task" in act("run", "nope")
out["bad_action"] = "unknown action" in act("rm -rf", "every2")
out["delete"] = c.post("/admin/qdeploy/periodictask/", {"action": "delete", "name": "every2"}).status_code
out["deleted"] = 'data-name="every2"' not in page("/admin/qdeploy/periodictask/")[1]
out["no_csrf"] = Client(enforce_csrf_checks=True)
client = out.pop("no_csrf")
client.force_login(User.objects.get(username="admin"))
out["csrf"] = client.post("/admin/qdeploy/periodictask/", {"action": "run", "name": "every2"}).status_code

staff = User.objects.create_user("staff", password="pw", is_staff=True)
viewer = Client(); viewer.force_login(staff)
out["no_perm"] = [viewer.get("/admin/qdeploy/taskresult/").status_code,
                  viewer.get("/admin/qdeploy/periodictask/add/").status_code]
staff.user_permissions.add(Permission.objects.get(codename="view_periodictask"))
viewer = Client(); viewer.force_login(User.objects.get(username="staff"))
out["view_only"] = [viewer.get("/admin/qdeploy/periodictask/").status_code,
                    viewer.post("/admin/qdeploy/periodictask/", {"action": "run", "name": "x"}).status_code,
                    viewer.get("/admin/qdeploy/periodictask/add/").status_code]
out["anonymous"] = Client().get("/admin/qdeploy/taskresult/").status_code
print(json.dumps(out))
"""


def test_the_admin_reads_results_and_edits_periodic_tasks_in_redis(project):
    root, env = project
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "-l", "INFO", "--allow-root", "-c", "1"], root, env)
    try:
        worker.wait_for("ready: 1 children")
        out = shell(root, env, ADMIN_SCRIPT)
    finally:
        worker.stop()
    assert out["list"] == [200, True, True, True]
    assert out["search_name"] == [True, False] and out["search_id"] and out["by_task"] and out["by_date"]
    assert out["by_state"] == [True, False]
    assert out["bad_state"] == 200 and out["bad_page"] == 200
    assert out["detail"] == [200, True, True, True] and out["detail_ok"]
    assert out["detail_missing"] == 404 and out["detail_junk"] == 404
    assert out["add"] == 302 and out["duplicate"]
    assert out["bad_forms"] == dict.fromkeys(("json", "cron", "solar", "name", "long", "none", "every", "kw"), 200)
    assert out["listed"] == [True, False, False], "nothing half-written: no bad entry stored"
    assert out["solar"] == 302 and out["cron"] == 302 and out["kinds"] == [True, True], out["kinds"]
    assert out["edit"] == 302 and out["edited"] and out["disable"] == 302 and out["disabled"]
    assert out["run"] and out["run_missing"] and out["bad_action"]
    assert out["delete"] == 302 and out["deleted"]
    assert out["csrf"] == 403
    assert out["no_perm"] == [403, 403] and out["view_only"] == [200, 403, 403]
    assert out["anonymous"] == 302, "to the login page"
    entries = manage(root, env, "qdeploy", "schedule", "list", "--json")
    assert sorted(e["name"] for e in json.loads(entries.stdout)["entries"]) == ["add-at-melbourne-sunset", "monday"]


# -- database connections in children ---------------------------------------------------------

FORK_TASKS = """

from qdeploy.signals import worker_init

MASTER = {}


@worker_init.connect
def open_in_master(**kwargs):  # the master uses the database before it forks (a common pattern)
    from django.db import connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()" if connection.vendor == "postgresql" else "SELECT 1")
        MASTER["pid"] = cursor.fetchone()[0]
    MASTER["conn"] = connection.connection


@shared_task
def inherited():
    from django.db import connection
    from app1.models import Banner
    Banner.objects.count()
    return {"fresh": connection.connection is not MASTER.get("conn"), "master_pid": MASTER.get("pid")}
"""


def test_sqlite_children_close_what_they_inherit(tmp_path, redis_url):
    root = make_project(tmp_path / "site")
    (root / "app1" / "tasks.py").write_text((root / "app1" / "tasks.py").read_text() + FORK_TASKS)
    env = environ(redis_url)
    migrate(root, env)
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "-l", "INFO", "--allow-root", "-c", "2"], root, env)
    try:
        worker.wait_for("ready: 2 children")
        got = shell(root, env, """
            import json
            from app1.tasks import inherited
            print(json.dumps([inherited.delay().get(timeout=15) for _ in range(4)]))
        """)
    finally:
        assert worker.stop() == 0
    assert all(r["fresh"] for r in got) and got[0]["master_pid"] == 1


@pytest.fixture
def pg_database():
    """A private PostgreSQL database on the machine's server (127.0.0.1:5432, trust auth)."""
    import psycopg  # the test extra brings it
    name = f"qdeploy_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not running on 127.0.0.1:5432 ({exc}); start it: "
                    "pg_ctlcluster --skip-systemctl-redirect 15 main start")
    admin.execute(f'CREATE DATABASE "{name}"')
    yield name, admin
    admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()")
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


def _alive(admin, pid: int) -> bool:
    return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] == 1


def test_postgres_a_connection_the_server_drops_is_replaced_before_the_next_task(tmp_path, redis_url, pg_database):
    name, admin = pg_database
    root = make_project(tmp_path / "site", databases=POSTGRES.replace('"NAME": "test"', f'"NAME": "{name}"'))
    (root / "app1" / "tasks.py").write_text((root / "app1" / "tasks.py").read_text() + FORK_TASKS)
    env = environ(redis_url)
    migrate(root, env)
    worker = Proc([QDEPLOY, "-A", "proj", "worker", "-l", "INFO", "--allow-root", "-c", "1"], root, env)
    try:
        worker.wait_for("ready: 1 children")
        first = shell(root, env, """
            import json
            from app1.tasks import backend_pid, inherited
            print(json.dumps({"a": backend_pid.delay().get(timeout=15), "b": backend_pid.delay().get(timeout=15),
                              "inherited": inherited.delay().get(timeout=15)}))
        """)
        child_pid, master_pid = first["a"]["pid"], first["inherited"]["master_pid"]
        assert first["b"]["pid"] == child_pid, "CONN_MAX_AGE = 600: the child keeps its connection between tasks"
        assert child_pid != master_pid, "the child opened its own connection"
        assert _alive(admin, master_pid), "closing the inherited connection did not end the master's session"
        assert first["inherited"]["fresh"]
        # the server drops the child's connection while it is idle (a restart, an idle timeout...)
        assert admin.execute("SELECT pg_terminate_backend(%s)", (child_pid,)).fetchone()[0] is True
        wait_until(lambda: not _alive(admin, child_pid), 10, what="the backend to go")
        after = shell(root, env, """
            import json
            from app1.tasks import backend_pid
            r = backend_pid.delay()
            print(json.dumps({"state": (r.get(timeout=15, propagate=False), r.state)[1], "result": r.result}))
        """)
        assert after["state"] == "SUCCESS", after
        assert after["result"]["pid"] != child_pid and after["result"]["os_pid"] == first["a"]["os_pid"], \
            "the same child, a new connection"
    finally:
        assert worker.stop() == 0
    assert "server closed the connection" not in worker.output and "terminating connection" not in worker.output
