"""The fuzz tests reuse the proxies' own fixtures (stopped by pid, bounded waits)."""

from tests.envoy.lua.conftest import lua_mode_factory  # noqa: F401
from tests.nginx.conftest import nginx  # noqa: F401
