"""The test app: one handler per behaviour the runtime must get right."""

import asyncio
import sys

from aioresty import App, HandlerError

app = App(timeout=2.0, unload_grace=1.0)
started: dict[str, int] = {"slow": 0, "cancelled": 0}


@app.handler
async def echo(req: bytes) -> bytes:
    return req


@app.handler
async def upper(req: bytes) -> str:
    return req.decode().upper()


@app.handler
async def nothing(req: bytes) -> None:
    return None


@app.handler
async def suspend_echo(req: bytes) -> bytes:
    await asyncio.sleep(0)
    await asyncio.sleep(0.001)
    return req


@app.handler
async def fail(req: bytes) -> bytes:
    raise ValueError(f"bad input {req.decode()!r}")


@app.handler
async def fail_later(req: bytes) -> bytes:
    await asyncio.sleep(0.01)
    raise KeyError("late")


@app.handler
async def refuse(req: bytes) -> bytes:
    raise HandlerError("custom refusal", rc=42)


@app.handler
async def wrong_type(req: bytes) -> int:
    return 7


@app.handler
async def sleep(req: bytes) -> bytes:
    """Sleeps float(req) seconds; records cancellations for the abort tests."""
    started["slow"] += 1
    try:
        await asyncio.sleep(float(req or b"10"))
    except asyncio.CancelledError:
        started["cancelled"] += 1
        print(f"[echoapp] sleep cancelled ({started['cancelled']})", file=sys.stderr, flush=True)
        raise
    return b"slept"


@app.handler(timeout=0.2)
async def short_timeout(req: bytes) -> bytes:
    await asyncio.sleep(5)
    return b"never"


@app.handler(codec="msgpack")
async def add(args: dict) -> dict:
    return {"sum": args["a"] + args["b"], "echo": args}


@app.handler
async def timeout_first(req: bytes) -> bytes:
    """asyncio.timeout on the first line: needs the call's own current Task."""
    async with asyncio.timeout(1):
        assert asyncio.current_task() is not None
        return req


@app.handler
async def fetch(req: bytes) -> bytes:
    """An aiohttp client call as the very first await (its timer needs the Task)."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(req.decode()) as r:
        return await r.read()


@app.handler
async def stats(req: bytes) -> str:
    return f"{started['slow']} {started['cancelled']}"
