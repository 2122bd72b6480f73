"""An app that keeps logging from a background task, the way a poller or a
metrics reporter does: its lines must stay safe while the worker exits."""

from __future__ import annotations

import asyncio
import logging

from aioresty import App

app = App()
log = logging.getLogger("noisy")


async def _chatter() -> None:
    n = 0
    while True:
        n += 1
        log.warning("tick %d", n)
        await asyncio.sleep(0.001)


@app.on_startup
async def start() -> None:
    app.state.task = asyncio.get_running_loop().create_task(_chatter())


@app.handler
async def ping(req: bytes) -> bytes:
    return b"pong"
