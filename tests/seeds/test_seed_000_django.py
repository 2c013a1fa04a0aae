"""Seed 000 (shared/seeds/000_*.txt), its Django section: `celery_task/celery.py` starts Django
itself (`os.environ.setdefault('DJANGO_SETTINGS_MODULE', ...)`, `django.setup()`) before it makes
the app with `broker=`, `backend=` and `include=['celery_task.tasks']`, sets `timezone =
'Asia/Shanghai'`, `enable_utc = False` and a `beat_schedule` entry 'django-task'; its
`django_task` reads Banner rows through the ORM and caches them. Started with the seed's two
commands, `celery worker -A celery_task -l info` and `celery beat -A celery_task -l info`,
renamed. Changed from the seed: the import lines, the settings module's name, the model's
module (the test project's app1, whose Banner has no image field) and the interval (2 s, not
10 s, to keep the test short)."""

from __future__ import annotations

from tests.contrib.djangoproj import environ, make_project, manage, migrate
from tests.seeds.procs import QDEPLOY, Proc

import django  # noqa: F401 - the test extra brings it: missing is an error, not a skip

CELERY_PY = '''\
# 启动django依赖
import os, django
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')
django.setup()

print('*********************')
from qdeploy import Celery  # the seed: from celery import Celery

broker = os.environ['SEED_BROKER']
backend = os.environ['SEED_BROKER']
include = ['celery_task.tasks',]
app = Celery(broker=broker, backend=backend, include=include)

# 时区
app.conf.timezone = 'Asia/Shanghai'
# 是否使用UTC
app.conf.enable_utc = False

# 任务的定时配置
from datetime import timedelta
from qdeploy.schedules import crontab  # the seed: from celery.schedules import crontab
app.conf.beat_schedule = {
    'django-task': {
        'task': 'celery_task.tasks.django_task',
        'schedule': timedelta(seconds=2),
        # 'schedule': crontab(hour=8, day_of_week=1),  # 每周一早八点
        'args': (),
    },
}
'''

TASKS_PY = '''\
from django.core.cache import cache
import datetime

from .celery import app
from app1 import models  # the seed: from apps.home import models


@app.task
def django_task():
    banner_query = models.Banner.objects.filter(is_show=True).order_by('-orders').all()
    banner_list_data = []
    for banner in banner_query:
        data = {
            'link': banner.link
        }
        banner_list_data.append(data)
    # 建立缓存
    cache.set('banner_list_data', banner_list_data)
    return f"{datetime.datetime.now().strftime('%Y-%m-%d:%H-%M-%S')} 缓存更新完成 {len(banner_list_data)}"
'''

BANNERS = ("from app1.models import Banner; "
           "[Banner.objects.create(link=f'/b{i}', is_show=i != 2, orders=i) for i in range(3)]")


def test_celery_py_that_starts_django_itself_and_beat_runs_the_orm_task(tmp_path, make_server):
    root = make_project(tmp_path / "site")
    env = environ(make_server().url)
    migrate(root, env)
    added = manage(root, env, "shell", "-c", BANNERS)
    assert added.returncode == 0, added.stdout + added.stderr
    (root / "celery_task").mkdir()
    (root / "celery_task" / "__init__.py").write_text("")
    (root / "celery_task" / "celery.py").write_text(CELERY_PY)
    (root / "celery_task" / "tasks.py").write_text(TASKS_PY)
    worker = Proc([QDEPLOY, "worker", "-A", "celery_task", "-l", "info", "--allow-root", "-c", "1"], root, env)
    beat = Proc([QDEPLOY, "beat", "-A", "celery_task", "-l", "info", "--allow-root"], root, env)
    try:
        worker.wait_for("ready: 1 children", 30)
        beat.wait_for("sent django-task: celery_task.tasks.django_task[", 20)
        line = worker.wait_for("Task celery_task.tasks.django_task[", 20)
        assert "succeeded" in line and line.endswith("缓存更新完成 2'"), line  # two banners are shown
    finally:
        assert beat.stop() == 0
        assert worker.stop() == 0
    assert "*********************" in worker.output, "celery.py ran as the seed wrote it"
