"""Helpers for the tests of aioresty's Envoy filter mode "lua" (LuaJIT inside
libaioresty_envoy.so, native/envoy/lua/): the real stock Envoy 1.40 with
the DynamicModuleFilter(filter_name "lua") inserted into the generated
config.  Reuses tests.envoy.conftest (free ports, pid-based stop, bounded
waits)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aioresty import envoy_config
from tests.envoy.conftest import REPO, Envoy, free_port  # noqa: F401  (re-exported)

HERE = Path(__file__).resolve().parent
PY_PATH = [str(REPO), str(REPO / "examples" / "python")]
PY_ENV = {"AIORESTY_VENV": sys.prefix}
APP_CALLS = REPO / "tests" / "envoy" / "lua" / "app_calls.lua"
HANDLE_API = HERE / "lua" / "handle_api.lua"
_T = "type.googleapis.com/"


def luamod_filter(
    code: str | None = None,
    filename: str | Path | None = None,
    on_error: str | None = None,
    metadata_namespace: str | None = None,
    name: str = "aioresty.lua",
) -> dict[str, Any]:
    """The http_filters entry of the aioresty "lua" mode."""
    cfg: dict[str, str] = {}
    if code is not None:
        cfg["inline_code"] = code
    if filename is not None:
        cfg["filename"] = str(filename)
    if on_error is not None:
        cfg["on_error"] = on_error
    if metadata_namespace is not None:
        cfg["metadata_namespace"] = metadata_namespace
    return {
        "name": name,
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": envoy_config.module_config(),
            "filter_name": "lua",
            "filter_config": {
                "@type": _T + "google.protobuf.StringValue",
                "value": json.dumps(cfg),
            },
        },
    }


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
def luamod_factory(tmp_path: Path) -> Iterator[Callable[..., LuaEnvoy]]:
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
def app(luamod_factory) -> LuaEnvoy:
    """tests/envoy/lua/app_calls.lua - the stock bridge's Lua-API script -
    unchanged in the "lua" mode."""
    return luamod_factory(direct_user(), [luamod_filter(filename=APP_CALLS)])
