"""The example aioresty app: async def handlers called from Lua as app:<name>(req)."""

import asyncio

from aioresty import App

app = App(timeout=5.0)


@app.handler
async def greet(req: bytes) -> str:
    name = req.decode() or "world"
    await asyncio.sleep(0)  # any awaitable: the proxy's thread is never blocked
    return f"hello, {name}, from async Python"


@app.handler(codec="msgpack")
async def add(args: dict) -> dict:
    return {"sum": args["a"] + args["b"]}
