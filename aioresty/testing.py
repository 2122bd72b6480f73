"""Unit-test aioresty handlers with pytest-asyncio, no proxy needed.

    from aioresty.testing import AppClient

    async def test_echo():
        client = AppClient(myapp.app)
        res = await client.call("echo", b"hi")
        assert res.ok and res.body == b"hi"

A call goes through the same lookup, codec, timeout and error mapping as in a
proxy, and answers what Lua would see: ``ok``, ``rc``, the body or the message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgpack

from .app import RC_TIMEOUT, App, HandlerError, error_answer, load_app


@dataclass(frozen=True)
class Result:
    rc: int
    body: bytes | None  # the answer bytes (rc == 0) or the error message (rc != 0)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def text(self) -> str:
        return (self.body or b"").decode()

    def unpack(self) -> Any:
        """The msgpack-decoded body (for handlers with codec='msgpack')."""
        return msgpack.unpackb(self.body or b"", raw=False)


class AppClient:
    """Calls an App's handlers the way a proxy's ``runtime:<method>(req)`` would."""

    def __init__(self, app: App | str) -> None:
        self.app = load_app(app) if isinstance(app, str) else app

    async def call(self, method: str, payload: bytes | str | None = b"") -> Result:
        if isinstance(payload, str):
            payload = payload.encode()
        try:
            handler = self.app.lookup(method)
            arg = handler.decode(payload or b"")
            try:
                result = await asyncio.wait_for(handler.fn(arg), handler.timeout)
            except TimeoutError:
                msg = f"aioresty: handler '{handler.name}' timed out after {handler.timeout}s"
                return Result(RC_TIMEOUT, msg.encode())
            out = handler.encode(result)
        except HandlerError as exc:
            return Result(exc.rc, exc.message.encode())
        except Exception as exc:
            rc, msg = error_answer(method, exc)
            return Result(rc, msg.encode())
        if out is None:
            return Result(0, b"")
        return Result(0, out.encode() if isinstance(out, str) else out)

    async def call_msgpack(self, method: str, value: Any) -> Result:
        return await self.call(method, msgpack.packb(value, use_bin_type=True))
