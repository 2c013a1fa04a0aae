"""qdeploy in a Flask project (`pip install 'qdeploy[flask]'`): Flask's own Celery pattern.

    # app/__init__.py
    from flask import Flask
    from qdeploy.contrib.flask import init_app

    def create_app():
        flask_app = Flask(__name__)
        flask_app.config.from_mapping(CELERY=dict(broker_url="redis://127.0.0.1:6379/0", task_ignore_result=True))
        init_app(flask_app)            # flask_app.extensions["qdeploy"] (and ["celery"]) is the App
        return flask_app

    # app/tasks.py
    from qdeploy import shared_task
    from flask import current_app

    @shared_task
    def add(x, y):
        return current_app.config["OFFSET"] + x + y   # runs inside the Flask app context

    # make_celery.py, what the worker imports:  qdeploy -A make_celery worker -l INFO
    from app import create_app
    flask_app = create_app()
    celery_app = flask_app.extensions["qdeploy"]

Each task of the app runs inside `flask_app.app_context()` (`FlaskTask.__call__`), so it can use
`current_app`, Flask-SQLAlchemy's `db.session` and the like, in the worker as in a view.
"""

from __future__ import annotations

from typing import Any

from qdeploy.core.app import App
from qdeploy.core.task import Task


class FlaskTask(Task):
    """A base task class that runs each task inside its Flask app's context (`flask_app`, set on
    the subclass `init_app` makes; `FlaskTask.for_app(flask_app)` makes one yourself)."""

    flask_app: Any = None

    def __call__(self, *args, **kwargs):
        flask_app = type(self).flask_app
        if flask_app is None:
            raise RuntimeError(f"{self.name}: FlaskTask without a Flask app: use init_app(flask_app) or "
                               "FlaskTask.for_app(flask_app) as the app's task class")
        with flask_app.app_context():
            return self.run(*args, **kwargs)

    @classmethod
    def for_app(cls, flask_app) -> type:
        return type("FlaskTask", (cls,), {"flask_app": flask_app, "__module__": cls.__module__})


def init_app(flask_app, *, config_key: str = "CELERY", app: App | None = None, **settings) -> App:
    """The qdeploy App of `flask_app`: its tasks run in the Flask app context, its settings come
    from `flask_app.config[config_key]` (a dict of Celery setting names, as Flask's docs show)
    and `settings`; it becomes the current app (what `@shared_task` tasks use)."""
    if app is None:
        app = App(flask_app.name, task_cls=FlaskTask.for_app(flask_app))
    else:
        app.Task = FlaskTask.for_app(flask_app)
    config = flask_app.config.get(config_key)
    if config is not None:
        if not isinstance(config, dict):
            raise TypeError(f"flask_app.config[{config_key!r}] must be a dict of settings, not {type(config).__name__}")
        app.config_from_object(config)
    if settings:
        app.conf.update(settings)
    app.set_default()
    flask_app.extensions["qdeploy"] = app
    flask_app.extensions.setdefault("celery", app)
    return app
