"""The fuzz tests' handler app (tests/fuzz): handlers that answer, fail, sleep,
decode and encode in every way the runtime knows, so random method names and
payloads reach each answer path.

`app` is the runtime the fuzz scripts call by name (tests/fuzz/lua/fuzzcall.lua)
and must never be unloaded by a request; `churn` has the same handlers and is
the one tests/envoy/scripts/app_calls.lua indexes with request-derived names (its
`/py/__unload` unloads it, on purpose).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aioresty import App, HandlerError

app = App(timeout=2.0, unload_grace=0.5)
churn = App(timeout=2.0, unload_grace=0.5)


async def echo(req: bytes) -> bytes:
    return req


async def upper(req: bytes) -> str:
    return req.decode().upper()  # not UTF-8: the handler raises (rc 1)


async def nothing(req: bytes) -> None:
    return None


async def fail(req: bytes) -> bytes:
    raise ValueError(f"bad input {req[:32]!r}")


async def refuse(req: bytes) -> bytes:
    raise HandlerError(f"refused {len(req)} bytes", rc=1 + len(req) % 200)


async def nap(req: bytes) -> bytes:
    """Sleeps a few milliseconds (the first byte decides), then echoes."""
    await asyncio.sleep((req[0] % 50) / 1000 if req else 0)
    return req


async def wrong_type(req: bytes) -> int:
    return len(req)  # not bytes/str/None: rc 5


async def not_utf8(req: bytes) -> str:
    return "\udcff" + req.decode("latin-1")  # a str that is not UTF-8: rc 5


async def double(req: bytes) -> bytes:
    return req + req


async def jecho(req: Any) -> Any:
    return req


async def mecho(req: Any) -> Any:
    return req


for _app in (app, churn):
    for _fn in (echo, upper, nothing, fail, refuse, nap, wrong_type, not_utf8, double):
        _app.add(_fn)
    _app.add(jecho, codec="json")
    _app.add(mecho, codec="msgpack")

HANDLERS = "echo upper nothing fail refuse nap wrong_type not_utf8 double jecho mecho".split()
