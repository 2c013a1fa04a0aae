"""Flask (seed 004's "4.flask用法": Flask-Celery is gone, write the glue yourself; qdeploy ships it):
a real Flask app served over HTTP calls a task from a view; a real worker runs it inside the
Flask app context (`current_app.config` works there), and another view reads the result."""

from __future__ import annotations

import json
import socket
import sys
import textwrap
import urllib.request

import pytest

from tests.integration.conftest import wait_until
from tests.seeds.procs import QDEPLOY, Proc, clean_env

import flask  # noqa: F401 - the test extra brings it: missing is an error, not a skip

APP_PY = '''
import os

from flask import Flask, jsonify, request

from qdeploy.contrib.flask import init_app


def create_app():
    flask_app = Flask(__name__)
    flask_app.config.from_mapping(
        OFFSET=100,
        CELERY=dict(broker_url=os.environ["SEED_BROKER"], task_ignore_result=False, imports=["flaskapp.tasks"]),
    )
    celery_app = init_app(flask_app)

    @flask_app.get("/add")
    def start_add():
        from flaskapp.tasks import add

        result = add.delay(int(request.args["x"]), int(request.args["y"]))
        return jsonify(id=result.id)

    @flask_app.get("/result/<task_id>")
    def task_result(task_id):
        result = celery_app.AsyncResult(task_id)
        return jsonify(ready=result.ready(), value=result.get(timeout=15) if result.ready() else None)

    return flask_app
'''

TASKS_PY = '''
from flask import current_app, has_app_context

from qdeploy import shared_task


@shared_task(ignore_result=False)
def add(x, y):
    return {"sum": x + y + current_app.config["OFFSET"], "in_context": has_app_context(), "app": current_app.name}
'''

MAKE_CELERY_PY = '''
from flaskapp import create_app

flask_app = create_app()
celery_app = flask_app.extensions["qdeploy"]
'''


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=20) as reply:
        return json.load(reply)


def test_a_view_calls_a_task_that_runs_in_the_flask_app_context(tmp_path, make_server):
    (tmp_path / "flaskapp").mkdir()
    (tmp_path / "flaskapp" / "__init__.py").write_text(textwrap.dedent(APP_PY))
    (tmp_path / "flaskapp" / "tasks.py").write_text(textwrap.dedent(TASKS_PY))
    (tmp_path / "make_celery.py").write_text(textwrap.dedent(MAKE_CELERY_PY))
    env = clean_env(SEED_BROKER=make_server().url)
    port = _port()
    web = Proc([sys.executable, "-c", f"from flaskapp import create_app; create_app().run(port={port})"], tmp_path, env)
    worker = Proc([QDEPLOY, "-A", "make_celery", "worker", "-l", "INFO", "--allow-root", "-c", "1"], tmp_path, env)
    try:
        worker.wait_for("ready: 1 children")
        wait_until(lambda: "Running on" in web.output, 20, what="the Flask server")
        task_id = _get(f"http://127.0.0.1:{port}/add?x=2&y=3")["id"]
        value = wait_until(lambda: (_get(f"http://127.0.0.1:{port}/result/{task_id}") or {}).get("value"), 20,
                           interval=0.2, what="the result")
        assert value == {"sum": 105, "in_context": True, "app": "flaskapp"}
        worker.wait_for(f"Task flaskapp.tasks.add[{task_id}] succeeded")
    finally:
        web.stop()
        assert worker.stop() == 0


def test_flask_task_without_an_app_and_a_bad_config_are_one_clear_error():
    from flask import Flask

    from qdeploy.contrib.flask import FlaskTask, init_app

    class Orphan(FlaskTask):
        name = "orphan"

        def run(self):
            return 1

    with pytest.raises(RuntimeError, match="FlaskTask without a Flask app"):
        Orphan()()
    flask_app = Flask("bad")
    flask_app.config["CELERY"] = "redis://nope"
    with pytest.raises(TypeError, match=r"config\['CELERY'\] must be a dict"):
        init_app(flask_app)
    flask_app.config["CELERY"] = {"task_serializer": "pickle"}
    with pytest.raises(ValueError, match="JSON only"):
        init_app(flask_app)
