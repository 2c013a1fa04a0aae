"""`from qdeploy.signals import task_prerun, worker_process_init, ...` (Celery's `celery.signals`).

The signals live in `qdeploy.core.signals`; this module is their public name."""

from qdeploy.core.signals import *  # noqa: F403
from qdeploy.core.signals import __all__  # noqa: F401
