"""Prints the way people debug: print() lines from handlers on every worker."""

from __future__ import annotations

import asyncio
import os

from aioresty import App

app = App()


@app.handler
async def chatter(req: bytes) -> bytes:
    for i in range(int(req)):
        print(f"[chatty] pid={os.getpid()} i={i} end")
        if i % 50 == 0:
            await asyncio.sleep(0)
    return str(os.getpid()).encode()
