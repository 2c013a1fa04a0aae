"""The seeds' tests use the integration tests' private redis-servers (and the plugin's)."""

from tests.integration.conftest import make_server, redis_server  # noqa: F401 - fixtures
