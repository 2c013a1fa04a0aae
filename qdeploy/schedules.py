"""Celery's `celery.schedules` under qdeploy's name: `from qdeploy.schedules import crontab, solar`
(`schedule(run_every=...)` is Celery's interval class: qdeploy's `every`)."""

from qdeploy.beat.schedule import crontab, every
from qdeploy.beat.solar import solar

schedule = every

__all__ = ["crontab", "every", "schedule", "solar"]
