"""A worker node: the master that forks and supervises children (`master`, `state`), what runs
in a child (`process`), the consumer loop of one thread (`child`), the heartbeat of a consumer
that supervises itself (`heartbeat`), the node's options (`options`) and its boot (`boot`)."""

from qdeploy.worker.child import Consumer
from qdeploy.worker.heartbeat import Heartbeat

__all__ = ["Consumer", "Heartbeat"]
