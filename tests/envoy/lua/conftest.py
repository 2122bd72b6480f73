"""Helpers for the tests of the Envoy module's "lua" mode (LuaJIT inside
libaioresty_envoy.so, native/envoy/lua/): the real stock Envoy 1.40 with
the DynamicModuleFilter(filter_name "lua") inserted into the generated
config.  Reuses tests.envoy.conftest (free ports, pid-based stop, bounded
waits)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aioresty import envoy_config
from tests.envoy.conftest import REPO, Envoy, free_port  # noqa: F401  (re-exported)

PY_PATH = [str(REPO), str(REPO / "examples" / "python")]
PY_ENV = {"AIORESTY_VENV": sys.prefix}
APP_CALLS = REPO / "tests" / "envoy" / "scripts" / "app_calls.lua"
HANDLE_API = REPO / "tests" / "envoy" / "scripts" / "handle_api.lua"


def lua_mode_filter(
    code: str | None = None, filename: str | Path | None = None, **kw: Any
) -> dict[str, Any]:
    """One filter of the module's "lua" mode (envoy_config.lua_mode_filter, the
    builder the CLI uses), named aioresty.lua.test, enabled everywhere."""
    return envoy_config.lua_mode_filter("test", code, filename=filename, **kw)


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    """The main listener's HttpConnectionManager config (mutable)."""
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]


class LuaEnvoy(Envoy):
    """Envoy with aioresty "lua" filters.  `filters` are inserted before the
    router (after the stock Lua filter unless `first`); `mutate` may edit the
    whole config dict last."""

    def __init__(
        self,
        tmp: Path,
        user: dict[str, Any],
        filters: list[dict[str, Any]],
        first: bool = False,
        mutate: Callable[[dict[str, Any]], None] | None = None,
        **kw: Any,
    ):
        super().__init__(tmp, user, **kw)
        chain = hcm(self.config)["http_filters"]
        at = 0 if first else len(chain) - 1
        chain[at:at] = filters
        if mutate:
            mutate(self.config)
        self.config_path.write_text(envoy_config.to_yaml(self.config))


def direct_user(
    upstreams: dict[str, str] | None = None, routes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A user config without stock Lua scripts: routes answer directly (the
    script normally responds first) or go to an upstream."""
    return {
        "routes": routes or [{"prefix": "/", "status": 200, "body": "direct\n"}],
        "upstreams": upstreams or {},
    }


@pytest.fixture
def lua_mode_factory(tmp_path: Path) -> Iterator[Callable[..., LuaEnvoy]]:
    started: list[LuaEnvoy] = []

    def make(user: dict[str, Any], filters: list[dict[str, Any]], **kw: Any) -> LuaEnvoy:
        kw.setdefault("env", dict(PY_ENV))
        kw.setdefault("python_path", PY_PATH)
        e = LuaEnvoy(tmp_path, user, filters, **kw)
        started.append(e)
        return e.start()  # type: ignore[return-value]

    yield make
    for e in started:
        e.stop()


@pytest.fixture
def app(lua_mode_factory) -> LuaEnvoy:
    """tests/envoy/scripts/app_calls.lua - the stock bridge's Lua-API script -
    unchanged in the "lua" mode."""
    return lua_mode_factory(direct_user(), [lua_mode_filter(filename=APP_CALLS)])
