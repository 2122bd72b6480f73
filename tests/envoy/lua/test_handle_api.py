"""The request/response handle of aioresty's Envoy "lua" filter mode (Envoy's
names and semantics) and its robustness paths, on the real binary."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.envoy.conftest import wait_until
from tests.envoy.lua.conftest import HANDLE_API, direct_user, hcm, lua_mode_filter
from tests.netutil import sigterm_with_requests_pending


class _Origin(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"origin says hi"
        self.send_response(200)
        self.send_header("x-upstream", "yes")
        self.send_header("x-drop-me", "1")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def origin():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    th.join(5)


def _with_metadata(config: dict[str, Any]) -> None:
    for r in hcm(config)["route_config"]["virtual_hosts"][0]["routes"]:
        r["metadata"] = {
            "filter_metadata": {"aioresty.lua": {"greeting": "hello", "num": 42, "flag": True}}
        }


def _user(origin: str | None = None) -> dict[str, Any]:
    routes = [{"prefix": "/", "status": 200, "body": "direct\n"}]
    ups = {}
    if origin:
        routes.insert(0, {"prefix": "/up/", "upstream": "origin"})
        ups["origin"] = origin
    return direct_user(upstreams=ups, routes=routes)


@pytest.fixture
def api(lua_mode_factory, origin):
    return lua_mode_factory(
        _user(origin), [lua_mode_filter(filename=HANDLE_API)], mutate=_with_metadata
    )


def raw_request(
    env, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None = None
) -> tuple[int, http.client.HTTPResponse, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    try:
        c.putrequest(method, path)
        for k, v in headers:
            c.putheader(k, v)
        if body is not None:
            c.putheader("content-length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        return r.status, r, r.read()
    finally:
        c.close()


def alive(env) -> tuple[int, int, int]:
    status, _, body = env.request("GET", "/alive")
    assert status == 200
    a, s, e = body.split()
    return int(a), int(s), int(e)


def test_headers_api(api):
    status, r, body = raw_request(
        api, "GET", "/hdr", [("x-multi", "a"), ("x-multi", "b"), ("x-gone", "1")]
    )
    assert status == 200, body
    lines = dict(line.split("=", 1) for line in body.decode().split("\n"))
    assert lines["get"] == "a,b" and lines["n"] == "2"
    assert (lines["i0"], lines["i1"], lines["i2"], lines["none"]) == ("a", "b", "nil", "nil")
    assert lines["after"] == "1,2/r/nil"
    seen = [kv for kv in lines["pairs"].split(",") if kv.split(":")[0] in ("x-added", "x-multi")]
    assert seen == ["x-added:1", "x-added:2", "x-multi:r"]
    assert "x-request-id:" in lines["pairs"]
    assert r.headers.get_all("x-two") == ["a", "b"]


def test_body_and_body_chunks(api):
    data = bytes(range(256)) * 64
    status, r, body = raw_request(api, "POST", "/body", [], data)
    assert status == 200
    assert r.headers["x-len"] == str(len(data)) and r.headers["x-chunks-equal"] == "true"
    assert r.headers["x-range-error"] == "true"
    assert body == data[1:4]
    status, _, body = raw_request(api, "GET", "/nobody", [])
    assert (status, body) == (200, b"nil|0")


def test_chunked_request_body(api):
    s = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    s.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    time.sleep(0.1)
    s.sendall(b"4\r\ndefg\r\n0\r\n\r\n")
    data = b""
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in data or not data.endswith(b"bcd"):
        if time.monotonic() > deadline:
            break
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 200"), data
    assert b"x-len: 7" in data and b"x-chunks-equal: true" in data and data.endswith(b"bcd")


def test_metadata_stream_info_connection(api):
    assert api.request("GET", "/meta")[::2] == (200, b"hello|42|true|nil")
    _status, _, body = api.request("GET", "/si")
    proto, remote, local, ssl = body.decode().split("|")
    assert proto == "HTTP/1.1" and ssl == "nil"
    assert remote.startswith("127.0.0.1:") and local == f"127.0.0.1:{api.port}"


def test_logging(api):
    assert api.request("GET", "/log")[0] == 200
    wait_until(lambda: "script log: critical-msg" in api.log(), 5, "log lines")
    log = api.log()
    for m in ("info-msg", "warn-msg", "err-msg"):
        assert f"script log: {m}" in log


def test_unsupported_api_is_a_clear_error(api):
    status, _, body = api.request("GET", "/unknown")
    assert status == 200
    first, second = body.decode().split("\n")
    assert first.startswith("false|") and "request_handle:httpCall() is not supported" in first
    assert "headers:setHttp1ReasonPhrase() is not supported" in second


def test_handle_kept_across_requests(api):
    assert api.request("GET", "/keep")[::2] == (200, b"kept")
    status, _, body = api.request("GET", "/use_kept")
    assert status == 200
    for line in body.decode().split("\n"):
        assert line.startswith("false|") and "outside of the request it belongs to" in line
    assert api.proc.poll() is None


def test_script_error_and_bare_yield_continue_by_default(api):
    assert api.request("GET", "/error")[::2] == (200, b"direct\n")
    assert api.request("GET", "/yield")[::2] == (200, b"direct\n")
    log = api.log()
    assert "boom from the script" in log and "coroutine.yield() is not supported" in log
    assert alive(api)[2] == 2


def test_fail_closed(lua_mode_factory):
    env = lua_mode_factory(_user(), [lua_mode_filter(filename=HANDLE_API, on_error="fail_closed")])
    for path in ("/error", "/yield"):
        status, _, body = env.request("GET", path)
        assert (status, body) == (500, b"lua script error\n")
    assert env.request("GET", "/two_calls")[0] == 200


def test_bad_config_is_rejected(tmp_path):
    import subprocess

    from aioresty import envoy_config
    from tests.envoy.conftest import HERE, build_dir, envoy_binary

    for bad in (
        [lua_mode_filter(code="function envoy_on_request(h) (")],
        [lua_mode_filter(filename=tmp_path / "missing.lua")],
        [lua_mode_filter(code="x = 1", on_error="maybe")],
    ):
        cfg = envoy_config.build_config(_user() | {"listen": "127.0.0.1:1"}, base_dir=HERE)
        hcm(cfg)["http_filters"][0:0] = bad
        p = tmp_path / "bad.yaml"
        p.write_text(envoy_config.to_yaml(cfg))
        env = envoy_config.environment(lib_dir=build_dir())
        r = subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", str(p)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0, bad


def test_two_sequential_calls_and_continue(api):
    assert api.request("GET", "/two_calls")[::2] == (200, b"true true ONE-TWO")
    status, _h, body = api.request("GET", "/call_then_continue")
    assert (status, body) == (200, b"direct\n")
    status, _, body = api.request("POST", "/body_after_call", body=b"the body")
    assert (status, body) == (200, b"true first the body")
    status, _, body = api.request("GET", "/pcall_call")
    assert status == 200 and body.startswith(b"true|false|1"), body


def test_response_direction(api):
    status, h, body = api.request("GET", "/up/x")
    assert (status, body) == (200, b"origin says hi")
    assert h["x-resp-upper"] == "true:ORIGIN SAYS HI"
    assert h["x-resp-second"] == "true:second" and h["x-resp-len"] == "14"
    assert "x-drop-me" not in h


def test_timeout_in_lua_api(api):
    t0 = time.monotonic()
    status, _, body = api.request("GET", "/timeout")
    assert time.monotonic() - t0 < 1.5
    assert (status, body) == (200, b"false|timeout|nil")
    wait_until(lambda: alive(api)[0] == 0, 5, "timed-out task freed")


def test_reset_while_pending(api):
    def abort_one():
        s = socket.create_connection(("127.0.0.1", api.port), timeout=5)
        s.sendall(b"GET /sleep HTTP/1.1\r\nHost: x\r\nx-seconds: 0.5\r\n\r\n")
        time.sleep(0.1)
        s.close()

    ths = [threading.Thread(target=abort_one) for _ in range(40)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(10)
    wait_until(lambda: alive(api)[0] == 0, 10, "aborted tasks freed")
    # the late answers were dropped, nothing was resumed on a dead stream
    assert api.request("GET", "/two_calls")[0] == 200
    assert "envoy_on_request failed" not in api.log()
    assert api.proc.poll() is None


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_streams_closed_as_they_post_do_not_stall_the_worker(api, close):
    # Each call's runtime wake-up is deferred to the end of the worker's
    # event-loop iteration and carried by the posting stream (stream_link.c).
    # Streams that die right after posting (request and FIN, or RST, sent
    # together) must not lose it: a lost wake leaves every later call of the
    # worker waiting for ever.
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", api.port), timeout=5)
        if close == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"GET /two_calls HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        s.close()
        t0 = time.monotonic()
        assert api.request("GET", "/two_calls")[::2] == (200, b"true true ONE-TWO")
        assert time.monotonic() - t0 < 2
    wait_until(lambda: alive(api)[0] == 0, 10, "tasks of closed streams freed")


def test_envoy_local_reply_while_pending(lua_mode_factory):
    def idle(cfg: dict[str, Any]) -> None:
        hcm(cfg)["stream_idle_timeout"] = "0.3s"

    env = lua_mode_factory(_user(), [lua_mode_filter(filename=HANDLE_API)], mutate=idle)
    t0 = time.monotonic()
    status, _, _ = raw_request(env, "GET", "/sleep", [("x-seconds", "3")])
    # Envoy's own local reply (stream idle timeout: 408, or 504 once the request is complete)
    assert status in (408, 504) and time.monotonic() - t0 < 2.5
    wait_until(lambda: alive(env)[0] == 0, 10, "task aborted after the local reply")
    assert env.request("GET", "/two_calls")[0] == 200


def test_concurrency_2(lua_mode_factory):
    env = lua_mode_factory(_user(), [lua_mode_filter(filename=HANDLE_API)], concurrency=2)
    for _ in range(20):  # new connections: both workers
        assert env.request("GET", "/two_calls")[::2] == (200, b"true true ONE-TWO")
    st = env.stats()
    workers = [
        v
        for k, v in st.items()
        if k.startswith(f"listener.127.0.0.1_{env.port}.worker_")
        and k.endswith(".downstream_cx_total")
    ]
    assert len(workers) == 2 and all(v > 0 for v in workers), workers
    # one Lua state per worker for this config
    assert alive(env)[1] == 2


def test_sigterm_with_calls_pending(lua_mode_factory):
    env = lua_mode_factory(_user(), [lua_mode_filter(filename=HANDLE_API)], concurrency=2)
    assert env.request("GET", "/two_calls")[0] == 200
    sigterm_with_requests_pending(
        env, b"GET /sleep HTTP/1.1\r\nHost: x\r\nx-seconds: 5\r\n\r\n", 20
    )
