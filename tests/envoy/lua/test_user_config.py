"""`script_mode = "lua"` in the short user config (envoy_config.build_config):
one aioresty "lua" filter per script, disabled by default and enabled only on
the routes naming it; no bridge cluster.  Real Envoy, real sockets."""

from __future__ import annotations

from pathlib import Path

from aioresty import envoy_config
from tests.envoy.conftest import Envoy
from tests.envoy.lua.conftest import PY_ENV, PY_PATH, hcm

SCRIPT = """
require("resty_ffi")
function envoy_on_request(h)
  local rt = ngx.load_ffi("aioresty", "tests.apps.echoapp")
  local ok, r = rt:upper("%s", h)
  h:respond({[":status"] = "200", ["x-script"] = "%s"}, tostring(ok) .. " " .. tostring(r))
end
"""
# a script that would break every request it runs on: proves it runs nowhere
NEVER = 'function envoy_on_request(h) h:respond({[":status"] = "500"}, "never\\n") end'


def user() -> dict:
    return {
        "script_mode": "lua",
        "lua": {
            "a": {"inline": SCRIPT % ("alpha", "a")},
            "b": {"inline": SCRIPT % ("beta", "b")},
            "unused": {"inline": NEVER},
        },
        "routes": [
            {"prefix": "/a/", "lua": "a"},
            {"prefix": "/b/", "lua": "b"},
            {"prefix": "/plain/", "status": 203, "body": "plain\n"},
        ],
    }


def test_generated_module_config_shape() -> None:
    cfg = envoy_config.build_config(user())
    chain = hcm(cfg)["http_filters"]
    names = [f["name"] for f in chain]
    # scripts no route names get no filter; the router stays last
    assert names == ["aioresty.lua.a", "aioresty.lua.b", "envoy.filters.http.router"]
    assert all(f.get("disabled") is True for f in chain[:2])
    assert chain[0]["typed_config"]["filter_name"] == "lua"
    # no stock Lua filter, no bridge pieces
    assert envoy_config.BRIDGE_CLUSTER not in {
        c["name"] for c in cfg["static_resources"]["clusters"]
    }
    assert "bootstrap_extensions" not in cfg
    routes = hcm(cfg)["route_config"]["virtual_hosts"][0]["routes"]
    assert set(routes[0]["typed_per_filter_config"]) == {"aioresty.lua.a"}
    assert "typed_per_filter_config" not in routes[2]


def test_each_route_runs_only_its_script(tmp_path: Path) -> None:
    e = Envoy(tmp_path, user(), env=dict(PY_ENV), python_path=PY_PATH).start()
    try:
        for _ in range(2):
            status, headers, body = e.request("GET", "/a/x")
            assert (status, headers.get("x-script"), body) == (200, "a", b"true ALPHA")
            status, headers, body = e.request("POST", "/b/y", b"data")
            assert (status, headers.get("x-script"), body) == (200, "b", b"true BETA")
            # a route without lua and a request matching no route run no script
            status, headers, body = e.request("GET", "/plain/")
            assert (status, headers.get("x-script"), body) == (203, None, b"plain\n")
            status, headers, _ = e.request("GET", "/nowhere")
            assert (status, headers.get("x-script")) == (404, None)
        assert "aioresty lua" not in e.log().replace("aioresty lua: config loaded", "")
    finally:
        e.stop()
