"""qdeploy for Django projects: add `'qdeploy.contrib.django'` to INSTALLED_APPS.

* The Celery layout runs as it is (`proj/celery.py` with `config_from_object('django.conf:settings',
  namespace='CELERY')` and `autodiscover_tasks()`, `@shared_task` in `app1/tasks.py`), with the
  import line `from qdeploy import Celery`.
* Workers are safe with the database: each child closes the connections it inherited (without
  touching the parent's), and every task runs between two `close_old_connections()`, with Django's
  connection health check on for its first query, so a connection the server dropped (a
  restart, an idle timeout, `pg_terminate_backend`) is replaced instead of failing the task
  (`fixup.py`).
* `python manage.py qdeploy worker|beat|...` runs the qdeploy command line with the project's app.
* The admin shows task results (read from Redis: no table, no migration) and edits periodic
  tasks (beat's schedule in Redis: running beats see each change within beat.max_interval).
"""
