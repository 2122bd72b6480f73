"""The seed block unchanged in aioresty's "lua" mode, and chains holding both
the stock Envoy Lua filter (LuaJIT of the Envoy binary, httpCall bridge) and
the "lua" mode (the module's private LuaJIT), in both orders."""

from __future__ import annotations

import json

import pytest

from tests.envoy.lua.conftest import direct_user, lua_mode_filter
from tests.hostlib import ROOT
from tests.netutil import wait_until

STOCK = """
function envoy_on_request(h)
  require("resty_ffi")
  local rt = ngx.load_ffi("aioresty", "tests.apps.echoapp")
  local ok, r = rt:upper("stock", h)
  local other = h:headers():get("x-lua-mode")
  if other then
    h:respond({[":status"] = "200"}, "lua_mode=" .. other .. " stock=" .. r .. " " .. tostring(ok))
    return
  end
  h:headers():add("x-stock", r)
end
"""

OURS = """
function envoy_on_request(h)
  require("resty_ffi")
  local rt = ngx.load_ffi("aioresty", "tests.apps.echoapp")
  local ok, r = rt:upper("lua_mode", h)
  local other = h:headers():get("x-stock")
  if other then
    h:respond({[":status"] = "200"}, "lua_mode=" .. r .. " stock=" .. other .. " " .. tostring(ok))
    return
  end
  h:headers():add("x-lua-mode", r)
end
"""

SEED = ROOT / "examples" / "envoy" / "seed.lua"


def test_seed_block_unchanged(lua_mode_factory, httpbin):
    user = direct_user(
        upstreams={"httpbin": httpbin},
        routes=[{"prefix": "/httpbin/", "upstream": "httpbin", "prefix_rewrite": "/"}],
    )
    env = lua_mode_factory(user, [lua_mode_filter(filename=SEED)], concurrency=2)
    for _ in range(6):
        status, _h, body = env.request("GET", "/httpbin/get")
        assert status == 200, (status, body[:500], env.log()[-3000:])
        assert json.loads(body)["url"].endswith("/get")
    log = env.log()
    assert "failed" not in log and "assertion failed" not in log, log[-3000:]
    assert "[E]" not in log, log[-3000:]
    # the calls never used the bridge cluster
    assert env.stats().get("cluster.aioresty_bridge.upstream_rq_total", 0) == 0


@pytest.mark.parametrize("ours_first", [False, True])
def test_chain_with_the_stock_lua_filter(lua_mode_factory, ours_first):
    user = {"lua": {"stock": {"inline": STOCK}}, "routes": [{"prefix": "/", "lua": "stock"}]}
    env = lua_mode_factory(user, [lua_mode_filter(code=OURS)], first=ours_first)
    for _ in range(5):
        status, _h, body = env.request("GET", "/")
        assert (status, body) == (200, b"lua_mode=LUA_MODE stock=STOCK true"), env.log()[-2000:]
    # the stock filter went through the bridge; the lua mode did not (it
    # would double the count).  A bridge call answered before the cluster's
    # in-process connection is ready is not counted in upstream_rq_total, so
    # the first call may be missing: 1..5, never more.
    wait_until(
        lambda: env.stats().get("cluster.aioresty_bridge.upstream_rq_total", 0) >= 1,
        5,
        "the bridge's count",
    )
    n = env.stats().get("cluster.aioresty_bridge.upstream_rq_total", 0)
    assert 1 <= n <= 5, n
    assert "[E]" not in env.log()
