"""Fixtures of the integration suite: the real services (tests/services.py)."""

from tests.services import (  # noqa: F401  (fixtures)
    http_upstream,
    postgres_server,
    redis_server,
    store_config,
)
