"""One thread per process that notices an event loop held by blocking code.

Every runtime's loop beats each ``PERIOD`` (``Runtime._beat``: a
``call_later`` chain storing ``time.monotonic()`` in ``rt.beat``).  This thread
wakes as often and compares: a loop whose timers have not run for longer than
its app's ``blocking_warning`` is blocked.  One warning per episode names what
runs on it (the handler whose Task is the loop's current task, found with
``asyncio.current_task(loop)``: a dict lookup under the GIL), and a second line
says how long the episode lasted once the loop beats again.

It only reads the runtimes' state; the loop thread owns it.  A handler holding
the GIL in C code for the whole episode delays this thread's check too: the
warning then comes when the GIL is released, with the full duration.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from . import _native

if TYPE_CHECKING:
    from .runtime import Runtime

PERIOD = 0.05  # seconds between heartbeats, and between checks

log = logging.getLogger("aioresty.watchdog")

_watched: list[Runtime] = []
_lock = threading.Lock()
_thread: threading.Thread | None = None


def watch(rt: Runtime) -> None:
    global _thread
    with _lock:
        _watched.append(rt)
        if _thread is None:
            _thread = threading.Thread(target=_run, name="aioresty-watchdog", daemon=True)
            _thread.start()


def unwatch(rt: Runtime) -> None:
    with _lock:
        if rt in _watched:
            _watched.remove(rt)


def _run() -> None:

    _native.set_thread_name("ar-watchdog")  # else it shows as the runtime thread that made it
    while True:
        time.sleep(PERIOD)
        # under the lock: once unwatch() returned, no check uses rt (its tq)
        with _lock:
            for rt in _watched:
                try:
                    _check(rt)
                except Exception:  # never let the watchdog die
                    log.exception("watchdog: cannot check runtime '%s'", rt.name)


def _check(rt: Runtime) -> None:
    if not rt.beat:
        return
    held = time.monotonic() - rt.beat - PERIOD  # since the loop should have beaten
    if held > PERIOD:  # a stuck loop shows in loop_lag_us before it beats again
        _native.set_loop_lag(rt.tq, held * 1e6)
    limit = rt.app.blocking_warning
    if limit is None or rt.blocked_by is not None or held < limit:
        return
    rt.blocked_by = rt.running()
    log.warning(
        "runtime '%s': %s has held the event loop for %.2fs (blocking_warning=%gs): "
        "every other call of this runtime waits (await, or move blocking work to "
        "asyncio.to_thread)",
        rt.name,
        rt.blocked_by,
        held,
        limit,
    )
