"""The integrations' tests use the integration tests' private redis-servers."""

from tests.integration.conftest import make_server, redis_server  # noqa: F401 - fixtures
