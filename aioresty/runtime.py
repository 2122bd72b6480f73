"""The runtime thread: one asyncio (uvloop) loop per loaded runtime.

The loop watches the queue's wake-up eventfd. Each wake drains every queued task
in one batch. Every call runs as its own asyncio Task, in its own copy of the
runtime's context, from its first line: ``current_task()`` is that Task, and
``asyncio.timeout``, ``TaskGroup``, anyio/sniffio-based libraries (httpx) and
aiohttp work as under ``asyncio.run``. On Python >= 3.12 the Task starts eagerly
(``eager_start``: a handler that never suspends is answered before the Task is
scheduled); on 3.11 it is scheduled as ``loop.create_task`` would.

Every drained task is answered exactly once, on every path, through
:meth:`_Call.reply`: result, exception, unencodable result or message, timeout
(answered when it fires, then the handler is cancelled), abort, shutdown, a
``BaseException`` from the handler or from any background task (the loop keeps
serving), and the loop thread ending (the queue is closed at once, everything
still queued or in flight is answered).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any

from . import _native, watchdog
from .app import App
from .handler import (
    RC_BAD_RESULT,
    RC_CANCELLED,
    RC_ERROR,
    RC_TIMEOUT,
    Handler,
    HandlerError,
    error_answer,
    last_line,
    safe_text,
)

log = logging.getLogger("aioresty.runtime")

_EAGER = sys.version_info >= (3, 12)
_Task = asyncio.Task
_respond = _native.respond
_FINALLY_GRACE = 1.0  # seconds cancelled calls get to unwind at unload
_FAILED_PER_SECOND = 10  # failed-call lines per runtime and second (then a count)
_GONE = b"aioresty: the caller went away"

_HOST_SIGNALS = {
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
    signal.SIGPIPE,
    signal.SIGALRM,
    signal.SIGWINCH,
}


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _send(ptr: int, rc: int, data: bytes | None, name: str) -> None:
    """Answer the task ``ptr`` now; never raises, never leaves it unanswered."""
    try:
        _native.respond(ptr, rc, data)
        return
    except BaseException as exc:  # respond raised: not answered yet
        why = f"aioresty: the answer of '{name}' could not be sent: {type(exc).__name__}"
    try:
        _native.respond(ptr, rc or RC_BAD_RESULT, safe_text(why))
    except BaseException:
        _native.respond(ptr, rc or RC_BAD_RESULT, None)


class _Call:
    """One drained task: its Task, its timer, and whether it was answered."""

    __slots__ = ("answered", "handler", "ptr", "rt", "t0", "task", "tid", "timer")

    def __init__(self, ptr: int, tid: int, handler: Handler, rt: Runtime, t0: float) -> None:
        self.ptr = ptr
        self.tid = tid
        self.handler = handler
        self.rt = rt
        self.t0 = t0  # when its batch was drained (time.monotonic)
        self.answered = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def reply(self, rc: int, data: bytes | None, exc: BaseException | None = None) -> None:
        """The one place a call is answered: a second answer is dropped."""
        if self.answered:
            return
        self.answered = True
        _send(self.ptr, rc, data, self.handler.name)
        if rc:
            self.rt.failed(self.handler.name, rc, data, self.t0, exc)

    def reply_result(self, result: Any) -> None:
        try:
            out = self.handler.encode(result)
        except HandlerError as exc:
            self.reply(exc.rc, safe_text(exc.message))
            return
        except BaseException as exc:
            msg = f"aioresty: the result of '{self.handler.name}' cannot be encoded: {exc!r}"
            self.reply(RC_BAD_RESULT, safe_text(msg))
            return
        self.reply(0, b"" if out is None else out)  # None answers "" (not nil)

    def reply_error(self, exc: BaseException) -> None:
        self.reply(*_error(self.handler.name, exc), exc)

    def cancel(self, rc: int, msg: str) -> None:
        """Answer now, then cancel the handler at its current await."""
        self.reply(rc, safe_text(msg))
        if self.task is not None:
            self.task.cancel()


def _error(name: str, exc: BaseException) -> tuple[int, bytes]:
    """(rc, message) for an exception escaping a handler (Runtime.failed logs it)."""
    rc, msg = error_answer(name, exc)
    return rc, safe_text(msg)


class Runtime:
    """Serves one task queue (``tq``) with an App on a dedicated loop thread."""

    def __init__(self, app: App, tq: int, name: str) -> None:
        self.app = app
        self.tq = tq
        self.name = name
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ctx = contextvars.Context()
        self._inflight: dict[int, _Call] = {}
        self._closing = False
        self._stopping = False
        self._released = False  # drain returned -1: the runtime side's queue ref is gone
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # failed-call lines: at most _FAILED_PER_SECOND a second, then a count
        self._fail_window = 0.0
        self._fail_lines = 0
        self._fail_skipped = 0
        self.beat = 0.0  # time.monotonic() of the loop's last heartbeat (watchdog.py)
        self.blocked_by: str | None = None  # set by the watchdog during an episode
        self._starting: _Call | None = None  # the call whose Task is being created

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        """Start the loop thread and the app's startup hooks; raise if they fail."""
        # Our own reference: tq stays valid for as long as this object uses it,
        # even after the runtime side acknowledged the unload.
        _native.queue_ref(self.tq)
        self.thread = threading.Thread(target=self._run, name=f"aioresty:{self.name}", daemon=True)
        self.thread.start()
        limit = self.app.startup_timeout + 5.0
        if not self._ready.wait(limit):
            raise RuntimeError(f"runtime '{self.name}': loop thread did not start in {limit}s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        # Signals belong to the host: never deliver them to this thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HOST_SIGNALS)
        # Visible in top -H and /proc (it would inherit the proxy thread's name).
        _native.set_thread_name(f"ar-{self.name}")
        loop = new_event_loop()
        self.loop = loop
        self.app._serve_metrics(self.tq)  # before on_startup: hooks may record
        try:
            asyncio.set_event_loop(loop)
            loop.set_exception_handler(self._on_loop_error)
            loop.run_until_complete(self._startup())
            # Each call runs in a copy of this context (what startup left).
            self._ctx = contextvars.copy_context()
            loop.add_reader(_native.queue_fd(self.tq), self._on_wake)
        except BaseException as exc:
            self._error = exc
            self._close_loop(loop)
            self._unserve_metrics()
            _native.queue_unref(self.tq)
            self._ready.set()
            return
        self._ready.set()
        why = "stopped"
        loop.call_soon(self._beat)
        watchdog.watch(self)
        try:
            self._serve_forever(loop)
        except BaseException as exc:  # only our own code can get here
            why = f"its loop failed: {last_line(exc)}"
            log.critical("runtime '%s': %s", self.name, why, exc_info=True)
        finally:
            self._end(loop, why)

    def _serve_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        """run_forever until _stop_loop; survives what escapes the loop."""
        while True:
            try:
                loop.run_forever()
            except BaseException as exc:  # KeyboardInterrupt/SystemExit from a task
                log.error(
                    "runtime '%s': %s escaped the event loop (a background task?); "
                    "the runtime keeps serving",
                    self.name,
                    type(exc).__name__,
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
                continue
            if self._stopping:
                return
            log.warning("runtime '%s': loop.stop() called by app code ignored", self.name)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        msg = context.get("message", "error in the event loop")
        info = (type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None
        log.error("runtime '%s': %s", self.name, msg, exc_info=info)

    def _end(self, loop: asyncio.AbstractEventLoop, why: str) -> None:
        """The loop thread ends: nothing queued or in flight stays unanswered."""
        msg = safe_text(f"aioresty: runtime '{self.name}' {why}")
        if not self._released:
            _native.unload(self.tq)  # posts fail fast from now on
            while True:
                batch = _native.drain(self.tq)
                if batch is None:
                    break
                for ptr, _tid, method, _payload, _aborted in batch[0]:
                    _send(ptr, RC_CANCELLED, msg, method)
                    self.failed(method, RC_CANCELLED, msg, time.monotonic())
            self._released = True
            if why != "stopped":
                log.critical("runtime '%s' %s: its queue is closed", self.name, why)
        for call in list(self._inflight.values()):
            call.reply(RC_CANCELLED, msg)
        self._inflight.clear()
        try:
            loop.run_until_complete(self._shutdown())
        except BaseException:
            log.exception("runtime '%s': shutdown hooks failed", self.name)
        watchdog.unwatch(self)
        self._close_loop(loop)
        _forget(self)
        self._unserve_metrics()
        _native.queue_unref(self.tq)
        log.info("runtime '%s' stopped", self.name)

    def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """As asyncio.run ends: cancel what is left, bounded, then close."""
        try:
            left = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in left:
                t.cancel()
            if left:
                done = asyncio.wait(left, timeout=self.app.unload_grace)
                loop.run_until_complete(done)
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException:
            log.exception("runtime '%s': error while closing its loop", self.name)
        finally:
            loop.close()

    async def _startup(self) -> None:
        async with asyncio.timeout(self.app.startup_timeout):
            for hook in self.app._startup_hooks:
                await hook()

    async def _shutdown(self) -> None:
        try:
            async with asyncio.timeout(self.app.unload_grace):
                for hook in self.app._shutdown_hooks:
                    await hook()
        except TimeoutError:
            log.error(
                "runtime '%s': shutdown hooks did not finish in %.1fs",
                self.name,
                self.app.unload_grace,
            )

    def join(self, timeout: float | None = None) -> bool:
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True

    def failed(
        self, method: str, rc: int, msg: bytes | None, t0: float, exc: BaseException | None = None
    ) -> None:
        """The one line a failed call gets in the proxy's log (rate-limited)."""
        level = self.app.failure_log_level
        if level is None or not log.isEnabledFor(level):
            return
        now = time.monotonic()
        if now - self._fail_window >= 1.0:
            if self._fail_skipped:
                log.log(
                    level,
                    "runtime '%s': %d more failed call(s) not logged in the last second",
                    self.name,
                    self._fail_skipped,
                )
            self._fail_window, self._fail_lines, self._fail_skipped = now, 0, 0
        if self._fail_lines >= _FAILED_PER_SECOND:
            self._fail_skipped += 1
            return
        self._fail_lines += 1
        text = "(no message)" if msg is None else msg.decode("utf-8", "replace")
        info = None
        if rc == RC_ERROR and exc is not None:
            info = (type(exc), exc, exc.__traceback__)
        log.log(
            level,
            "call '%s' failed: rc=%d after %.3fs: %s",
            method,
            rc,
            max(0.0, now - t0),
            text,
            exc_info=info,
        )

    def _unserve_metrics(self) -> None:
        """Before tq may be freed: the app's metrics no longer name it."""
        if self.app._metrics_tq == self.tq:
            self.app._serve_metrics(0)

    def _beat(self) -> None:
        """The loop's heartbeat (watchdog.py); ends a blocked episode; reports
        how late it ran as the runtime's loop_lag_us."""
        now = time.monotonic()
        if self.beat:
            _native.set_loop_lag(self.tq, max(0.0, now - self.beat - watchdog.PERIOD) * 1e6)
        if self.blocked_by is not None:
            log.warning(
                "runtime '%s': the event loop runs again, %s held it for %.2fs",
                self.name,
                self.blocked_by,
                now - self.beat - watchdog.PERIOD,
            )
            self.blocked_by = None
        self.beat = now
        assert self.loop is not None
        if not self._stopping:
            self.loop.call_later(watchdog.PERIOD, self._beat)

    def running(self) -> str:
        """What runs on the loop now (any thread may ask): for the watchdog."""
        starting, loop = self._starting, self.loop
        if starting is not None and _EAGER:  # its first step runs inside _on_wake
            return f"handler '{starting.handler.name}'"
        task = asyncio.current_task(loop) if loop is not None else None
        if task is None:
            return "a callback outside any task"
        for call in list(self._inflight.values()):
            if call.task is task:
                return f"handler '{call.handler.name}'"
        return f"the task {task.get_name()!r}"

    # ------------------------------------------------------------------ intake
    def _on_wake(self) -> None:
        batch = _native.drain(self.tq)
        if batch is None:
            self._released = True
            self._begin_unload()
            return
        tasks, aborted = batch
        t0 = time.monotonic()
        start_call = self.app.start_call
        loop, ctx, inflight, serve = self.loop, self._ctx, self._inflight, self._serve
        started: list[_Call] = []
        for ptr, tid, method, payload, was_aborted in tasks:
            if was_aborted:
                _send(ptr, RC_CANCELLED, _GONE, method)
                self.failed(method, RC_CANCELLED, _GONE, t0)
                continue
            try:
                handler, coro = start_call(method, payload)
            except BaseException as exc:
                rc, msg = _error(method, exc)
                _send(ptr, rc, msg, method)
                self.failed(method, rc, msg, t0, exc)
                continue
            call = _Call(ptr, tid, handler, self, t0)
            inflight[tid] = call
            self._starting = call
            try:
                if _EAGER:  # the first step runs here, inside the new Task
                    call.task = _Task(  # type: ignore[call-arg]
                        serve(call, coro), loop=loop, context=ctx.copy(), eager_start=True
                    )
                else:
                    call.task = _Task(serve(call, coro), loop=loop, context=ctx.copy())
            except BaseException as exc:  # the Task could not be made
                coro.close()
                inflight.pop(tid, None)
                call.reply_error(exc)
            if not call.answered:
                started.append(call)
        self._starting = None
        if started:
            assert loop is not None
            if _EAGER:
                self._arm(started)
            else:  # after the Tasks' first steps, queued before this
                loop.call_soon(self._arm, started)
        for tid in aborted:
            gone = inflight.get(tid)
            if gone is not None:
                gone.cancel(RC_CANCELLED, _GONE.decode())

    def _arm(self, calls: list[_Call]) -> None:
        """Per-call timeouts, only for calls still running after their first step."""
        assert self.loop is not None
        call_later = self.loop.call_later
        for call in calls:
            if not call.answered:
                call.timer = call_later(call.handler.timeout, self._expire, call)

    def _expire(self, call: _Call) -> None:
        name, timeout = call.handler.name, call.handler.timeout
        call.cancel(RC_TIMEOUT, f"aioresty: handler '{name}' timed out after {timeout}s")

    async def _serve(self, call: _Call, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            result = await coro
        except asyncio.CancelledError:
            msg = f"aioresty: handler '{call.handler.name}' was cancelled"
            call.reply(RC_CANCELLED, safe_text(msg))
        except BaseException as exc:
            call.reply_error(exc)
        else:
            took = time.monotonic() - call.t0
            if took > call.handler.timeout and not call.answered:
                # its timer could not fire: the handler blocked the loop (time.sleep,
                # CPU work) past its timeout; late is a timeout all the same
                name, timeout = call.handler.name, call.handler.timeout
                msg = (
                    f"aioresty: handler '{name}' timed out after {timeout}s "
                    f"(it returned after {took:.3f}s without giving the loop back)"
                )
                call.reply(RC_TIMEOUT, safe_text(msg))
            elif type(result) is bytes and call.handler.codec == "bytes" and not call.answered:
                call.answered = True  # the common answer, without reply_result's frames
                try:
                    _respond(call.ptr, 0, result)
                except BaseException as exc:
                    _send(call.ptr, RC_BAD_RESULT, None, call.handler.name)
                    self.failed(call.handler.name, RC_BAD_RESULT, None, call.t0, exc)
            else:
                call.reply_result(result)
        finally:
            self._inflight.pop(call.tid, None)
            if call.timer is not None:
                call.timer.cancel()
            if self._closing and not self._inflight:
                self._stop_loop()

    # ------------------------------------------------------------------ unload
    def _begin_unload(self) -> None:
        """The host unloaded the queue and every task was handed out."""
        assert self.loop is not None
        if self._closing:
            return
        self._closing = True
        self.loop.remove_reader(_native.queue_fd(self.tq))
        if not self._inflight:
            self._stop_loop()
            return
        log.info(
            "runtime '%s' unloading: %d call(s) in flight, %.1fs grace",
            self.name,
            len(self._inflight),
            self.app.unload_grace,
        )
        self.loop.call_later(self.app.unload_grace, self._cancel_all)

    def _cancel_all(self) -> None:
        for call in list(self._inflight.values()):
            call.cancel(RC_CANCELLED, "aioresty: runtime shutting down")
        # cancelled handlers get a bounded moment for their finally blocks
        assert self.loop is not None
        self.loop.call_later(_FINALLY_GRACE, self._stop_loop)

    def _stop_loop(self) -> None:
        assert self.loop is not None
        if not self._stopping:
            self._stopping = True
            self.loop.stop()


# Runtimes of this process, for shutdown_all() and diagnostics.
_runtimes: list[Runtime] = []
_lock = threading.Lock()


def _forget(rt: Runtime) -> None:
    with _lock:
        if rt in _runtimes:
            _runtimes.remove(rt)


def start(app: App, tq: int, name: str, config: dict[str, Any] | None = None) -> Runtime:
    """Serve tq with app on a new loop thread; ``config`` becomes ``app.config``.

    An App that has startup hooks or a config serves one runtime at a time: a
    second one would replace the first one's state (its clients belong to the
    first loop), so its reload right after an unload fails (fast: this runs on
    the proxy's thread) until the old runtime has stopped; the registry retries
    after its backoff.  An App without either starts at once, beside the old."""
    config = {} if config is None else config
    with _lock:
        other = next((rt for rt in _runtimes if rt.app is app), None)
    if other is not None and (app._startup_hooks or config != app.config):
        # Never wait for it here: a load runs on the proxy's worker thread.
        if _native.queue_closed(other.tq):
            raise RuntimeError(
                f"app '{name}' is still shutting down its previous runtime '{other.name}' "
                f"(unloaded, calls finishing within unload_grace={app.unload_grace}s): "
                "load it again once that runtime has stopped"
            )
        raise RuntimeError(
            f"app '{name}' is already served by runtime '{other.name}' in this process "
            "(an App with startup hooks or a config serves one runtime)"
        )
    app.config = config
    rt = Runtime(app, tq, name)
    rt.start()
    with _lock:
        _runtimes.append(rt)
    return rt


def shutdown_all(timeout: float | None = None) -> int:
    """Unload every runtime of the process and join its thread."""
    with _lock:
        live = list(_runtimes)
    for rt in live:
        _native.unload(rt.tq)  # idempotent; rt holds a queue reference
    stuck = 0
    for rt in live:
        # grace for in-flight calls, then the shutdown hooks' own grace
        limit = timeout if timeout is not None else 2 * rt.app.unload_grace + 5.0
        if not rt.join(limit):
            print(f"[aioresty] runtime '{rt.name}' did not stop in {limit}s", file=sys.stderr)
            stuck += 1
    return stuck
