"""aioresty's async Python handlers (tests/apps/echoapp.py) called from a stock
Envoy Lua filter through resty_ffi and the bridge."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.envoy.conftest import REPO
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
from tests.netutil import sigterm_with_requests_pending

USER = {"lua": {"app": "scripts/app_calls.lua"}, "routes": [{"prefix": "/", "lua": "app"}]}
PY_PATH = [str(REPO), str(REPO / "examples" / "python")]


@pytest.fixture
def app(envoy_factory):
    return envoy_factory(USER, env={"AIORESTY_VENV": sys.prefix}, python_path=PY_PATH)


def test_echo_and_str_result(app):
    assert post(app, "echo", b"hello")[::2] == (200, b"hello")
    assert post(app, "upper", b"abc")[::2] == (200, b"ABC")
    status, h, body = post(app, "nothing", b"")
    # None answers "" (as on nginx)
    assert (status, h["x-nil"], body) == (200, "0", b"")


def test_missing_library_and_unload(app):
    status, h, body = app.request("GET", "/py/echo?lib=no_such_runtime")
    assert status == 500 and h["x-err"] == "load"
    assert post(app, "echo", b"x", q="cfg=tests.apps.echoapp")[0] == 200
    status, h, body = app.request("GET", "/unload_then_call?cfg=tests.apps.echoapp")
    assert (status, body) == (200, b"false|task queue is finished|nil")
    # a new load_ffi of the same key loads the runtime afresh
    assert post(app, "echo", b"again", q="cfg=tests.apps.echoapp")[::2] == (200, b"again")


def test_250_concurrent_clients_matched(app):
    res = asyncio.run(_many(app.port, 250))
    assert all(s == 200 and b == p for p, s, b in res)


def test_sigterm_with_python_calls_in_flight(envoy_factory):
    env = envoy_factory(USER, concurrency=2, env={"AIORESTY_VENV": sys.prefix}, python_path=PY_PATH)
    assert post(env, "echo", b"warm")[0] == 200
    sigterm_with_requests_pending(
        env, b"POST /py/sleep HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n5", 10
    )
