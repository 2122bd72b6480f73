"""The Envoy bridge mechanism on the real binary: Lua httpCall -> the
aioresty_bridge cluster -> libaioresty_envoy.so (upstream filter) -> core task
queue -> runtime -> scheduler -> local reply -> Lua.  Runtimes: the C echo,
the Go echo and a slow C echo built by the tests."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from urllib.parse import quote

import aiohttp
import pytest

from tests.envoy.conftest import PROBE_USER, REPO, wait_until
from tests.netutil import sigterm_with_requests_pending


def call(env, lib="ffi_c_echo", body=b"", method="echo", cfg=None, t=None, mq=None, timeout=10.0):
    q = f"/call?lib={quote(lib)}&method={quote(method)}"
    if cfg is not None:
        q += f"&cfg={quote(cfg)}"
    if t is not None:
        q += f"&t={t}"
    if mq is not None:
        q += f"&mq={mq}"
    return env.request("POST", q, body=body, timeout=timeout)


def tasks_alive(env) -> int:
    status, _, body = env.request("GET", "/alive")
    assert status == 200
    return int(body)


def test_echo_c_roundtrip(probe):
    status, h, body = call(probe, body=b"hello bridge")
    assert status == 200, (h, body)
    assert h["x-rc"] == "0" and h["x-nil"] == "0"
    assert body == b"hello bridge"


def test_go_echo(probe):
    status, h, body = call(probe, lib="ffi_go_echo", method="foobar", body=b"foobar")
    assert (status, h["x-rc"], body) == (200, "0", b"foobar")


def test_empty_and_binary(probe):
    status, h, body = call(probe, body=b"")
    assert (status, h["x-rc"], h["x-nil"], body) == (200, "0", "0", b"")
    data = bytes(range(256)) * 4 + b"\x00\x00end"
    status, h, body = call(probe, body=data)
    assert status == 200 and body == data


def test_null_answer_is_nil(probe, slow_runtime):
    status, h, body = call(probe, lib=slow_runtime, cfg="0", body=b"NULL")
    assert (status, h["x-rc"], h["x-nil"], body) == (200, "0", "1", b"")


def test_one_mebibyte_both_ways(probe):
    data = os.urandom(1 << 20)
    status, h, body = call(probe, body=data, timeout=30)
    assert status == 200, (h, body[:200])
    assert len(body) == len(data) and body == data


def test_rc_nonzero(probe):
    status, h, body = call(probe, cfg="rc=7", body=b"boom")
    assert (status, h["x-rc"], body) == (200, "7", b"boom")


def test_missing_library_errors(probe):
    status, h, body = call(probe, lib="ffi_does_not_exist")
    assert status == 500 and h["x-err"] == "load"
    assert b"ffi_does_not_exist" in body


def test_timeout_aborts_and_recovers(probe, slow_runtime):
    t0 = time.monotonic()
    status, h, body = call(probe, lib=slow_runtime, cfg="400", t=50, body=b"late")
    assert time.monotonic() - t0 < 0.35
    assert status == 502 and h["x-err"] == "timeout"
    # the late answer is dropped; everything is freed
    wait_until(lambda: tasks_alive(probe) == 0, 5, "tasks freed after timeout")
    status, h, body = call(probe, lib=slow_runtime, cfg="400", body=b"in time")
    assert (status, body) == (200, b"in time")


def test_queue_full_and_closed(probe, slow_runtime):
    # max_queue=1 on a runtime that answers in 300 ms: a burst overflows at once
    cfg = "300"
    results = []

    def one():
        results.append(call(probe, lib=slow_runtime, cfg=cfg, mq=1, body=b"x"))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    errs = [h.get("x-err") for s, h, b in results if s != 200]
    oks = [b for s, h, b in results if s == 200]
    assert len(results) == 6
    assert oks, results
    assert "post failed, queue full" in errs, results
    # unload: the next call answers at once with the closed-queue error
    assert probe.request("GET", f"/unload?lib={slow_runtime}&cfg={cfg}")[0] == 200
    t0 = time.monotonic()
    status, h, _ = call(probe, lib=slow_runtime, cfg=cfg, mq=1, body=b"x")
    assert status == 502 and h["x-err"] == "task queue is finished"
    assert time.monotonic() - t0 < 0.5


def test_no_request_reaches_a_socket(probe):
    for _ in range(20):
        assert call(probe, body=b"x")[0] == 200
    st = probe.stats()
    assert st["cluster.aioresty_bridge.upstream_cx_connect_fail"] == 0
    # one pooled in-process connection per worker, and it never carries a request
    assert st["cluster.aioresty_bridge.upstream_cx_total"] <= probe.concurrency
    assert st["http.aioresty_bridge_sink.downstream_rq_total"] == 0


async def _many(port: int, n: int, lib: str, timeout: float = 30.0):
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one(i: int):
            payload = f"request-{i}-".encode() * (1 + i % 7)
            async with s.post(
                f"http://127.0.0.1:{port}/call?lib={lib}",
                data=payload,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                return i, payload, r.status, await r.read()

        return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.parametrize("lib", ["ffi_c_echo", "ffi_go_echo"])
def test_250_concurrent_clients_matched(probe, lib):
    res = asyncio.run(_many(probe.port, 250, lib))
    for i, payload, status, body in res:
        assert status == 200, (i, body[:200])
        assert body == payload, i
    wait_until(lambda: tasks_alive(probe) == 0, 5, "no task left")


def test_more_calls_in_flight_than_envoys_default_circuit_breaker(envoy_factory):
    """1100 calls held ~1 s each at once (async Python sleeps): Envoy's default
    cluster thresholds (1024) would answer the rest 503 'overflow'; the bridge
    cluster lifts them (max_queue is the limit)."""
    probe = envoy_factory(PROBE_USER, env={"AIORESTY_VENV": sys.prefix}, python_path=[str(REPO)])
    url = f"http://127.0.0.1:{probe.port}/call?lib=aioresty&cfg=tests.apps.echoapp&method=sleep"

    async def run() -> list[tuple[int, bytes]]:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as s:

            async def one() -> tuple[int, bytes]:
                async with s.post(url, data=b"1", timeout=aiohttp.ClientTimeout(total=60)) as r:
                    return r.status, await r.read()

            return await asyncio.gather(*(one() for _ in range(1100)))

    res = asyncio.run(run())
    bad = [r for r in res if r != (200, b"slept")]
    assert not bad, (len(bad), bad[:3])
    wait_until(lambda: tasks_alive(probe) == 0, 5, "no task left")


def test_concurrency_2_shares_one_runtime(envoy_factory, slow_runtime, tmp_path):
    init_log = tmp_path / "inits.log"
    env = envoy_factory(PROBE_USER, concurrency=2, env={"AIORESTY_TEST_INIT_LOG": str(init_log)})
    res = asyncio.run(_many(env.port, 200, "ffi_go_echo"))
    assert all(s == 200 and b == p for _, p, s, b in res)
    res = asyncio.run(_many(env.port, 100, slow_runtime + "&cfg=5"))
    assert all(s == 200 and b == p for _, p, s, b in res)
    st = env.stats()
    workers = [
        v
        for k, v in st.items()
        if k.startswith(f"listener.127.0.0.1_{env.port}.worker_")
        and k.endswith(".downstream_cx_total")
    ]
    assert len(workers) == 2 and all(v > 0 for v in workers), workers
    assert st["http.aioresty_bridge_sink.downstream_rq_total"] == 0
    # both workers' Lua VMs loaded `ffi_slow&5`: the runtime started once
    assert init_log.read_text().splitlines() == ["init 5"]


def test_client_aborts_under_load(probe, slow_runtime):
    """Clients that disconnect mid-call leak nothing and do not crash Envoy."""

    def abort_one():
        s = socket.create_connection(("127.0.0.1", probe.port), timeout=5)
        s.sendall(
            f"POST /call?lib={slow_runtime}&cfg=50 HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 3\r\n\r\nabc".encode()
        )
        time.sleep(0.02)
        s.close()

    async def load():
        return await _many(probe.port, 100, "ffi_c_echo")

    ths = [threading.Thread(target=abort_one) for _ in range(60)]
    for th in ths:
        th.start()
    res = asyncio.run(load())
    for th in ths:
        th.join(10)
    assert all(s == 200 and b == p for _, p, s, b in res)
    wait_until(lambda: tasks_alive(probe) == 0, 15, "aborted tasks freed")
    assert probe.proc.poll() is None
    assert call(probe, body=b"still alive")[2] == b"still alive"


def test_sigterm_with_calls_in_flight(envoy_factory, slow_runtime):
    env = envoy_factory(PROBE_USER, concurrency=2)
    request = (
        f"POST /call?lib={slow_runtime}&cfg=1000 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    )
    sigterm_with_requests_pending(env, request.encode(), 20)
    assert "caught ENVOY_SIGTERM" in env.log()


def test_bad_bridge_request_is_rejected(probe):
    """A bridge call without the queue/method headers is answered 400 by the module."""
    status, h, _body = probe.request("GET", "/raw")
    assert status == 200
    assert (h["x-status"], h["x-aioresty-error"]) == ("400", "bad-request")
    # and the generated config never routes downstream traffic to the bridge
    for vh in probe.config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            assert r.get("route", {}).get("cluster") != "aioresty_bridge"


def test_sigterm_idle(probe):
    assert call(probe, body=b"x")[0] == 200
    assert probe.terminate() == 0
