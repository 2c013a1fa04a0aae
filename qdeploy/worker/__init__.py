"""Workers: the consumer loop that runs in one process (`child`), its heartbeat, and (issue 4)
the master that forks and supervises children."""

from qdeploy.worker.child import Consumer
from qdeploy.worker.heartbeat import Heartbeat

__all__ = ["Consumer", "Heartbeat"]
