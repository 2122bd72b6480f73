"""Runtime semantics through aioresty.testing (the real runtime thread and queue):
every call is its own asyncio Task with its own context, answered exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import aioresty
from aioresty import runtime
from aioresty.testing import AppClient
from tests import semantics_cases
from tests.apps import asyncapp


@pytest.fixture
async def client() -> AsyncIterator[AppClient]:
    async with AppClient(asyncapp.app) as c:
        yield c


async def test_each_call_is_its_own_task(client: AppClient) -> None:
    answers = await asyncio.gather(*(client.call("task_name") for _ in range(20)))
    assert all(a.ok for a in answers), answers
    assert len({a.text for a in answers}) == 20


async def test_asyncio_timeout_taskgroup_wait_for_shield_on_the_first_step(
    client: AppClient,
) -> None:
    assert (await client.call("timeout_first", b"t")).body == b"t"
    assert (await client.call("taskgroup")).text == "ab"
    assert (await client.call("wait_for_shield")).text == "s timeout"


async def test_answers_up_to_the_limit(client: AppClient) -> None:
    """The test client's host is the core too: the same 32 MiB rule as every proxy."""
    limit = semantics_cases.ANSWER_MAX
    ok = await client.call("sized", str(limit).encode())
    assert ok.rc == 0 and ok.body is not None and len(ok.body) == limit
    bad = await client.call("sized", str(limit + 1).encode())
    assert bad.rc == aioresty.RC_BAD_RESULT
    assert f"the answer to 'sized' is {limit + 1} bytes, over the limit of {limit}" in bad.text


async def test_failed_calls_and_blocking_are_logged(
    client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The test client logs as the proxies do (one line per failed call, the
    watchdog's warnings), through Python logging."""
    caplog.set_level(logging.WARNING, logger="aioresty")
    assert (await client.call("no_such_handler", b"")).rc == 2
    assert (await client.call("block_loop", b"0.3")).text == "unblocked"
    await asyncio.sleep(0.2)
    text = caplog.text
    assert "call 'no_such_handler' failed: rc=2 after " in text
    assert "handler 'block_loop' has held the event loop for" in text
    assert "the event loop runs again, handler 'block_loop' held it for" in text
    late = await client.call("block_past_timeout", b"0.4")  # its timer could not fire
    assert late.rc == aioresty.RC_TIMEOUT and "(it returned after 0.4" in late.text, late


async def test_contextvars_never_leak_between_calls(client: AppClient) -> None:
    answers = await asyncio.gather(*(client.call("ctx", f"u{i}") for i in range(30)))
    assert [a.text for a in answers] == [f"- u{i}" for i in range(30)]
    assert (await client.call("ctx", "again")).text == "- again"


async def test_a_broken_answer_loses_nothing_else_in_its_batch(client: AppClient) -> None:
    broken = ["lone_surrogate", "surrogate_error", "bad_str", "raise_keyboard_interrupt"]
    methods = [broken[i % 4] if i % 2 else "timeout_first" for i in range(40)]
    answers = await asyncio.gather(*(client.call(m, str(i)) for i, m in enumerate(methods)))
    for i, (m, a) in enumerate(zip(methods, answers, strict=True)):
        if m == "timeout_first":
            assert (a.rc, a.body) == (0, str(i).encode())
        elif m == "lone_surrogate":
            assert a.rc == aioresty.RC_BAD_RESULT and "not valid UTF-8" in a.text, a
        elif m == "surrogate_error":
            assert (a.rc, a.body) == (7, b"refused \\udcff here")
        elif m == "bad_str":
            assert a.rc == 1 and "Unprintable: <Unprintable: str() failed>" in a.text, a
        else:
            assert a.rc == 1 and "raised KeyboardInterrupt" in a.text, a


@pytest.mark.parametrize("what", ["ki", "exit"])
async def test_a_background_base_exception_does_not_stop_the_runtime(
    client: AppClient, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await client.call("background_dies", what)).text == "started"
    await asyncio.sleep(0.1)
    answers = await asyncio.gather(*(client.call("timeout_first", str(i)) for i in range(10)))
    assert [a.text for a in answers] == [str(i) for i in range(10)]
    name = "KeyboardInterrupt" if what == "ki" else "SystemExit"
    assert f"{name} escaped the event loop" in caplog.text


async def test_loop_stop_from_app_code_is_ignored(client: AppClient) -> None:
    assert (await client.call("stop_loop")).ok
    assert (await client.call("timeout_first", b"x")).body == b"x"


async def test_timeout_is_answered_on_time_even_if_the_handler_swallows_it() -> None:
    app = aioresty.App(timeout=0.2)
    app.add(asyncapp.stubborn)
    async with AppClient(app) as c:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        a = await c.call("stubborn")
        assert a.rc == aioresty.RC_TIMEOUT and "timed out after 0.2s" in a.text
        assert loop.time() - t0 < 0.15 + 0.2


async def test_timeout_and_abort_cancel_at_the_await_and_finally_runs(
    client: AppClient,
) -> None:
    asyncapp.events.clear()
    a = await client.call("slow_with_finally", "5")
    assert a.rc == aioresty.RC_TIMEOUT
    call = asyncio.ensure_future(client.call("slow_with_finally", "5 abort"))
    await asyncio.sleep(0.1)
    call.cancel()  # the caller goes away: the task is aborted in the runtime
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(50):
        if "finally ran for 5 abort" in asyncapp.events:
            break
        await asyncio.sleep(0.02)
    assert asyncapp.events == ["finally ran for 5", "finally ran for 5 abort"]


async def test_the_runtime_ending_anyway_answers_all_and_closes_the_queue() -> None:
    """White box: make the loop thread end as if our own code had failed."""
    app = aioresty.App(timeout=2.0)

    @app.handler
    async def crash(req: bytes) -> bytes:
        rt = next(r for r in runtime._runtimes if r.app is app)
        rt._stopping = True
        asyncio.get_running_loop().stop()
        await asyncio.sleep(5)
        return b"never"

    async with AppClient(app) as c:
        crashing = [asyncio.ensure_future(c.call("crash")) for _ in range(3)]
        answers = await asyncio.gather(*crashing)
        assert all(a.rc == aioresty.RC_CANCELLED for a in answers), answers
        assert "runtime 'testing' stopped" in answers[0].text
        with pytest.raises(ConnectionError):
            await c.call("crash")


async def test_startup_and_shutdown_hooks_share_a_client_across_calls() -> None:
    app = aioresty.App()
    seen: list[str] = []

    @app.on_startup
    async def start() -> None:
        app.state.pool = asyncio.Queue()
        for i in range(3):
            app.state.pool.put_nowait(f"conn{i}-{app.config['dsn']}")
        seen.append("startup")

    @app.on_shutdown
    async def stop() -> None:
        seen.append(f"shutdown {app.state.pool.qsize()}")

    @app.handler(codec="json")
    async def query(req: dict) -> dict:
        conn = await app.state.pool.get()
        try:
            await asyncio.sleep(0.01)
            return {"id": req["id"], "conn": conn}
        finally:
            app.state.pool.put_nowait(conn)

    async with AppClient(app, config={"dsn": "db"}) as c:
        assert seen == ["startup"]
        answers = await asyncio.gather(*(c.call_json("query", {"id": i}) for i in range(50)))
        assert [a.json()["id"] for a in answers] == list(range(50))
        assert {a.json()["conn"] for a in answers} == {f"conn{i}-db" for i in range(3)}
    assert seen == ["startup", "shutdown 3"]


async def test_a_failing_startup_fails_the_start_with_its_message() -> None:
    app = aioresty.App()

    @app.on_startup
    async def start() -> None:
        raise OSError("redis at 127.0.0.1:1 refused the connection")

    with pytest.raises(OSError, match="refused the connection"):
        async with AppClient(app):
            pass


async def test_json_codec_and_an_undecodable_payload() -> None:
    app = aioresty.App()

    @app.handler(codec="json")
    async def add(req: dict) -> dict:
        return {"sum": req["a"] + req["b"], "name": "é"}

    @app.handler(codec="json")
    async def bad_result(req: dict) -> object:
        return {1, 2}

    async with AppClient(app) as c:
        ok = await c.call_json("add", {"a": 1, "b": 2})
        assert ok.json() == {"sum": 3, "name": "é"} and ok.body == '{"sum":3,"name":"é"}'.encode()
        bad = await c.call("add", b"{not json")
        assert bad.rc == aioresty.RC_BAD_REQUEST and "expects a json payload" in bad.text
        res = await c.call("bad_result", b"{}")
        assert res.rc == aioresty.RC_BAD_RESULT and "json cannot encode" in res.text


async def test_cfg_string_config() -> None:
    async with AppClient('tests.apps.echoapp {"x": [1, 2]}') as c:
        assert c.app.config == {"x": [1, 2]}
        assert (await c.call("echo", b"hi")).body == b"hi"
    with pytest.raises(ValueError, match="expected a JSON object"):
        AppClient("tests.apps.echoapp [1]")


def test_timeouts_are_bounded() -> None:
    for bad in (None, 0, -1, float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            aioresty.App(timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        aioresty.App().add(asyncapp.pid, timeout=None)  # type: ignore[arg-type]


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


async def test_httpx_and_aiohttp_as_the_first_await() -> None:
    httpx = pytest.importorskip("httpx")
    import aiohttp

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    app = aioresty.App()

    @app.handler
    async def via_httpx(req: bytes) -> bytes:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{base}/x/{req.decode()}")
            return r.content

    @app.handler
    async def via_aiohttp(req: bytes) -> bytes:
        async with aiohttp.ClientSession() as s, s.get(f"{base}/y/{req.decode()}") as r:
            return await r.read()

    try:
        async with AppClient(app) as c:
            for method, prefix in (("via_httpx", "/x/"), ("via_aiohttp", "/y/")):
                answers = await asyncio.gather(*(c.call(method, str(i)) for i in range(10)))
                got = [json.loads(a.body or b"") if a.ok else a.text for a in answers]
                assert got == [{"path": f"{prefix}{i}"} for i in range(10)]
    finally:
        srv.shutdown()
        srv.server_close()


async def test_filter_client_runs_the_hooks_like_the_envoy_filter() -> None:
    from aioresty.testing import FilterClient

    async with FilterClient("tests.envoy.python.filterapp:app") as c:
        denied = await c.request("GET", "/echo")
        assert denied.reply is not None and denied.reply.status == 401
        assert denied.reply.body == b"denied"
        ok = await c.request(
            "GET", "/echo", headers={"authorization": "Bearer ok", "x-remove-me": "1"}
        )
        assert ok.continued and ok.header("x-user") == "alice" and ok.header("x-remove-me") is None
        assert [v for k, v in ok.headers if k == "x-multi"] == ["one", "two"]
        rewritten = await c.request("POST", "/rewrite", {"authorization": "Bearer ok"}, b"abc")
        assert rewritten.body == b"ABC!"
        boom = await c.request("GET", "/boom")
        assert boom.rc == 1 and "boom from the filter" in boom.error
        resp = await c.response(200, {"x-drop-me": "1"})
        assert resp.header("x-served-by") == "aioresty" and resp.header("x-drop-me") is None


def test_a_hook_cannot_make_a_response_bodiless_or_reframe_it() -> None:
    """resp.status = 204/304 would leave the upstream's body behind it, and a
    content-length/transfer-encoding of the hook's would reframe the message."""
    resp = aioresty.FilterResponse({":status": "200"}, aioresty.Headers(), None, False)
    for code in (204, 304):
        with pytest.raises(ValueError, match=f"cannot turn a response into {code}"):
            resp.status = code
    for name in ("content-length", "Transfer-Encoding"):
        with pytest.raises(ValueError, match="is Envoy's to set"):
            resp.headers[name] = "1"
        with pytest.raises(ValueError, match="is Envoy's to set"):
            del resp.headers[name]
