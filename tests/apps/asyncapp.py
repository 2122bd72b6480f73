"""Handlers written the way users write them (asyncio as under asyncio.run),
and handlers that break their answers: the runtime-semantics tests' app."""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys

from aioresty import App, HandlerError

app = App(timeout=3.0, unload_grace=1.0)
user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="-")
events: list[str] = []
background: set[asyncio.Task[None]] = set()


def note(what: str) -> None:
    events.append(what)
    print(f"[asyncapp] {what}", file=sys.stderr, flush=True)


@app.handler
async def task_name(req: bytes) -> str:
    task = asyncio.current_task()
    assert task is not None, "no current task"
    return f"{task.get_name()} {id(task)}"


@app.handler
async def timeout_first(req: bytes) -> bytes:
    async with asyncio.timeout(1):
        return req


@app.handler
async def taskgroup(req: bytes) -> str:
    async with asyncio.TaskGroup() as tg:
        a = tg.create_task(asyncio.sleep(0.01, result="a"))
        b = tg.create_task(asyncio.sleep(0, result="b"))
    return a.result() + b.result()


@app.handler
async def wait_for_shield(req: bytes) -> str:
    inner = await asyncio.wait_for(asyncio.shield(asyncio.sleep(0, result="s")), 1)
    try:
        await asyncio.wait_for(asyncio.sleep(5), 0.01)
    except TimeoutError:
        return inner + " timeout"
    return "no timeout"


@app.handler
async def ctx(req: bytes) -> str:
    """Returns the contextvar as this call found it, then sets it."""
    seen = user.get()
    user.set(req.decode())
    await asyncio.sleep(0.005)
    return f"{seen} {user.get()}"


@app.handler
async def lone_surrogate(req: bytes) -> str:
    return "bad \udcff answer"


@app.handler
async def surrogate_error(req: bytes) -> bytes:
    raise HandlerError("refused \udcff here", rc=7)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@app.handler
async def bad_str(req: bytes) -> bytes:
    raise Unprintable()


@app.handler
async def raise_keyboard_interrupt(req: bytes) -> bytes:
    raise KeyboardInterrupt


async def _die(exc: BaseException) -> None:
    await asyncio.sleep(0.01)
    raise exc


@app.handler
async def background_dies(req: bytes) -> str:
    """Starts a background task that raises KeyboardInterrupt or SystemExit."""
    exc: BaseException = KeyboardInterrupt() if req == b"ki" else SystemExit(3)
    t = asyncio.get_running_loop().create_task(_die(exc))
    background.add(t)
    t.add_done_callback(background.discard)
    return "started"


@app.handler
async def stop_loop(req: bytes) -> str:
    asyncio.get_running_loop().stop()
    return "stopped?"


@app.handler
async def stubborn(req: bytes) -> bytes:
    """Swallows its cancellation: the timeout is answered all the same."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        note("stubborn swallowed a cancel")
        await asyncio.sleep(0.2)
    return b"late"


@app.handler(timeout=0.3)
async def slow_with_finally(req: bytes) -> bytes:
    try:
        await asyncio.sleep(float(req.split()[0]))  # "SECONDS [label]"
    finally:
        note(f"finally ran for {req.decode()}")
    return b"done"


@app.handler
async def log_events(req: bytes) -> str:
    return "\n".join(events)


@app.handler
async def block_loop(req: bytes) -> str:
    import time

    time.sleep(float(req))  # a user bug: blocks the loop
    return "unblocked"


@app.handler(timeout=0.2)
async def block_past_timeout(req: bytes) -> str:
    import time

    time.sleep(float(req))  # blocks the loop past its own timeout: no timer can fire
    return "late"


@app.handler
async def pid(req: bytes) -> str:
    return str(os.getpid())


@app.handler
async def sized(req: bytes) -> bytes:
    """An answer of int(req) bytes (the answer-size limit, aioresty_core.h)."""
    await asyncio.sleep(0)
    return b"a" * int(req)
