"""Two unmanaged models, so the admin lists "Task results" and "Periodic tasks" under qdeploy
and Django creates their permissions: they have no table (managed = False, no migration). The
pages read Redis (store.py); the admin classes (admin.py) replace every ORM view."""

from django.db import models


class TaskResult(models.Model):
    task_id = models.CharField(max_length=255, primary_key=True)

    class Meta:
        managed = False
        verbose_name = "task result"
        verbose_name_plural = "task results"
        default_permissions = ("view", "delete")


class PeriodicTask(models.Model):
    name = models.CharField(max_length=200, primary_key=True)

    class Meta:
        managed = False
        verbose_name = "periodic task"
        verbose_name_plural = "periodic tasks"
