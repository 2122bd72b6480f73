"""The stock bridge's Lua-API cases, in aioresty's Envoy "lua" filter mode:
tests/envoy/scripts/app_calls.lua runs unchanged inside libaioresty_envoy.so's own
LuaJIT, calls yield natively (no httpCall, no bridge cluster)."""

from __future__ import annotations

import asyncio

from tests.envoy.lua.conftest import HANDLE_API, direct_user, lua_mode_filter
from tests.lua_api_cases import (  # noqa: F401 (collected here: the cases run in this mode)
    _many,
    post,
    test_answers_up_to_the_limit,
    test_background_base_exceptions_keep_serving,
    test_binary_with_nuls_and_one_mebibyte,
    test_broken_answers_lose_nothing,
    test_client_aborts_cancel_handlers,
    test_contextvars_do_not_leak,
    test_each_call_is_its_own_task,
    test_exception_is_false_with_message,
    test_failed_calls_and_blocking_are_logged,
    test_handler_timeout,
    test_msgpack_arguments,
    test_per_call_timeout_cancels_handler,
    test_runtime_object_is_lua_resty_ffis,
    test_unknown_method,
)


def test_echo_upper_nothing_and_c_runtime(app):
    assert post(app, "echo", b"hello")[::2] == (200, b"hello")
    assert post(app, "upper", b"abc")[::2] == (200, b"ABC")
    status, h, body = post(app, "nothing")
    assert (status, h["x-nil"], body) == (200, "0", b"")
    assert post(app, "echo", b"c runtime", q="lib=ffi_c_echo")[::2] == (200, b"c runtime")
    # no request went through a bridge cluster
    assert app.stats().get("cluster.aioresty_bridge.upstream_rq_total", 0) == 0


def test_two_runtimes_one_request(app):
    assert app.request("GET", "/two")[::2] == (200, b"true from-legacy | true FROM-APP")


def test_missing_library_and_unload_then_call(app):
    status, h, body = app.request("GET", "/py/echo?lib=no_such_runtime")
    assert status == 500 and h["x-err"] == "load"
    assert post(app, "echo", b"x", q="cfg=tests.apps.echoapp")[0] == 200
    status, h, body = app.request("GET", "/unload_then_call?cfg=tests.apps.echoapp")
    assert (status, body) == (200, b"false|task queue is finished|nil")
    assert post(app, "echo", b"again", q="cfg=tests.apps.echoapp")[::2] == (200, b"again")


def test_250_concurrent_clients_matched(app):
    res = asyncio.run(_many(app.port, 250))
    assert all(s == 200 and b == p for p, s, b in res)
    res = asyncio.run(_many(app.port, 200, "echo", "?lib=ffi_c_echo"))
    assert all(s == 200 and b == p for p, s, b in res)


def test_private_luajit_is_used(lua_mode_factory):
    env = lua_mode_factory(direct_user(), [lua_mode_filter(filename=HANDLE_API)])
    status, _, body = env.request("GET", "/luajit")
    assert status == 200
    jit_version, header_version = body.decode().split("|")
    assert jit_version == header_version  # the state runs the module's own copy
