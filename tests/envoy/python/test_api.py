"""aioresty.filters without Envoy: the hooks, the wire format, the CLI."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

import aioresty
from aioresty import envoy_python_mode
from aioresty.cli import main as cli_main


def run(app: aioresty.App, method: str, payload: bytes) -> Any:
    handler, coro = app.start_call(method, payload)
    try:
        coro.send(None)
    except StopIteration as stop:
        return handler, stop.value
    raise AssertionError("the hook suspended")


def snapshot(phase: int, headers: list[str], body: bytes | None = None) -> bytes:
    return msgpack.packb([phase, 2500, headers, body], use_bin_type=True)


def test_info_and_handler_timeout() -> None:
    app = aioresty.App()

    @app.on_request(body=True)
    async def a(req: aioresty.FilterRequest) -> None:
        return None

    assert run(app, "__filter_info", b"")[1] == "110030000"  # hooks, App timeout 30 s

    @app.on_response
    async def b(resp: aioresty.FilterResponse) -> None:
        return None

    assert run(app, "__filter_info", b"")[1] == "111030000"
    assert run(aioresty.App(timeout=0.25), "__filter_info", b"")[1] == "0000250"
    handler, out = run(app, "__filter_request", snapshot(1, [":path", "/"], b""))
    assert out == b"" and handler.timeout == 2.5


def test_request_changes_are_packed() -> None:
    app = aioresty.App()

    @app.on_request(body=True)
    async def hook(req: aioresty.FilterRequest) -> None:
        assert (req.method, req.path) == ("POST", "/x")
        assert req.headers.getall("x-m") == ["1", "2"] and req.headers["X-M"] == "1"
        assert await req.body() == b"abc"
        req.headers["x-new"] = "v"
        del req.headers["x-m"]
        req.headers.add("x-two", "a")
        req.headers.add("x-two", "b")
        req.path = "/y"
        req.set_body(b"ABC")

    flat = [":method", "POST", ":path", "/x", "x-m", "1", "x-m", "2"]
    _, out = run(app, "__filter_request", snapshot(1, flat, b"abc"))
    kind, ops, body = msgpack.unpackb(out)
    assert kind == 0 and body == b"ABC"
    triples = {tuple(ops[i : i + 3]) for i in range(0, len(ops), 3)}
    assert triples == {
        (0, ":path", "/y"),
        (0, "x-new", "v"),
        (2, "x-m", None),
        (0, "x-two", "a"),
        (1, "x-two", "b"),
    }


def test_local_reply_and_chain_order() -> None:
    app = aioresty.App()
    seen: list[str] = []

    @app.on_request
    async def first(req: aioresty.FilterRequest) -> aioresty.Response:
        seen.append("first")
        return aioresty.Response(403, "no", headers=[("x-a", "1"), ("x-a", "2")])

    @app.on_request
    async def second(req: aioresty.FilterRequest) -> None:
        seen.append("second")

    _, out = run(app, "__filter_request", snapshot(1, [":path", "/"]))
    assert msgpack.unpackb(out) == [1, 403, ["x-a", "1", "x-a", "2"], b"no"]
    assert seen == ["first"]


def test_body_misuse_is_an_error() -> None:
    app = aioresty.App()

    @app.on_request
    async def hook(req: aioresty.FilterRequest) -> None:
        await req.body()

    with pytest.raises(
        aioresty.HandlerError, match=r"on_request hook '.*hook' raised Runti.*body=True"
    ):
        run(app, "__filter_request", snapshot(1, [":path", "/"]))


def test_response_status_and_bad_values() -> None:
    app = aioresty.App()

    @app.on_response
    async def hook(resp: aioresty.FilterResponse) -> None:
        assert resp.status == 200
        resp.status = 203
        with pytest.raises(ValueError):
            resp.headers["x"] = "a\r\nb"
        with pytest.raises(ValueError):
            resp.headers[":status"] = "1"

    _, out = run(app, "__filter_response", snapshot(2, [":status", "200"]))
    assert msgpack.unpackb(out) == [0, [0, ":status", "203"], None]


@pytest.mark.parametrize("name", ["", ":path", "a:b", "a b", "a\rb", "a\nb", "a\0b", "x-ok\n"])
def test_bad_header_names_are_refused(name: str) -> None:
    h = aioresty.Headers()
    with pytest.raises(ValueError, match="invalid header name"):
        h[name] = "v"
    with pytest.raises(ValueError, match="invalid header name"):
        h.add(name, "v")
    assert len(h) == 0


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("a\rb", ValueError),
        ("a\nb", ValueError),
        ("a\0b", ValueError),
        ("", ValueError),
        (b"v", TypeError),
        (1, TypeError),
    ],
)
def test_bad_header_values_are_refused(value: object, error: type[Exception]) -> None:
    h = aioresty.Headers()
    with pytest.raises(error):
        h["x-a"] = value  # type: ignore[assignment]
    assert len(h) == 0


def test_good_header_names_and_values() -> None:
    h = aioresty.Headers()
    h["X-Mixed-Case"] = "a value; with: colons\tand tabs"
    h.add("x-mixed-case", "second")
    assert h.getall("x-mixed-case") == ["a value; with: colons\tand tabs", "second"]


def test_filter_config_strings() -> None:
    assert json.loads(envoy_python_mode.filter_config_string("a.b:app")) == {
        "app": "a.b:app",
        "fail": "closed",
    }
    assert json.loads(
        envoy_python_mode.filter_config_string("a:app", fail_open=True, body_limit=10, timeout=0.5)
    ) == {"app": "a:app", "fail": "open", "body_limit": 10, "timeout": 0.5}
    off = envoy_python_mode.filter_config_string(None, disabled=True)
    assert json.loads(off) == {"disabled": True}
    with pytest.raises(ValueError):
        envoy_python_mode.filter_config_string("a b")


def test_cli_filter_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli_main(
            [
                "envoy",
                "filter-config",
                "pkg.m:app",
                "--fail-open",
                "--timeout",
                "2",
                "--body-limit",
                "4096",
            ]
        )
        == 0
    )
    entry = json.loads(capsys.readouterr().out)
    assert entry["typed_config"]["filter_name"] == "python"
    assert json.loads(entry["typed_config"]["filter_config"]["value"]) == {
        "app": "pkg.m:app",
        "fail": "open",
        "body_limit": 4096,
        "timeout": 2,
    }
    assert (
        cli_main(
            [
                "envoy",
                "filter-config",
                "pkg.m:app",
                "--listen",
                "127.0.0.1:8000",
                "--upstream",
                "127.0.0.1:8080",
                "--disable",
                "/health",
            ]
        )
        == 0
    )
    cfg = json.loads(capsys.readouterr().out)
    routes = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"]["prefix"] == "/health"
    # Envoy's generic switch: no deprecated per_route_config_name, the module is not asked
    assert routes[0]["typed_per_filter_config"]["aioresty.python"] == {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        "disabled": True,
    }
