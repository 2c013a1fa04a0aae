"""A real Django project in a directory, in seed 004's layout (shared/seeds/004, "3.django用法"):

    manage.py  proj/{__init__,settings,urls,celery}.py  app1/{__init__,models,tasks}.py

proj/celery.py is the seed's, with only the import line changed; proj/__init__.py is the seed's;
settings.py holds the seed's CELERY_* settings (and seed 003's), with 'qdeploy.contrib.django'
where the seeds have django_celery_results / django_celery_beat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CELERY_PY = '''\
import os

from qdeploy import Celery  # the seed: from celery import Celery

# 导入django的配置参数
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')

app = Celery('proj')

# 从setting文件中读取以CELERY开头的老参数配置文件
app.config_from_object('django.conf:settings', namespace='CELERY')

# 自动发现django的app.tasks
app.autodiscover_tasks()


@app.task(bind=True)
def debug_task(self):
    print(f'Request: {self.request!r}')
'''

INIT_PY = '''\
# 初始化配置文件
from .celery import app as celery_app

__all__ = ('celery_app',)
'''

SETTINGS_PY = '''\
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
    "django.contrib.messages", "django.contrib.staticfiles",
    "qdeploy.contrib.django",   # the seeds: 'django_celery_results', 'django_celery_beat'
    "app1",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware", "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware", "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware", "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "proj.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": True,
              "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                                 "django.contrib.auth.context_processors.auth",
                                                 "django.contrib.messages.context_processors.messages"]}}]
DATABASES = {{DATABASES}}
STATIC_URL = "static/"
USE_TZ = True
TIME_ZONE = "Australia/Tasmania"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# seed 004's settings
CELERY_TIMEZONE = "Australia/Tasmania"
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_TIME_LIMIT = 30 * 60
CELERY_RESULT_BACKEND = 'django-db'
CELERY_CACHE_BACKEND = 'django-cache'
# seed 003's
CELERY_BROKER_URL = os.environ["SEED_BROKER"]
CELERY_ENABLE_UTC = False
CELERY_BEAT_SCHEDULER = 'django_celery_beat.schedulers:DatabaseScheduler'
CELERY_ACCEPT_CONTENT = ['application/json', ]
CELERY_TASK_SERIALIZER = 'json'
CELERY_RESULT_SERIALIZER = 'json'
CELERY_WORKER_MAX_TASKS_PER_CHILD = 100
CELERY_RESULT_EXPIRES = 0
{{EXTRA}}
'''

URLS_PY = '''\
from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
'''

MANAGE_PY = '''\
#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
'''

MODELS_PY = '''\
from django.db import models


class Banner(models.Model):  # seed 000's django_task reads banners
    link = models.CharField(max_length=200)
    is_show = models.BooleanField(default=True)
    orders = models.IntegerField(default=0)
'''

TASKS_PY = '''\
# -*- coding: utf-8 -*-
import os
import time

from django.db import connection

from qdeploy import shared_task  # the seed: from celery import shared_task


@shared_task
def simple_task(x, y):
    time.sleep(float(os.environ.get("SIMPLE_TASK_SLEEP", "0")))  # the seed sleeps 5 s
    return x + y


@shared_task
def add(x, y):
    return x + y


@shared_task
def backend_pid():
    """The database session this child's task runs on (PostgreSQL), and the banners it reads."""
    from app1.models import Banner

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()" if connection.vendor == "postgresql" else "SELECT 1")
        pid = cursor.fetchone()[0]
    return {"pid": pid, "banners": Banner.objects.count(), "os_pid": os.getpid()}


@shared_task
def boom():
    raise ValueError("boom from app1")
'''

SQLITE = '{"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}'
POSTGRES = ('{"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "test", "USER": "postgres", '
            '"HOST": "127.0.0.1", "PORT": 5432, "CONN_MAX_AGE": 600}}')


def make_project(root: Path, databases: str = SQLITE, extra: str = "", name: str = "proj", app1: str = "app1") -> Path:
    """The project `name` (seed 004: proj; seed 003: izone) with its Django app `app1`."""
    def text(source: str) -> str:
        return source.replace("proj", name).replace("app1", app1)

    (root / name).mkdir(parents=True)
    (root / app1 / "migrations").mkdir(parents=True)
    (root / "manage.py").write_text(text(MANAGE_PY))
    (root / name / "__init__.py").write_text(INIT_PY)
    (root / name / "celery.py").write_text(text(CELERY_PY))
    (root / name / "settings.py").write_text(text(SETTINGS_PY).replace("{{DATABASES}}", databases).replace("{{EXTRA}}", extra))
    (root / name / "urls.py").write_text(URLS_PY)
    (root / app1 / "__init__.py").write_text("")
    (root / app1 / "migrations" / "__init__.py").write_text("")
    (root / app1 / "models.py").write_text(MODELS_PY)
    (root / app1 / "tasks.py").write_text(text(TASKS_PY))
    return root


def migrate(root: Path, env: dict, admin_password: str | None = None) -> None:
    for args in (("makemigrations", "-v0", "--noinput"), ("migrate", "-v0", "--noinput")):
        done = manage(root, env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    if admin_password:
        done = manage(root, dict(env, DJANGO_SUPERUSER_PASSWORD=admin_password), "createsuperuser", "--noinput",
                      "--username", "admin", "--email", "admin@example.com")
        assert done.returncode == 0, done.stdout + done.stderr


def environ(broker: str, **extra) -> dict:
    """What the project's processes run with: no PYTHONPATH (the directory is the project)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDEPLOY_", "DJANGO_", "PYTHONPATH"))}
    env.update(SEED_BROKER=broker, **extra)
    return env


def manage(root: Path, env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
