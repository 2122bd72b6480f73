"""tests/apps/storeapp.py:gate as an Envoy Python filter (docs/python-mode.md) in
front of the HTTP upstream: the on_request hook looks the token up in redis and
the request id up in PostgreSQL, then the request goes upstream with the
headers it set (or gets a 401 from Python)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from tests.envoy.python.conftest import FilterEnvoy
from tests.integration import cases
from tests.netutil import http_request
from tests.services import HttpUpstream, Postgres, store_env

GATE = "tests.apps.storeapp:gate"


@pytest.fixture(scope="module")
def gate(
    tmp_path_factory: pytest.TempPathFactory,
    http_upstream: HttpUpstream,
    store_config: dict[str, str],
) -> Iterator[FilterEnvoy]:
    e = FilterEnvoy(
        tmp_path_factory.mktemp("envoy-filter"),
        http_upstream.port,
        concurrency=2,
        app=GATE,
        timeout=30,
        routes=[{"prefix": "/t/", "app": GATE, "timeout": 1.0}],
    )
    e.env.update(store_env(store_config))
    e.start()
    yield e
    if e.proc is not None and e.proc.poll() is None:  # test_exit_runs_shutdown did not run
        e.stop()


@pytest.fixture(scope="module")
def token(redis_server) -> str:
    cases.set_tokens(redis_server.url, {"tok-filter": "filter-user"})
    return "tok-filter"


def gate_startups(env: FilterEnvoy) -> list[str]:
    return [line for line in env.log().splitlines() if "[storeapp] gate started" in line]


def test_concurrent_requests_matched(
    gate: FilterEnvoy, redis_server, http_upstream: HttpUpstream
) -> None:
    n = cases.N_CONCURRENT
    results = asyncio.run(_register_then_run(gate.port, n, redis_server.url))
    assert len(results) == n
    for rid, good, status, hs, body in results:
        if not good:
            assert (status, body, hs["www-authenticate"]) == (401, b"unknown token\n", "Token")
            assert http_upstream.hits(f"/api/{rid}") == 0
            continue
        assert status == 200, (rid, status, body[:300])
        up = json.loads(body)
        assert up["path"] == f"/api/{rid}"
        assert up["headers"]["x-user"] == f"user-{rid}"
        assert up["headers"]["x-sql-id"] == rid
        assert hs["x-served-by"] == "storeapp.gate"
    # both filter configs (main and /t/) name the same app: one runtime
    assert len(gate_startups(gate)) == 1, gate_startups(gate)


async def _register_then_run(port: int, n: int, redis_url: str):
    """n requests at once, each with its own id and token (registered in
    redis first); every tenth carries a bogus token."""
    ids = [f"filter-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
    cases.set_tokens(redis_url, {f"tok-{rid}": f"user-{rid}" for rid in ids})
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:

        async def one(i: int):
            rid = ids[i]
            good = i % 10 != 0
            headers = {"x-token": f"tok-{rid}" if good else "bogus", "x-id": rid}
            async with s.get(f"http://127.0.0.1:{port}/api/{rid}", headers=headers) as r:
                hs = {k.lower(): v for k, v in r.headers.items()}
                return rid, good, r.status, hs, await r.read()

        return await asyncio.gather(*(one(i) for i in range(n)))


def check_pool(gate: FilterEnvoy, token: str) -> None:
    for i in range(30):
        rid = cases.uid(f"after{i}")
        status, _, body = http_request(
            gate.port, "GET", f"/api/{rid}", headers={"x-token": token, "x-id": rid}
        )
        assert status == 200, body
        assert json.loads(body)["headers"]["x-sql-id"] == rid
    status, _, body = http_request(gate.port, "GET", "/_pool")
    assert status == 200, body
    report = json.loads(body)
    assert report["distinct"] == report["max"] == 8, report


def test_hook_timeout_cancels_query(
    gate: FilterEnvoy, postgres_server: Postgres, http_upstream: HttpUpstream, token: str
) -> None:
    """/t/ has a 1 s hook timeout: fail=closed answers 500 'timeout' after ~1 s,
    the hook is cancelled and so is its query; nothing reaches the upstream."""
    tag = cases.uid("ftimeout")
    path = f"/t/slow/5/{tag}"
    t0 = time.monotonic()
    status, h, _ = http_request(gate.port, "GET", path, headers={"x-token": token})
    elapsed = time.monotonic() - t0
    assert (status, h.get("x-aioresty-error")) == (500, "timeout"), (status, h)
    assert 0.9 <= elapsed < 3.0, elapsed
    cases.wait_cancelled(postgres_server, tag, gate, "gate")
    assert http_upstream.hits(path) == 0
    check_pool(gate, token)


def test_client_abort_cancels_query(
    gate: FilterEnvoy, postgres_server: Postgres, http_upstream: HttpUpstream, token: str
) -> None:
    tags = [cases.uid(f"fabort{i}") for i in range(3)]
    socks = []
    for tag in tags:
        s = socket.create_connection(("127.0.0.1", gate.port), timeout=5)
        s.sendall(f"GET /slow/30/{tag} HTTP/1.1\r\nHost: x\r\nx-token: {token}\r\n\r\n".encode())
        socks.append(s)
    try:
        cases.wait_active(postgres_server, tags)
    finally:
        for s in socks:
            s.close()
    for tag in tags:
        cases.wait_cancelled(postgres_server, tag, gate, "gate")
        assert http_upstream.hits(f"/slow/30/{tag}") == 0
    check_pool(gate, token)


def test_log_clean(gate: FilterEnvoy) -> None:
    assert cases.clean_log(gate.log()) == []
    assert gate.proc is not None and gate.proc.poll() is None


def test_exit_runs_shutdown(gate: FilterEnvoy) -> None:
    """SIGTERM: Envoy exits 0 and the filter app's on_shutdown ran."""
    assert gate.stop() == 0
    cases.check_exit_runs_shutdown(gate.log(), "[storeapp] gate started", "[storeapp] gate stopped")
