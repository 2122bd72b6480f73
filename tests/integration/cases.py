"""Checks shared by the Lua hosts (Envoy "lua" mode, Envoy's stock Lua filter +
bridge, nginx): each serves tests/apps/storeapp.py:app with the same routes

    POST /store/<method>[?t=MS]   body = request -> 200 res | 502, x-rc: rc, body = err
    GET  /gated/<id>, x-token: T  authorize(T) then profile("<user> <id>") -> 200 JSON
                                  | 401, x-rc: 10, "denied: unknown token"
    GET  /unload                  runtime:__unload()

`proxy` is any object with .port and .log() (the proxy's log, where the
runtime's stderr goes)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import uuid
from collections import Counter
from typing import Any, Protocol

import aiohttp
import redis

from tests.netutil import http_request, wait_until
from tests.services import Postgres

N_CONCURRENT = 200
KINDS = ("http_get", "aio_get", "kv", "sql", "fanout", "gated", "traced")


class Proxy(Protocol):
    port: int

    def log(self) -> str: ...


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def store(proxy: Proxy, method: str, req: Any = b"", q: str = "", timeout: float = 15.0):
    body = req if isinstance(req, bytes) else json.dumps(req).encode()
    path = f"/store/{method}" + (f"?{q}" if q else "")
    return http_request(proxy.port, "POST", path, body, timeout=timeout)


def set_tokens(redis_url: str, tokens: dict[str, str]) -> None:
    r = redis.Redis.from_url(redis_url)
    try:
        r.mset({f"token:{t}": u for t, u in tokens.items()})
    finally:
        r.close()


def check_concurrent(proxy: Proxy, mode: str, redis_url: str, n: int = N_CONCURRENT) -> set[int]:
    """n concurrent requests over every handler kind; each answer is its own
    request's.  Returns the PostgreSQL backend pids the `sql` answers named."""
    results = asyncio.run(_concurrent(proxy.port, mode, n, redis_url))
    assert len(results) == n
    kinds = Counter(k for k, *_ in results)
    assert set(kinds) == set(KINDS), kinds
    bad = [(k, rid, st, body[:300]) for k, rid, st, body in results if st != 200]
    assert not bad, f"{len(bad)} non-200 answers, first: {bad[:3]}\n{proxy.log()[-3000:]}"
    pids: set[int] = set()
    for kind, rid, _, body in results:
        if kind in ("http_get", "aio_get"):
            up = json.loads(body)
            assert up["path"] == f"/echo/{rid}", (kind, rid, up)
            ua = up["headers"].get("user-agent", "")
            want = "python-httpx/" if kind == "http_get" else "aiohttp/"
            assert want in ua, (kind, ua)
        elif kind == "kv":
            assert json.loads(body) == {"key": f"store:{rid}", "value": f"v-{rid}"}, body
        elif kind == "sql":
            doc = json.loads(body)
            assert doc["echo"] == rid, (rid, doc)
            pids.add(int(doc["pid"]))
        elif kind == "fanout":
            assert json.loads(body) == {
                "id": rid,
                "kv": f"v-{rid}",
                "sql": rid,
                "http": f"/echo/{rid}",
            }, body
        elif kind == "traced":  # its ContextVar: set by this call only
            assert json.loads(body) == {"id": rid, "before": None}, body
        else:  # gated: authorize (redis) in one call, profile (PostgreSQL) in a second
            doc = json.loads(body)
            assert (doc["user"], doc["id"]) == (f"user-{rid}", rid), (rid, doc)
    # the redis writes are real: read them back from here
    r = redis.Redis.from_url(redis_url)
    try:
        keys = [f"store:{rid}" for k, rid, *_ in results if k in ("kv", "fanout")]
        assert r.mget(keys) == [f"v-{k[6:]}".encode() for k in keys]
    finally:
        r.close()
    return pids


async def _concurrent(
    port: int, mode: str, n: int, redis_url: str
) -> list[tuple[str, str, int, bytes]]:
    """n requests at once, kind i % len(KINDS), each with its own id; the
    gated ones' tokens are put in redis first."""
    ids = [f"{mode}-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
    set_tokens(
        redis_url,
        {
            f"tok-{rid}": f"user-{rid}"
            for i, rid in enumerate(ids)
            if KINDS[i % len(KINDS)] == "gated"
        },
    )
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:

        async def one(i: int) -> tuple[str, str, int, bytes]:
            kind, rid = KINDS[i % len(KINDS)], ids[i]
            if kind == "gated":
                r = s.get(f"{url}/gated/{rid}", headers={"x-token": f"tok-{rid}"})
            elif kind in ("http_get", "aio_get"):
                r = s.post(f"{url}/store/{kind}", data=rid.encode())
            else:
                r = s.post(f"{url}/store/{kind}", data=json.dumps({"id": rid}).encode())
            async with r as resp:
                return kind, rid, resp.status, await resp.read()

        return await asyncio.gather(*(one(i) for i in range(n)))


def check_denied(proxy: Proxy) -> None:
    for headers in ({"x-token": "no-such-token"}, {}):
        status, h, body = http_request(proxy.port, "GET", "/gated/x1", headers=headers)
        assert (status, h.get("x-rc"), body) == (401, "10", b"denied: unknown token"), (
            status,
            h,
            body,
        )


def wait_cancelled(pg: Postgres, tag: str, proxy: Proxy, name: str, timeout: float = 5.0) -> None:
    """The tagged pg_sleep is no longer running in PostgreSQL, the server logged
    it as cancelled on the client's request (asyncpg's cancel), and the handler
    saw its cancellation (its log line in the proxy's log)."""
    wait_until(lambda: not pg.active_queries(tag), timeout, f"pg_sleep {tag} to be cancelled")
    wait_until(
        lambda: any(f"/* {tag} */" in st for st in pg.cancelled_statements()),
        timeout,
        f"postgres to log the cancellation of pg_sleep {tag}",
    )
    wait_until(
        lambda: f"[storeapp] {name} {tag} cancelled" in proxy.log(),
        timeout,
        f"'{name} {tag} cancelled' in the proxy log",
    )


def wait_active(pg: Postgres, tags: list[str], timeout: float = 10.0) -> None:
    wait_until(
        lambda: all(pg.active_queries(t) for t in tags),
        timeout,
        f"pg_sleep of {tags} running in PostgreSQL",
        interval=0.1,
    )


def check_healthy(proxy: Proxy, n: int = 30) -> None:
    """Calls succeed and the pool hands out every one of its connections."""
    for i in range(n):
        rid = uid(f"after{i}")
        status, _, body = store(proxy, "sql", {"id": rid})
        assert status == 200 and json.loads(body)["echo"] == rid, (status, body)
    status, _, body = store(proxy, "pool_check", {})
    assert status == 200, body
    report = json.loads(body)
    assert report["distinct"] == report["max"] == 8, report
    assert report["size"] <= report["max"], report


def check_handler_timeout(proxy: Proxy, pg: Postgres) -> None:
    """slow_sql (handler timeout 1 s) sleeping 5 s: rc 3 after ~1 s, the
    query is cancelled in PostgreSQL, the pool stays healthy."""
    tag = uid("timeout")
    t0 = time.monotonic()
    status, h, body = store(proxy, "slow_sql", {"secs": 5, "tag": tag})
    elapsed = time.monotonic() - t0
    assert (status, h.get("x-rc")) == (502, "3"), (status, h, body)
    assert b"timed out" in body, body
    assert 0.9 <= elapsed < 3.0, elapsed
    wait_cancelled(pg, tag, proxy, "slow_sql")
    assert "handler 'slow_sql' timed out" in proxy.log()
    check_healthy(proxy, n=5)


def check_call_timeout(proxy: Proxy, pg: Postgres) -> None:
    """The Lua side's own per-call timeout (resty_ffi.call(..., 300 ms)) on a
    60 s handler: false, "timeout"; the task is aborted, so the handler is
    cancelled and so is its query."""
    tag = uid("calltmo")
    t0 = time.monotonic()
    status, h, body = store(proxy, "long_sql", {"secs": 5, "tag": tag}, q="t=300")
    elapsed = time.monotonic() - t0
    assert (status, body) == (502, b"timeout"), (status, h, body)
    assert elapsed < 2.0, elapsed
    wait_cancelled(pg, tag, proxy, "long_sql")


def check_client_abort(proxy: Proxy, pg: Postgres, n: int = 3) -> None:
    """Clients close their connections while their long_sql (pg_sleep 30) runs:
    the queries are cancelled in PostgreSQL within seconds, the handler sees
    CancelledError, the next calls succeed and the pool is whole."""
    tags = [uid(f"abort{i}") for i in range(n)]
    socks = []
    for tag in tags:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        body = json.dumps({"secs": 30, "tag": tag}).encode()
        s.sendall(
            b"POST /store/long_sql HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        socks.append(s)
    try:
        wait_active(pg, tags)
    finally:
        t0 = time.monotonic()
        for s in socks:
            s.close()
    for tag in tags:
        wait_cancelled(pg, tag, proxy, "long_sql")
    assert time.monotonic() - t0 < 10
    check_healthy(proxy)


def startups(proxy: Proxy) -> list[str]:
    return [line for line in proxy.log().splitlines() if "[storeapp] started" in line]


def check_unload_runs_shutdown(proxy: Proxy) -> None:
    """runtime:__unload() runs on_shutdown (the clients are closed); the next
    load_ffi starts the runtime afresh and on_startup runs again.  One
    keep-alive connection for both requests: the same nginx worker."""
    before = len(startups(proxy))
    c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=15)
    try:
        c.request("GET", "/unload")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"unloaded")
        wait_until(
            lambda: "[storeapp] stopped" in proxy.log(), 10, "'[storeapp] stopped' in the log"
        )
        rid = uid("reload")
        c.request("POST", "/store/sql", body=json.dumps({"id": rid}).encode())
        r = c.getresponse()
        body = r.read()
        assert r.status == 200 and json.loads(body)["echo"] == rid, body
    finally:
        c.close()
    wait_until(lambda: len(startups(proxy)) > before, 5, "a second on_startup")


def check_exit_runs_shutdown(log: str, started: str, stopped: str) -> None:
    """After the proxy exited: every runtime that ran on_startup ran on_shutdown
    (App.on_shutdown: "when the runtime is unloaded or the process exits")."""
    lines = log.splitlines()
    n_started = sum(started in line for line in lines)
    n_stopped = sum(stopped in line for line in lines)
    assert n_started >= 1
    assert n_stopped == n_started, (
        f"{n_started} x '{started}' but {n_stopped} x '{stopped}':\n"
        + "\n".join(line for line in lines if "[storeapp]" in line or "aioresty." in line)[-3000:]
    )


def clean_log(log: str, allow: tuple[str, ...] = ()) -> list[str]:
    """Lines of a proxy log that point at a bug: Envoy errors and criticals
    ([E]/[C] with the tests' "[%L] %v" format), nginx [error] and worse, Python
    tracebacks and ERROR/CRITICAL records of the runtime."""
    marks = ("[E]", "[C]", "[error]", "[crit]", "[alert]", "[emerg]", "Traceback")
    bad = []
    for line in log.splitlines():
        if line.startswith(("[E]", "[C]")) or any(m in line for m in marks[2:]):
            pass
        elif line.startswith("[aioresty] ") and line.split()[1] in ("ERROR", "CRITICAL"):
            pass
        else:
            continue
        if not any(a in line for a in allow):
            bad.append(line)
    return bad
