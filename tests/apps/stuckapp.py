"""Apps whose handlers block their runtime's event loop on purpose
(``time.sleep``): the runtime cannot enforce any timeout meanwhile, so only
the host's own bound can answer the caller (tests of the default per-call
timeout: tests/*/test_bounded*.py)."""

from __future__ import annotations

import time

import aioresty
from aioresty import App, FilterRequest

app = App(timeout=30.0)


@app.handler
async def block(req: bytes) -> bytes:
    time.sleep(float(req or b"3"))  # the loop thread sleeps: nothing else runs
    return b"unblocked"


@app.handler
async def echo(req: bytes) -> bytes:
    return req


# the Python filter (native/envoy/python/): /block/<seconds> blocks the loop
filter_app = aioresty.App()


@filter_app.on_request
async def maybe_block(req: FilterRequest) -> None:
    if "/block/" in req.path:
        time.sleep(float(req.path.rsplit("/", 1)[1]))
    req.headers["x-hook"] = "ran"
