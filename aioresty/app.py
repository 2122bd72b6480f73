"""Apps and handlers: what users write, independent of any proxy.

An :class:`App` maps Lua method names (``runtime:<method>(req)``) to ``async def``
handlers. Payloads arrive as ``bytes``; a handler returns ``bytes``, ``str`` or
``None``. With ``codec="json"`` or ``codec="msgpack"`` the request is decoded
before the call and the result encoded after it, so Lua can exchange tables
(``cjson`` / a msgpack library) or plain strings and numbers.

``@app.on_startup`` / ``@app.on_shutdown`` hooks run on the runtime's loop:
startup before the first call is served (a failure fails the load), shutdown
when the runtime is unloaded or the process exits. ``app.config`` is the JSON
object given after the app spec in the cfg string; ``app.state`` is a
namespace for what the hooks create (a shared HTTP client, a pool).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import sys
import types
from collections.abc import Awaitable, Callable, Coroutine
from types import ModuleType
from typing import Any

from . import filters, metrics
from .handler import (
    CODECS,
    DEFAULT_TIMEOUT,
    RC_NO_METHOD,
    Codec,
    Handler,
    HandlerError,
    HandlerFn,
    check_timeout,
)

Hook = Callable[[], Awaitable[None]]

_UNSET: Any = object()


def _check_level(level: int | str | None) -> int | None:
    """A logging level (10, "warning", "WARNING") or None; a clear error otherwise."""
    if level is None or (isinstance(level, int) and not isinstance(level, bool) and level >= 0):
        return level
    if isinstance(level, str):
        named = logging.getLevelNamesMapping().get(level.upper())
        if named is not None:
            return named
    raise ValueError(f"failure_log_level must be a logging level or None, got {level!r}")


class App:
    """A set of ``async def`` handlers served by one aioresty runtime.

    ``timeout``: default seconds a call may run before it is answered rc 3 and
    cancelled (bounded: a positive, finite number; a handler that blocks the loop
    past it is answered rc 3 when it returns).  ``unload_grace``: seconds
    in-flight calls get to finish when the runtime is unloaded (then they are
    cancelled), and again the shutdown hooks.  ``startup_timeout``: seconds the
    startup hooks may take before the load fails.

    ``failure_log_level``: the logging level of the one line each failed call
    gets in the proxy's log (method, rc, duration, message; the traceback when
    a handler raised; at most 10 lines a second, then a count); ``None``: no
    such lines.  ``blocking_warning``: seconds a handler (or any code on the
    loop) may hold the event loop before a warning names it; ``None``: off.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        unload_grace: float = 5.0,
        startup_timeout: float = 30.0,
        failure_log_level: int | str | None = logging.WARNING,
        blocking_warning: float | None = 0.1,
    ) -> None:
        self.timeout = check_timeout(timeout, "App timeout")
        self.unload_grace = unload_grace
        self.startup_timeout = check_timeout(startup_timeout, "App startup_timeout")
        self.failure_log_level = _check_level(failure_log_level)
        self.blocking_warning = (
            None
            if blocking_warning is None
            else check_timeout(blocking_warning, "blocking_warning")
        )
        #: the JSON object after the app spec in the cfg string ({} without one)
        self.config: dict[str, Any] = {}
        #: a namespace for what startup hooks create (clients, pools)
        self.state = types.SimpleNamespace()
        self._handlers: dict[str, Handler] = {}
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        #: the Envoy HTTP filter hooks (aioresty/filters.py)
        self.filters = filters.FilterChain(lambda: self.timeout)
        # the queue of the runtime serving this app (0: none); metrics.py labels
        # series with its runtime.  The epoch changes with it (cached handles).
        self._metrics_tq = 0
        self._metrics_epoch = 0

    def handler(
        self,
        fn_or_name: HandlerFn | str | None = None,
        *,
        name: str | None = None,
        codec: Codec = "bytes",
        timeout: float = _UNSET,
    ) -> Any:
        """Register an ``async def`` handler; usable bare or with options.

        ``@app.handler`` / ``@app.handler("lua_name", codec="json", timeout=2)``.
        Each call runs as its own asyncio Task, in its own copy of the context.
        """
        if isinstance(fn_or_name, str):
            name = fn_or_name
            fn_or_name = None

        def register(fn: HandlerFn) -> HandlerFn:
            self.add(fn, name=name, codec=codec, timeout=timeout)
            return fn

        if fn_or_name is not None:
            return register(fn_or_name)
        return register

    def add(
        self,
        fn: HandlerFn,
        *,
        name: str | None = None,
        codec: Codec = "bytes",
        timeout: float = _UNSET,
    ) -> Handler:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"aioresty handlers must be 'async def' functions, got {fn!r}")
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r} (use 'bytes', 'json' or 'msgpack')")
        hname = name or fn.__name__
        if hname.startswith("__"):
            raise ValueError(f"handler name {hname!r} is reserved (names starting with '__')")
        t = self.timeout if timeout is _UNSET else check_timeout(timeout, f"'{hname}' timeout")
        h = Handler(name=hname, fn=fn, codec=codec, timeout=t)
        self._handlers[hname] = h
        return h

    # ------------------------------------------------------------- metrics
    def counter(self, name: str, labels: tuple[str, ...] | list[str] = ()) -> metrics.Counter:
        """A counter: ``c = app.counter("orders", labels=("kind",))``, then
        ``c.inc(kind="book")`` (aioresty/metrics.py)."""
        return metrics.Counter(self, name, labels, ())

    def gauge(self, name: str, labels: tuple[str, ...] | list[str] = ()) -> metrics.Gauge:
        """A gauge: ``g.set(3)``, ``g.inc()``, ``g.dec()``."""
        return metrics.Gauge(self, name, labels, ())

    def histogram(
        self,
        name: str,
        labels: tuple[str, ...] | list[str] = (),
        buckets: tuple[float, ...] | list[float] = metrics.DEFAULT_BUCKETS,
    ) -> metrics.Histogram:
        """A histogram: ``h.observe(12.5)``; ``buckets`` are the upper bounds
        (1-32, increasing; the default suits milliseconds)."""
        return metrics.Histogram(self, name, labels, metrics.check_buckets(name, buckets))

    def _serve_metrics(self, tq: int) -> None:
        """The runtime (runtime.py) that serves this app now: tq, or 0 when it ended."""
        self._metrics_tq = tq
        self._metrics_epoch += 1

    def on_startup(self, fn: Hook) -> Hook:
        """``@app.on_startup``: an ``async def`` run on the runtime's loop before
        the first call is served, in registration order; if one raises, the
        runtime does not load (Lua's error ends with the exception's last line)."""
        self._startup_hooks.append(_check_hook(fn, "on_startup"))
        return fn

    def on_shutdown(self, fn: Hook) -> Hook:
        """``@app.on_shutdown``: an ``async def`` run on the runtime's loop when it
        is unloaded or the process exits, after the calls in flight (bounded by
        ``unload_grace``)."""
        self._shutdown_hooks.append(_check_hook(fn, "on_shutdown"))
        return fn

    def on_request(self, fn: HandlerFn | None = None, *, body: bool = False) -> Any:
        """Register an Envoy filter hook for requests (aioresty/filters.py).

        ``@app.on_request`` / ``@app.on_request(body=True)``: the hook gets a
        FilterRequest and returns None (continue, with its changes) or a
        Response (local reply).  ``body=True`` buffers the request body.
        """
        return self.filters.register("request", fn, body)

    def on_response(self, fn: HandlerFn | None = None, *, body: bool = False) -> Any:
        """Register an Envoy filter hook for responses (FilterResponse)."""
        return self.filters.register("response", fn, body)

    def start_call(self, method: str, payload: bytes) -> tuple[Handler, Coroutine[Any, Any, Any]]:
        """What the runtime runs for a call: the method's Handler and its
        coroutine (the payload decoded by the handler's codec; the reserved
        ``__filter_*`` methods go to the filter chain).  Raises HandlerError
        (rc 2 or 4) when there is nothing to run."""
        h = self._handlers.get(method)
        if h is not None:
            return h, h.fn(payload if h.codec == "bytes" else h.decode(payload))
        if method.startswith("__filter_"):
            return self.filters.start(method, payload)
        raise self._no_handler(method)

    def _no_handler(self, method: str) -> HandlerError:
        known = ", ".join(sorted(self._handlers)) or "none"
        return HandlerError(
            f"aioresty: no handler for method '{method}' (handlers: {known})", RC_NO_METHOD
        )

    def lookup(self, method: str) -> Handler:
        h = self._handlers.get(method)
        if h is None:
            raise self._no_handler(method)
        return h

    @property
    def handlers(self) -> dict[str, Handler]:
        return dict(self._handlers)


def _check_hook(fn: Any, what: str) -> Hook:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"@app.{what} needs an 'async def' function, got {fn!r}")
    return fn  # type: ignore[no-any-return]


def app_from_module(module: ModuleType) -> App:
    """The module's ``app`` if it is an App, else an App of its public ``async def``s."""
    candidate = getattr(module, "app", None)
    if isinstance(candidate, App):
        return candidate
    app = App()
    for attr, value in vars(module).items():
        if (
            not attr.startswith("_")
            and inspect.iscoroutinefunction(value)
            and getattr(value, "__module__", None) == module.__name__
        ):
            app.add(value, name=attr)
    if not app.handlers:
        raise LookupError(f"module '{module.__name__}' defines no App and no public async def")
    return app


def split_cfg(cfg: str) -> tuple[str, dict[str, Any]]:
    """``"pkg.module[:app] {json}"`` -> (spec, config); the JSON is optional."""
    spec, _, rest = cfg.strip().partition(" ")
    rest = rest.strip()
    if not rest:
        return spec, {}
    try:
        config = json.loads(rest)
    except ValueError as e:
        raise ValueError(f"bad app config after '{spec}' (expected a JSON object): {e}") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"bad app config after '{spec}': expected a JSON object, got {type(config).__name__}"
        )
    return spec, config


def _reach(path: str) -> str:
    """'missing', 'denied' (exists, or may exist, but this process may not read
    it), 'dir' or 'file'."""
    try:
        os.stat(path)
    except PermissionError:
        return "denied"
    except OSError:
        return "missing"
    if os.path.isdir(path):
        return "dir" if os.access(path, os.R_OK | os.X_OK) else "denied"
    return "file" if os.access(path, os.R_OK) else "denied"


def _out_of_reach(modname: str) -> str | None:
    """The first path on the way to ``modname`` that sys.path has but this
    process may not read: a "No module named" that is really a permission problem."""
    parts = modname.split(".")
    for entry in sys.path:
        path = entry or os.getcwd()
        state = _reach(path)
        if state == "denied":
            return path
        if state != "dir":
            continue
        for i, part in enumerate(parts):
            sub = os.path.join(path, part)
            cands = (sub, sub + ".py") if i == len(parts) - 1 else (sub,)
            for cand in cands:
                if _reach(cand) == "denied":
                    return cand
            if _reach(sub) != "dir":
                break
            path = sub
    return None


def load_app(spec: str) -> App:
    """Resolve ``"pkg.module"`` or ``"pkg.module:attr"`` to an App."""
    modname, _, attr = spec.partition(":")
    if not modname or not all(part.isidentifier() for part in modname.split(".")):
        raise ValueError(f"bad app spec {spec!r}: expected 'pkg.module' or 'pkg.module:app'")
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        where = _out_of_reach(modname) if e.name and modname.startswith(e.name) else None
        if where is None:
            raise
        raise PermissionError(
            f"module '{modname}' cannot be imported: {where} is not readable by uid "
            f"{os.geteuid()} (make it readable by the proxy's worker user)"
        ) from e
    if not attr:
        app = app_from_module(module)
    else:
        obj: App | Any = getattr(module, attr, None)
        if obj is None:
            raise LookupError(f"module '{modname}' has no attribute '{attr}'")
        if not isinstance(obj, App):
            raise TypeError(f"'{spec}' is {type(obj).__name__}, not an aioresty.App")
        app = obj
    return app
