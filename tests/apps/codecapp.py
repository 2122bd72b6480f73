"""One handler per codec, for the Lua-side codec tests (tests/*/test_codec.py):
each answers what it received and the Python type it became."""

from __future__ import annotations

from typing import Any

from aioresty import App

app = App(timeout=5.0)


def _describe(obj: Any) -> dict[str, Any]:
    return {"got": obj, "kind": type(obj).__name__}


@app.handler(codec="json")
async def jecho(obj: Any) -> dict[str, Any]:
    return _describe(obj)


@app.handler(codec="msgpack")
async def mecho(obj: Any) -> dict[str, Any]:
    return _describe(obj)


@app.handler
async def becho(req: bytes) -> bytes:
    return b"%d bytes: " % len(req) + req
