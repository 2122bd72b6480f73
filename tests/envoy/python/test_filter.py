"""aioresty's async Python HTTP filter inside a real Envoy 1.40
(native/envoy/python/ + aioresty/filters.py, apps in filterapp.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import pytest

from tests.envoy.conftest import wait_until
from tests.envoy.python.conftest import FilterEnvoy, Upstream
from tests.netutil import http_request

AUTH = {"authorization": "Bearer ok"}


def req(
    env: FilterEnvoy,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    return http_request(env.port, method, path, body, headers, timeout)


def echoed(body: bytes) -> dict[str, Any]:
    data = json.loads(body)
    hs: dict[str, list[str]] = {}
    for k, v in data["headers"]:
        hs.setdefault(k, []).append(v)
    data["h"] = hs
    return data


def test_header_mutation_reaches_upstream(envoy: FilterEnvoy) -> None:
    status, h, body = req(envoy, "GET", "/echo", headers={**AUTH, "x-remove-me": "1"})
    assert status == 200
    up = echoed(body)
    assert up["h"]["x-user"] == ["alice"]
    assert up["h"]["x-multi"] == ["one", "two"]
    assert "x-remove-me" not in up["h"]
    # the response hook ran too
    assert h["x-served-by"] == "aioresty" and "x-drop-me" not in h


def test_local_reply_never_reaches_upstream(envoy: FilterEnvoy, upstream: Upstream) -> None:
    before = upstream.hits
    status, h, body = req(envoy, "GET", "/echo")
    assert (status, body, h["www-authenticate"]) == (401, b"denied", "Bearer")
    assert upstream.hits == before


def test_request_body_read_and_rewritten(envoy: FilterEnvoy) -> None:
    status, _, body = req(envoy, "POST", "/rewrite", body=b"hello", headers=AUTH)
    up = echoed(body)
    assert status == 200 and up["body"] == "HELLO!" and up["h"]["content-length"] == ["6"]
    big = bytes(range(97, 123)) * 2000  # 52000 bytes, several slices
    status, _, body = req(envoy, "POST", "/rewrite", body=big, headers=AUTH)
    assert status == 200 and echoed(body)["body"] == (big.upper() + b"!").decode()


def test_path_rewrite(envoy: FilterEnvoy) -> None:
    status, _, body = req(envoy, "GET", "/newpath", headers=AUTH)
    assert status == 200 and echoed(body)["path"] == "/echo/rewritten"


def test_response_hook_status_and_local_reply(envoy: FilterEnvoy) -> None:
    status, h, _ = req(envoy, "GET", "/created", headers=AUTH)
    assert status == 202 and h["x-served-by"] == "aioresty"
    status, _, body = req(envoy, "GET", "/teapot", headers=AUTH)
    assert (status, body) == (418, b"short and stout")


def test_response_body_read_and_rewritten(envoy: FilterEnvoy) -> None:
    # /rb/ runs body_app (another App, per route): on_response(body=True)
    status, h, body = req(envoy, "GET", "/rb/echo")
    assert status == 200 and h["x-body-len"] == str(len(body))
    assert body == body.upper() and b'"PATH": "/RB/ECHO"' in body
    assert int(h["content-length"]) == len(body)


def test_response_body_over_limit_is_502(envoy: FilterEnvoy) -> None:
    status, h, _ = req(envoy, "GET", "/rb/big")  # 5000 bytes > 4096
    assert status == 502 and h["x-aioresty-error"] == "body-limit"


def test_request_body_over_limit_is_413(envoy: FilterEnvoy, upstream: Upstream) -> None:
    before = upstream.hits
    status, _, _ = req(envoy, "POST", "/rewrite", body=b"a" * (64 * 1024 + 1), headers=AUTH)
    assert status == 413 and upstream.hits == before


def test_exception_fail_closed_and_open(envoy: FilterEnvoy) -> None:
    status, h, _ = req(envoy, "GET", "/boom")
    assert status == 500 and h["x-aioresty-error"] == "error"

    def failure_lines() -> list[str]:  # one line per failed call, naming the hook
        return [
            ln
            for ln in envoy.log().splitlines()
            if ln.startswith("[W]") and "boom from the filter" in ln
        ]

    wait_until(lambda: failure_lines(), 10, "the failed call's log line")
    (line,) = failure_lines()
    assert "on_request hook 'auth' raised RuntimeError: boom from the filter" in line
    assert 'raise RuntimeError("boom from the filter")' in envoy.log()  # its traceback
    status, h, body = req(envoy, "GET", "/open/boom")  # fail=open on /open/
    assert status == 200 and "x-user" not in echoed(body)["h"]
    wait_until(lambda: len(failure_lines()) == 2, 10, "the second failed call's line")


def test_broken_hook_answers_apply_the_fail_policy(envoy: FilterEnvoy) -> None:
    """A failing __str__, a local reply that cannot be encoded: answered all the
    same, so the fail policy applies (before, the stream hung)."""
    for path in ("/unprintable", "/surrogate"):
        t0 = time.monotonic()
        status, h, _ = req(envoy, "GET", path)
        assert status == 500 and h["x-aioresty-error"] == "error", (path, status, h)
        assert time.monotonic() - t0 < 1.0
        status, _, body = req(envoy, "GET", f"/open{path}")
        assert status == 200 and "x-user" not in echoed(body)["h"]
    assert "Unprintable: <Unprintable: str() failed>" in envoy.log()
    assert req(envoy, "GET", "/echo", headers=AUTH)[0] == 200


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tab-name", "invalid header name 'x\\ty'"),
        ("paren-name", "invalid header name 'x(y'"),
        ("utf8-name", "invalid header name 'é'"),
        ("ctl-value", "invalid header value 'a\\x01b'"),
        ("del-value", "invalid header value 'a\\x7fb'"),
        ("tab-path", "invalid path '/a\\tb'"),
        ("status-100", "bad status 100"),
        ("content-length", "content-length is Envoy's to set (message framing)"),
        ("transfer-encoding", "transfer-encoding is Envoy's to set (message framing)"),
    ],
)
def test_output_hygiene_applies_the_fail_policy(
    envoy: FilterEnvoy, upstream: Upstream, case: str, message: str
) -> None:
    """Header names must be tokens, values field-values, the path visible ASCII,
    statuses 200-599: a hook breaking that fails under the filter's policy and
    nothing reaches the upstream raw."""
    before = upstream.hits

    def failed_and_logged() -> bool:
        status, h, _ = req(envoy, "GET", f"/hygiene/{case}", headers=AUTH)
        assert (status, h["x-aioresty-error"]) == (500, "error")
        assert upstream.hits == before
        return message in envoy.log()

    # again until logged: the runtime logs at most 10 failed calls a second
    wait_until(failed_and_logged, 10, f"{message!r} in Envoy's log", interval=0.2)


@pytest.mark.parametrize(
    "raw", [b"get / HTTP/1.1\r\nhost: x\r\n\r\n", b"GET / HTTP/1.1\r\nx bad: 1\r\n\r\n"]
)
def test_envoys_own_400_goes_out_through_a_response_hook(envoy: FilterEnvoy, raw: bytes) -> None:
    """A request Envoy cannot parse never reaches the filter: Envoy's 400 is sent
    as it is, not held for an on_response hook while the stream is reset."""
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=5) as s:
        s.sendall(raw)
        s.settimeout(5)
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 400 "), head


@pytest.mark.parametrize("code", [204, 304, 200, 404])
def test_local_replies_without_content_on_204_and_304(envoy: FilterEnvoy, code: int) -> None:
    """RFC 9110 8.6: no content-length (and no body) on 204, nor on 304."""
    s = socket.create_connection(("127.0.0.1", envoy.port), timeout=5)
    try:
        s.sendall(f"GET /status/{code} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        s.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
    finally:
        s.close()
    lines = head.split(b"\r\n\r\n", 1)[0].decode().lower().split("\r\n")
    assert lines[0].startswith(f"http/1.1 {code} ")
    has_length = any(line.startswith("content-length:") for line in lines[1:])
    assert has_length == (code not in (204, 304)), lines


def test_timeout_fail_closed_and_open(envoy: FilterEnvoy) -> None:
    t0 = time.monotonic()
    status, h, _ = req(envoy, "GET", "/t/sleep/3")  # timeout=0.3 on /t/
    assert status == 500 and h["x-aioresty-error"] == "timeout"
    assert time.monotonic() - t0 < 2.5
    t0 = time.monotonic()
    status, _, body = req(envoy, "GET", "/open/sleep/3")
    assert status == 200 and echoed(body)["path"] == "/open/sleep/3"
    assert time.monotonic() - t0 < 2.5


def test_the_apps_timeout_bounds_its_hooks(upstream: Upstream, tmp_path) -> None:
    """No "timeout" in the filter config: App(timeout=0.4) is the hooks' timeout."""
    e = FilterEnvoy(tmp_path, upstream.port, app="tests.envoy.python.filterapp:quick_app")
    e.start()
    try:
        status, _, body = req(e, "GET", "/sleep/0.05")
        assert status == 200 and echoed(body)["path"] == "/sleep/0.05"
        status, h, _ = req(e, "GET", "/sleep/5")
        assert status == 500 and h["x-aioresty-error"] == "timeout", (status, h)
    finally:
        assert e.stop() == 0
    log = e.log()
    assert "fail=closed body_limit=1048576 timeout_ms=400" in log
    assert "timed out after 0.4s" in log, log[-2000:]


def test_per_route_disable(envoy: FilterEnvoy) -> None:
    status, h, body = req(envoy, "GET", "/off/echo")  # no auth needed
    assert status == 200 and "x-user" not in echoed(body)["h"] and "x-served-by" not in h


def test_client_abort_cancels_handler(envoy: FilterEnvoy) -> None:
    s = socket.create_connection(("127.0.0.1", envoy.port), timeout=5)
    try:
        s.sendall(b"GET /sleep/30 HTTP/1.1\r\nhost: x\r\nx-id: abort-1\r\n\r\n")
        # the hook runs before its client goes (one not started yet is never started)
        wait_until(lambda: "sleep 30.0 started id=abort-1" in envoy.log(), 10, "the hook")
    finally:
        s.close()
    wait_until(lambda: "sleep 30.0 cancelled id=abort-1" in envoy.log(), 10, "cancellation")
    # the filter still serves
    assert req(envoy, "GET", "/echo", headers=AUTH)[0] == 200


async def _many(env: FilterEnvoy, n: int) -> list[tuple[str, int, str]]:
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:

        async def one(i: int) -> tuple[str, int, str]:
            async with s.get(env.url(f"/echo/{i}"), headers={**AUTH, "x-id": f"c{i}"}) as r:
                raw = await r.read()
                if r.status != 200:
                    return f"c{i}-seen", r.status, raw.decode(errors="replace")
                data = echoed(raw)
                return f"c{i}-seen", r.status, data["h"]["x-echo-id"][0]

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_200_concurrent_clients_each_matched(envoy: FilterEnvoy) -> None:
    results = asyncio.run(_many(envoy, 250))
    assert all(status == 200 and want == got for want, status, got in results)


@pytest.fixture(scope="module")
def envoy2(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory):
    e = FilterEnvoy(tmp_path_factory.mktemp("envoy2"), upstream.port, concurrency=2)
    e.start()
    yield e
    assert e.stop() == 0


def test_concurrency_2(envoy2: FilterEnvoy) -> None:
    results = asyncio.run(_many(envoy2, 200))
    assert all(status == 200 and want == got for want, status, got in results)
    assert req(envoy2, "GET", "/echo")[0] == 401


def test_bad_app_is_rejected_at_config_time(upstream: Upstream, tmp_path) -> None:
    e = FilterEnvoy(tmp_path, upstream.port, app="tests.envoy.python.no_such_module:app")
    with pytest.raises(AssertionError, match="envoy exited"):
        e.start(timeout=30)
    e._log.close()
    log = e.log()
    assert "cannot load app 'tests.envoy.python.no_such_module:app'" in log
    assert "python filter config" in log
