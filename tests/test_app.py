"""App, codecs and aioresty.testing, without any proxy (pytest-asyncio)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import aioresty
from aioresty.app import app_from_module, load_app
from aioresty.testing import AppClient
from tests.apps import echoapp


async def test_client_echo_and_dispatch() -> None:
    async with AppClient(echoapp.app) as client:
        await _echo_and_dispatch(client)


async def _echo_and_dispatch(client: AppClient) -> None:
    res = await client.call("echo", b"hi")
    assert res.ok and res.body == b"hi"
    assert (await client.call("upper", "abc")).text == "ABC"
    missing = await client.call("nope")
    assert missing.rc == aioresty.RC_NO_METHOD and "no handler for method 'nope'" in missing.text


async def test_client_maps_errors_like_the_runtime() -> None:
    async with AppClient("tests.apps.echoapp") as client:
        await _errors(client)


async def _errors(client: AppClient) -> None:
    fail = await client.call("fail", "x")
    assert (fail.rc, fail.text) == (1, "aioresty: handler 'fail' raised ValueError: bad input 'x'")
    assert (await client.call("refuse")).rc == 42
    assert (await client.call("wrong_type")).rc == aioresty.RC_BAD_RESULT
    timeout = await client.call("short_timeout")
    assert timeout.rc == aioresty.RC_TIMEOUT and "timed out after 0.2s" in timeout.text


async def test_client_msgpack() -> None:
    async with AppClient(echoapp.app) as client:
        res = await client.call_msgpack("add", {"a": 1, "b": 2})
    assert res.unpack() == {"sum": 3, "echo": {"a": 1, "b": 2}}


def test_handlers_must_be_async() -> None:
    app = aioresty.App()
    with pytest.raises(TypeError, match="async def"):
        app.add(lambda req: req)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown codec"):

        @app.handler(codec="yaml")  # type: ignore[arg-type]
        async def f(req: bytes) -> bytes:
            return req

    with pytest.raises(ValueError, match="reserved"):

        @app.handler("__unload")
        async def g(req: bytes) -> bytes:
            return req


def test_handler_error_needs_nonzero_rc() -> None:
    with pytest.raises(ValueError):
        aioresty.HandlerError("x", rc=0)


def test_app_from_module_collects_public_async_defs() -> None:
    import tests.apps.venvapp.venvapp_handlers as mod

    app = app_from_module(mod)
    assert list(app.handlers) == ["where"]


def test_load_app_errors() -> None:
    with pytest.raises(ValueError, match="bad app spec"):
        load_app("")
    with pytest.raises(LookupError, match="no attribute 'zzz'"):
        load_app("tests.apps.echoapp:zzz")
    with pytest.raises(TypeError, match=r"not an aioresty\.App"):
        load_app("tests.apps.echoapp:started")
    with pytest.raises(LookupError, match="no App and no public async def"):
        load_app("tests.hostlib")


def test_cli_paths() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aioresty.cli", "paths", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info = json.loads(out)
    from pathlib import Path

    assert Path(info["core"]).is_file()
    assert Path(info["python_loader"]).is_file()
    assert (Path(info["lua_dir"]) / "resty_ffi.lua").is_file()


def test_filter_output_rules() -> None:
    """RFC 9110 names and values, origin-form paths, final statuses only."""
    from aioresty import Headers, Response

    h = Headers()
    for bad in ("x\ty", "x(y", "é", "", "x:y", "a b"):
        with pytest.raises(ValueError, match="invalid header name"):
            h[bad] = "1"
    h["x-ok_1.~"] = "tab\tis fine"
    for bad in ("a\x01b", "a\x7fb", "a\nb"):
        with pytest.raises(ValueError, match="invalid header value"):
            h["x-v"] = bad
    for status in (100, 101, 199, 600, True):
        with pytest.raises(ValueError, match="bad status"):
            Response(status)
    for status in (204, 304):
        assert Response(status).status == status
        with pytest.raises(ValueError, match="has no body"):
            Response(status, b"x")
