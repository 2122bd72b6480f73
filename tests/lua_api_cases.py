"""Lua-API cases shared by the two Envoy Lua modes.

tests/envoy/scripts/app_calls.lua runs unchanged through the stock Lua filter and
the bridge (tests/envoy/test_python.py) and inside aioresty's own "lua" filter
mode (tests/envoy/lua/test_lua_api.py).  Both modules import these cases, so
pytest runs each once per mode with that module's `app` fixture (an Envoy
serving app_calls.lua with tests/apps/echoapp.py behind it).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import aiohttp
import msgpack

from tests import semantics_cases
from tests.netutil import wait_until


def post(env, method, body=b"", q="", timeout=15.0):
    return env.request("POST", f"/py/{method}{'?' + q if q else ''}", body=body, timeout=timeout)


def test_msgpack_arguments(app):
    status, _, body = post(app, "add", msgpack.packb({"a": 2, "b": 40}))
    assert status == 200
    assert msgpack.unpackb(body) == {"sum": 42, "echo": {"a": 2, "b": 40}}


def test_exception_is_false_with_message(app):
    status, h, body = post(app, "fail", b"xyz")
    assert status == 502 and h["x-rc"] == "1"
    assert b"bad input" in body and b"xyz" in body
    status, h, body = post(app, "refuse")
    assert (status, h["x-rc"], body) == (502, "42", b"custom refusal")


def test_unknown_method(app):
    status, h, body = post(app, "no_such_method")
    assert status == 502 and h["x-rc"] == "2"
    assert b"no_such_method" in body


def test_binary_with_nuls_and_one_mebibyte(app):
    data = b"\x00\x01\x00binary\xff\x00" * 100
    assert post(app, "echo", data)[::2] == (200, data)
    big = os.urandom(1 << 20)
    status, _, body = post(app, "echo", big, timeout=30)
    assert status == 200 and body == big


def _sleeps(app) -> tuple[int, int]:
    """echoapp's count of sleep handlers started and cancelled so far."""
    status, _h, body = post(app, "stats")
    assert status == 200, body
    started, cancelled = map(int, body.split())
    return started, cancelled


def test_per_call_timeout_cancels_handler(app):
    assert post(app, "echo", b"warm")[::2] == (200, b"warm")  # the runtime is loaded
    t0 = time.monotonic()
    status, _h, body = post(app, "sleep", b"5", q="t=500")
    assert time.monotonic() - t0 < 4  # not the handler's 5 s
    assert status == 502 and b"timeout" in body
    # a call the runtime had not started when its time ran out is dropped,
    # never started; this one had 500 ms, so it ran and is cancelled
    assert _sleeps(app)[0] == 1, "the sleep handler did not start within 500 ms"
    wait_until(lambda: "sleep cancelled" in app.log(), 5, "handler cancelled")
    assert _sleeps(app) == (1, 1)
    assert post(app, "echo", b"after")[::2] == (200, b"after")


def test_handler_timeout(app):
    status, h, _body = post(app, "short_timeout")
    assert status == 502 and h["x-rc"] == "3"


async def _many(port, n, method="suspend_echo", q=""):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one(i):
            payload = f"req-{i}-".encode() * (1 + i % 5)
            async with s.post(
                f"http://127.0.0.1:{port}/py/{method}{q}",
                data=payload,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as r:
                return payload, r.status, await r.read()

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_client_aborts_cancel_handlers(app):
    socks = []
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", app.port), timeout=5)
        s.sendall(b"POST /py/sleep HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n5")
        socks.append(s)
    # every handler runs before its client goes (one that has not started
    # when the client goes is never started: nothing to cancel)
    wait_until(lambda: _sleeps(app)[0] >= 30, 10, "30 sleep handlers started")

    def abort_all():
        for s in socks:
            s.close()

    closer = threading.Thread(target=abort_all)
    closer.start()  # the clients go while 100 other calls are in flight
    res = asyncio.run(_many(app.port, 100))
    closer.join(10)
    assert all(s == 200 and b == p for p, s, b in res)
    wait_until(lambda: app.log().count("sleep cancelled") >= 30, 10, "30 cancellations")
    assert _sleeps(app) == (30, 30)
    assert app.proc.poll() is None


# -- runtime semantics (tests/semantics_cases.py, app tests/apps/asyncapp.py)


def _sem(app):
    def call(method, body):
        status, h, data = post(app, method, body, q="cfg=tests.apps.asyncapp", timeout=60)
        return status, h.get("x-rc"), data

    return call


def test_broken_answers_lose_nothing(app):
    semantics_cases.broken_answers_lose_nothing(_sem(app))


def test_answers_up_to_the_limit(app):
    semantics_cases.answers_up_to_the_limit(_sem(app))


def test_each_call_is_its_own_task(app):
    semantics_cases.each_call_is_its_own_task(_sem(app))


def test_contextvars_do_not_leak(app):
    semantics_cases.contextvars_do_not_leak(_sem(app))


def test_background_base_exceptions_keep_serving(app):
    semantics_cases.background_base_exceptions_keep_serving(_sem(app), app.log)


def test_failed_calls_and_blocking_are_logged(app):
    semantics_cases.failed_calls_and_blocking_are_logged(_sem(app), app.log)


def test_runtime_object_is_lua_resty_ffis(app):
    """key/finished/handle/tq fields, other names are methods, rt(req), table req
    refused, resty_ffi.call refuses reserved names, bounded per-name cache."""
    status, _, body = app.request("GET", "/runtime_object")
    assert (status, body) == (200, b"ok"), (status, body)
