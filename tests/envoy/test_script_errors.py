"""A Lua script error fails closed in every config the CLI generates, in both
Lua modes (issue 12, point 3): 500, never the empty 200 of a route without
upstream, and nothing reaches the upstream; ``on_error = "continue"`` keeps
Envoy's own behaviour."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import HttpUpstream

BOOM = 'function envoy_on_request(h) error("boom in the script") end'
SILENT = "function envoy_on_request(h) end"
AFTER_CALL = """
require "resty_ffi"
function envoy_on_request(h)
    local rt = assert(ngx.load_ffi("ffi_c_echo"))
    local ok, res = rt:echo("x", h)
    error("boom after a call: " .. tostring(res))
end
"""


@pytest.fixture
def upstream() -> Iterator[HttpUpstream]:
    u = HttpUpstream()
    yield u
    u.stop()


@pytest.mark.parametrize("mode", ["bridge", "lua"])
def test_script_errors_fail_closed(envoy_factory, upstream: HttpUpstream, mode: str) -> None:
    user = {
        "script_mode": mode,
        "lua": {
            "boom": {"inline": BOOM},
            "silent": {"inline": SILENT},
            "after_call": {"inline": AFTER_CALL},
            "open": {"inline": BOOM, "on_error": "continue"},
        },
        "upstreams": {"up": f"127.0.0.1:{upstream.port}"},
        "routes": [
            {"prefix": "/noup", "lua": "boom"},
            {"prefix": "/silent", "lua": "silent"},
            {"prefix": "/up", "lua": "boom", "upstream": "up"},
            {"prefix": "/after", "lua": "after_call", "upstream": "up"},
            {"prefix": "/open", "lua": "open", "upstream": "up"},
        ],
    }
    env = envoy_factory(user)
    for path in ("/noup", "/up", "/after"):
        status, _, body = env.request("GET", path)
        assert (status, body) == (500, b"lua script error\n"), (path, status, body)
    assert upstream.hits("/up") == 0 and upstream.hits("/after") == 0
    status, _, body = env.request("GET", "/silent")
    assert (status, body) == (500, b"aioresty: the route's Lua script did not answer\n")
    status, _, _ = env.request("GET", "/open")
    assert status == 200 and upstream.hits("/open") == 1
    assert "boom in the script" in env.log() and "boom after a call: x" in env.log()
    # the error names the script (its file as the short config says, or lua.<name>)
    if mode == "lua":
        assert "lua.boom:1: boom in the script" in env.log(), env.log()[-3000:]
    else:
        assert "aioresty: Lua script error in lua.boom: " in env.log(), env.log()[-3000:]


def test_lua_mode_respond_refuses_header_injection(envoy_factory) -> None:
    """The lua mode's respond() takes RFC 9110 names and field values only: a
    script copying request bytes into a reply header cannot split the response
    (Envoy's stock Lua filter writes such values as they are)."""
    split = (
        'function envoy_on_request(h) h:respond({[":status"] = "200", '
        '["x-a"] = "a\\r\\nx-injected: 1"}, "") end'
    )
    bad_name = (
        'function envoy_on_request(h) h:respond({[":status"] = "200", ["x y"] = "1"}, "") end'
    )
    info = 'function envoy_on_request(h) h:respond({[":status"] = "100"}, "") end'
    user = {
        "script_mode": "lua",
        "lua": {"split": {"inline": split}, "name": {"inline": bad_name}, "info": {"inline": info}},
        "routes": [
            {"prefix": "/split", "lua": "split"},
            {"prefix": "/name", "lua": "name"},
            {"prefix": "/info", "lua": "info"},
        ],
    }
    env = envoy_factory(user)
    for path in ("/split", "/name", "/info"):
        status, headers, body = env.request("GET", path)
        assert (status, body) == (500, b"lua script error\n"), (path, status, headers, body)
        assert "x-injected" not in headers
    log = env.log()
    assert "header values must not contain control characters" in log
    assert "header names must be RFC 9110 tokens" in log
    assert "a :status of 200-599 is required" in log
