"""The runtime thread: one asyncio (uvloop) loop per loaded runtime.

The loop watches the queue's wake-up eventfd. Each wake drains every queued task
in one batch; each handler starts eagerly (run up to its first real suspension;
a Task is created only if it suspends) and its answer goes back through
``ngx_http_lua_ffi_respond``. Every drained task is answered exactly once, on
every path: result, exception, timeout, abort, shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import types
from collections.abc import Coroutine, Generator
from typing import Any

from . import _native, filters
from .app import (
    RC_CANCELLED,
    RC_ERROR,
    RC_TIMEOUT,
    App,
    Handler,
    HandlerError,
    error_answer,
)

log = logging.getLogger("aioresty.runtime")

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


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], first: Any) -> Generator[Any, Any, Any]:
    """Continue a coroutine that already ran up to its first suspension point."""
    yielded = first
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:  # includes CancelledError thrown by the Task
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class _Call:
    """A handler that suspended: its Task and why it may get cancelled."""

    __slots__ = ("reason", "task", "timer")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.reason = ""


def _wanted_a_task(exc: BaseException) -> bool:
    """asyncio.timeout, aiohttp's timer, sniffio/anyio: "needs the current Task"."""
    if type(exc).__name__ == "AsyncLibraryNotFoundError":
        return True
    return isinstance(exc, RuntimeError) and "task" in str(exc).lower()


class Runtime:
    """Serves one task queue (``tq``) with an App on a dedicated loop thread."""

    def __init__(self, app: App, tq: int, name: str) -> None:
        self.app = app
        self.tq = tq
        self.name = name
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[int, _Call] = {}
        self._closing = False
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        # Our own reference: tq stays valid for as long as this object uses it,
        # even after the runtime side acknowledged the unload.
        _native.queue_ref(self.tq)
        self.thread = threading.Thread(target=self._run, name=f"aioresty:{self.name}", daemon=True)
        self.thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"runtime '{self.name}': loop thread did not start")
        if self._error is not None:
            raise RuntimeError(f"runtime '{self.name}': loop thread failed") from self._error

    def _run(self) -> None:
        # Signals belong to the host: never deliver them to this thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HOST_SIGNALS)
        # Visible in top -H and /proc (it would inherit the proxy thread's name).
        _native.set_thread_name(f"ar-{self.name}")
        try:
            loop = new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            loop.add_reader(_native.queue_fd(self.tq), self._on_wake)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            _native.queue_unref(self.tq)
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()
            _forget(self)
            _native.queue_unref(self.tq)
            log.info("runtime '%s' stopped", self.name)

    def join(self, timeout: float | None = None) -> bool:
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True

    # ------------------------------------------------------------------ intake
    def _on_wake(self) -> None:
        batch = _native.drain(self.tq)
        if batch is None:
            self._begin_unload()
            return
        tasks, aborted = batch
        handlers = self.app._handlers
        respond = _native.respond
        for task, tid, method, payload, was_aborted in tasks:
            handler = handlers.get(method)
            if handler is None or was_aborted or not handler.fast:
                if was_aborted:
                    respond(task, RC_CANCELLED, "aioresty: the caller went away")
                else:
                    self._dispatch(task, tid, method, payload)
                continue
            try:
                coro = handler.fn(payload)
            except BaseException as exc:
                self._answer_error(task, method, exc)
                continue
            self._start_eagerly(task, tid, handler, coro)
        for tid in aborted:
            call = self._inflight.get(tid)
            if call is not None and call.task is not None:
                call.reason = "aborted"
                call.task.cancel()

    def _dispatch(self, task: int, tid: int, method: str, payload: bytes) -> None:
        try:
            if method.startswith("__filter_"):  # Envoy filter hooks (filters.py)
                handler, coro = filters.call(self.app, method, payload)
            else:
                handler = self.app.lookup(method)
                coro = handler.fn(handler.decode(payload))
        except BaseException as exc:
            self._answer_error(task, method, exc)
            return
        if not handler.eager:
            self._track(task, tid, handler, self._finish(task, tid, handler, coro, None, False))
            return
        self._start_eagerly(task, tid, handler, coro)

    def _start_eagerly(
        self, task: int, tid: int, handler: Handler, coro: Coroutine[Any, Any, Any]
    ) -> None:
        """Eager start: the handler runs up to its first suspension right here
        (outside any Task); most answers need no Task at all, and a bytes answer
        of a bytes-codec handler is sent by _native.step itself."""
        try:
            started = _native.step(task, coro, handler.codec == "bytes")
        except BaseException as exc:
            self._answer_error(task, handler.name, exc, first_step=True)
            return
        if started is None:
            return
        if len(started) == 1:
            self._answer(task, handler, started[0])
            return
        coro, first = started
        self._track(task, tid, handler, self._finish(task, tid, handler, coro, first, True))

    def _track(
        self, task: int, tid: int, handler: Handler, body: Coroutine[Any, Any, None]
    ) -> None:
        assert self.loop is not None
        call = _Call()
        call.task = self.loop.create_task(body)
        if handler.timeout is not None:
            call.timer = self.loop.call_later(handler.timeout, self._expire, call)
        self._inflight[tid] = call

    @staticmethod
    def _expire(call: _Call) -> None:
        if call.task is not None and not call.task.done():
            call.reason = "timeout"
            call.task.cancel()

    async def _finish(
        self,
        task: int,
        tid: int,
        handler: Handler,
        coro: Coroutine[Any, Any, Any],
        first: Any,
        started: bool,
    ) -> None:
        try:
            result = await (_resume(coro, first) if started else coro)
        except asyncio.CancelledError:
            call = self._inflight.get(tid)
            reason = call.reason if call is not None else ""
            if reason == "timeout":
                msg = f"aioresty: handler '{handler.name}' timed out after {handler.timeout}s"
                _native.respond(task, RC_TIMEOUT, msg)
            elif reason == "aborted":
                _native.respond(task, RC_CANCELLED, "aioresty: the caller went away")
            else:
                _native.respond(task, RC_CANCELLED, "aioresty: runtime shutting down")
        except BaseException as exc:
            self._answer_error(task, handler.name, exc)
        else:
            self._answer(task, handler, result)
        finally:
            call = self._inflight.pop(tid, None)
            if call is not None and call.timer is not None:
                call.timer.cancel()
            if self._closing and not self._inflight:
                self._stop_loop()

    def _answer(self, task: int, handler: Handler, result: Any) -> None:
        try:
            out = handler.encode(result)
        except HandlerError as exc:
            _native.respond(task, exc.rc, exc.message)
            return
        _native.respond(task, 0, b"" if out is None else out)

    @staticmethod
    def _answer_error(task: int, method: str, exc: BaseException, first_step: bool = False) -> None:
        rc, msg = error_answer(method, exc)
        if first_step and _wanted_a_task(exc):
            msg += (
                " (its first step ran eagerly, outside any asyncio Task: register it "
                "with eager=False to start it in a Task)"
            )
        if rc == RC_ERROR:
            log.error("%s", msg, exc_info=(type(exc), exc, exc.__traceback__))
        _native.respond(task, rc, msg)

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
            if call.task is not None:
                call.reason = "shutdown"
                call.task.cancel()

    def _stop_loop(self) -> None:
        assert self.loop is not None
        self.loop.stop()


# Runtimes of this process, for shutdown_all() and diagnostics.
_runtimes: list[Runtime] = []
_lock = threading.Lock()


def _forget(rt: Runtime) -> None:
    with _lock:
        if rt in _runtimes:
            _runtimes.remove(rt)


def start(app: App, tq: int, name: str) -> Runtime:
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
        limit = timeout if timeout is not None else rt.app.unload_grace + 5.0
        if not rt.join(limit):
            print(f"[aioresty] runtime '{rt.name}' did not stop in {limit}s", file=sys.stderr)
            stuck += 1
    return stuck
