"""An aioresty app written the way users write one: real clients for real
services, each created once when the runtime starts and closed when it stops.

    ngx.load_ffi("aioresty", 'tests.apps.storeapp:app {"redis_url": "redis://...",
                 "pg_dsn": "postgresql://...", "http_url": "http://..."}')

`app` serves Lua calls (Envoy's "lua" mode, the stock Lua filter + bridge,
nginx).  `gate` is an Envoy Python filter (docs/python-mode.md) over the same
services; its filter_config string carries only the app spec, so it falls back
to AIORESTY_TEST_* environment variables for the addresses.

Lines printed to stderr start with "[storeapp]": the tests find them in the
proxies' logs.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import re
import sys
from typing import Any

import aiohttp
import asyncpg
import httpx
import redis.asyncio as aioredis

import aioresty
from aioresty import HandlerError

RC_DENIED = 10
# request-scoped, as a logging/tracing middleware would keep it
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_TAG = re.compile(r"[A-Za-z0-9_]{1,64}")


def note(msg: str) -> None:
    print(f"[storeapp] {msg}", file=sys.stderr, flush=True)


def _tag(req: dict[str, Any]) -> str:
    tag = str(req.get("tag", "untagged"))
    if not _TAG.fullmatch(tag):
        raise HandlerError(f"bad tag {tag!r}", rc=4)
    return tag


async def _open(state: Any, cfg: dict[str, Any]) -> None:
    state.http = httpx.AsyncClient(base_url=cfg["http_url"], timeout=5.0)
    state.aio = aiohttp.ClientSession(
        base_url=cfg["http_url"], timeout=aiohttp.ClientTimeout(total=5)
    )
    # a blocking pool: past max_connections a command waits for a connection
    # (the default pool raises MaxConnectionsError at 100 commands in flight)
    pool = aioredis.BlockingConnectionPool.from_url(cfg["redis_url"], max_connections=64, timeout=5)
    state.redis = aioredis.Redis(connection_pool=pool)
    state.pg = await asyncpg.create_pool(cfg["pg_dsn"], min_size=1, max_size=8, timeout=5)


async def _close(state: Any) -> None:
    await state.http.aclose()
    await state.aio.close()
    await state.redis.aclose(close_connection_pool=True)
    await state.pg.close()


async def _sleep_sql(pool: asyncpg.Pool, name: str, secs: float, tag: str) -> None:
    """`SELECT pg_sleep(secs)`, the tag in a comment so that the query can be
    found in pg_stat_activity."""
    try:
        await pool.execute(f"SELECT pg_sleep($1) /* {tag} */", secs)
    except asyncio.CancelledError:
        note(f"{name} {tag} cancelled")
        raise


# ---------------------------------------------------------------------------
# the Lua-called app

app = aioresty.App(timeout=5.0)
startups = 0


@app.on_startup
async def start() -> None:
    global startups
    await _open(app.state, app.config)
    startups += 1
    note(f"started pid={os.getpid()} startups={startups}")


@app.on_shutdown
async def stop() -> None:
    await _close(app.state)
    note(f"stopped pid={os.getpid()}")


@app.handler
async def http_get(req: bytes) -> bytes:
    """GET <upstream>/echo/<id> with httpx; the upstream's body."""
    r = await app.state.http.get(f"/echo/{req.decode()}")
    r.raise_for_status()
    return r.content


@app.handler
async def aio_get(req: bytes) -> bytes:
    """The same with aiohttp."""
    async with app.state.aio.get(f"/echo/{req.decode()}") as r:
        r.raise_for_status()
        return await r.read()


@app.handler(codec="json")
async def kv(req: dict[str, Any]) -> dict[str, Any]:
    """SET then GET of a key of this request's own."""
    key = f"store:{req['id']}"
    await app.state.redis.set(key, f"v-{req['id']}", ex=300)
    value = await app.state.redis.get(key)
    return {"key": key, "value": value.decode()}


@app.handler(codec="json")
async def sql(req: dict[str, Any]) -> dict[str, Any]:
    row = await app.state.pg.fetchrow("SELECT $1::text, pg_backend_pid()", str(req["id"]))
    return {"echo": row[0], "pid": row[1]}


@app.handler(codec="json", timeout=1.0)
async def slow_sql(req: dict[str, Any]) -> dict[str, Any]:
    """pg_sleep(secs) with a 1 s handler timeout: the timeout tests."""
    await _sleep_sql(app.state.pg, "slow_sql", float(req["secs"]), _tag(req))
    return {"slept": req["secs"]}


@app.handler(codec="json", timeout=60.0)
async def long_sql(req: dict[str, Any]) -> dict[str, Any]:
    """pg_sleep(secs) with a long handler timeout: the abort tests."""
    await _sleep_sql(app.state.pg, "long_sql", float(req["secs"]), _tag(req))
    return {"slept": req["secs"]}


@app.handler(codec="json")
async def fanout(req: dict[str, Any]) -> dict[str, Any]:
    """redis, PostgreSQL and the upstream at once, under one deadline."""
    async with asyncio.timeout(3.0), asyncio.TaskGroup() as tg:
        rid = str(req["id"])
        got = tg.create_task(kv({"id": rid}))
        row = tg.create_task(app.state.pg.fetchval("SELECT $1::text", rid))
        page = tg.create_task(app.state.http.get(f"/echo/{rid}"))
    return {
        "id": rid,
        "kv": got.result()["value"],
        "sql": row.result(),
        "http": page.result().json()["path"],
    }


@app.handler(codec="json")
async def traced(req: dict[str, Any]) -> dict[str, Any]:
    """Sets a request-scoped ContextVar, awaits redis, reads it back: every call
    has its own context (nothing leaks in from, or out to, other calls)."""
    before = REQUEST_ID.get()
    REQUEST_ID.set(str(req["id"]))
    await app.state.redis.ping()
    await asyncio.sleep(0.001 * (hash(req["id"]) % 5))
    return {"id": REQUEST_ID.get(), "before": before}


@app.handler
async def authorize(req: bytes) -> str:
    """Token -> user name from redis (`token:<token>`); rc 10 otherwise."""
    user = await app.state.redis.get(f"token:{req.decode(errors='replace')}")
    if user is None:
        raise HandlerError("unknown token", rc=RC_DENIED)
    return user.decode()


@app.handler
async def profile(req: bytes) -> str:
    """'<user> <id>' -> a JSON document built from PostgreSQL."""
    user, _, rid = req.decode().partition(" ")
    row = await app.state.pg.fetchrow(
        "SELECT json_build_object('user', $1::text, 'id', $2::text, 'pid', pg_backend_pid())",
        user,
        rid,
    )
    return row[0]


async def pool_report(pool: asyncpg.Pool) -> dict[str, Any]:
    """Takes every connection of the pool at once and runs a query on each:
    a connection left broken or busy by a cancelled query shows here."""

    async def one() -> int:
        async with pool.acquire(timeout=3) as con:
            await asyncio.sleep(0.01)  # keep it while the others are acquired
            return int(await con.fetchval("SELECT pg_backend_pid()", timeout=3))

    pids = await asyncio.gather(*(one() for _ in range(pool.get_max_size())))
    return {
        "max": pool.get_max_size(),
        "size": pool.get_size(),
        "idle": pool.get_idle_size(),
        "distinct": len(set(pids)),
        "pid": os.getpid(),
    }


@app.handler(codec="json")
async def pool_check(req: dict[str, Any]) -> dict[str, Any]:
    return {**await pool_report(app.state.pg), "startups": startups}


# ---------------------------------------------------------------------------
# the Envoy Python filter over the same services

gate = aioresty.App(timeout=5.0)


def _gate_config() -> dict[str, Any]:
    cfg = dict(getattr(gate, "config", None) or {})
    env = {
        "redis_url": "AIORESTY_TEST_REDIS_URL",
        "pg_dsn": "AIORESTY_TEST_PG_DSN",
        "http_url": "AIORESTY_TEST_HTTP_URL",
    }
    for key, var in env.items():
        cfg.setdefault(key, os.environ.get(var, ""))
    return cfg


@gate.on_startup
async def gate_start() -> None:
    await _open(gate.state, _gate_config())
    note(f"gate started pid={os.getpid()}")


@gate.on_shutdown
async def gate_stop() -> None:
    await _close(gate.state)
    note(f"gate stopped pid={os.getpid()}")


@gate.on_request
async def check_token(req: aioresty.FilterRequest) -> aioresty.Response | None:
    """x-token -> user (redis); 401 without a known token.  /slow/<secs>/<tag>
    holds the request in pg_sleep first (timeout and abort tests)."""
    if req.path == "/_pool":
        report = await pool_report(gate.state.pg)
        return aioresty.Response(200, json.dumps(report), {"content-type": "application/json"})
    if req.path.startswith(("/slow/", "/t/slow/")):
        _, secs, tag = req.path.rsplit("/", 2)
        await _sleep_sql(gate.state.pg, "gate", float(secs), _tag({"tag": tag}))
    token = req.headers.get("x-token")
    user = await gate.state.redis.get(f"token:{token}") if token else None
    if user is None:
        return aioresty.Response(401, b"unknown token\n", headers={"www-authenticate": "Token"})
    req.headers["x-user"] = user.decode()
    rid = req.headers.get("x-id")
    if rid:
        req.headers["x-sql-id"] = await gate.state.pg.fetchval("SELECT $1::text", rid)
    return None


@gate.on_response
async def stamp(resp: aioresty.FilterResponse) -> None:
    resp.headers["x-served-by"] = "storeapp.gate"
