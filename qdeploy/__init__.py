"""qdeploy: a Redis-backed task queue runtime and the tooling that deploys it."""

__version__ = "0.1.0"
