"""Test app for the queue-full test: `block` holds the event loop (on purpose)."""

import time

from aioresty import App

app = App(timeout=10.0)


@app.handler
async def block(req: bytes) -> bytes:
    time.sleep(float(req or b"1"))  # blocks the loop: nothing is drained meanwhile
    return b"blocked"


@app.handler
async def echo(req: bytes) -> bytes:
    return req
