"""The fuzz tests reuse the proxies' own fixtures (stopped by pid, bounded waits)."""

from tests.envoy_luamod.conftest import luamod_factory  # noqa: F401
from tests.nginx.conftest import nginx  # noqa: F401
