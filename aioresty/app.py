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
import traceback
import types
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Final, Literal

import msgpack

from . import _native, metrics

Codec = Literal["bytes", "msgpack", "json"]
CODECS = ("bytes", "msgpack", "json")
HandlerFn = Callable[[Any], Coroutine[Any, Any, Any]]
Hook = Callable[[], Awaitable[None]]

# rc values answered to Lua (ok == false, res_or_rc == rc, err == message);
# their one source is native/core/aioresty_core.h (AR_RC_*).
RC_ERROR: Final = _native.RC_ERROR  # the handler raised
RC_NO_METHOD: Final = _native.RC_NO_METHOD  # no handler for the called method
RC_TIMEOUT: Final = _native.RC_TIMEOUT  # the handler ran longer than its timeout
RC_BAD_REQUEST: Final = _native.RC_BAD_REQUEST  # the payload could not be decoded
RC_BAD_RESULT: Final = _native.RC_BAD_RESULT  # the result could not be encoded
RC_CANCELLED: Final = _native.RC_CANCELLED  # the caller went away, or the runtime stopped

DEFAULT_TIMEOUT = 30.0  # seconds a call may run unless the App or handler says otherwise

_UNSET: Any = object()


def safe_text(text: str) -> bytes:
    """UTF-8 that always encodes: lone surrogates become ``\\udcxx`` escapes."""
    return text.encode("utf-8", "backslashreplace")


def describe(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when its ``__str__`` raises."""
    try:
        return str(exc)
    except BaseException:
        return f"<{type(exc).__name__}: str() failed>"


def last_line(exc: BaseException) -> str:
    """The last line of the exception's traceback (``ValueError: bad x``)."""
    lines = traceback.format_exception_only(type(exc), exc)
    return lines[-1].strip() if lines else type(exc).__name__


def _check_timeout(timeout: Any, what: str) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {timeout!r}")
    if timeout == float("inf"):
        raise ValueError(f"{what} must be finite: every call has a bounded timeout")
    return float(timeout)


class HandlerError(Exception):
    """An answer with ``rc != 0``: raise it to choose the rc and the message."""

    def __init__(self, message: str, rc: int = RC_ERROR) -> None:
        if rc == 0:
            raise ValueError("HandlerError needs a non-zero rc")
        super().__init__(message)
        self.rc = rc
        self.message = message


@dataclass(frozen=True)
class Handler:
    name: str
    fn: HandlerFn
    codec: Codec
    timeout: float
    decode: Callable[[bytes], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dec = _identity if self.codec == "bytes" else self._decode
        object.__setattr__(self, "decode", dec)

    def _decode(self, payload: bytes) -> Any:
        try:
            if self.codec == "json":
                return json.loads(payload)
            return msgpack.unpackb(payload, raw=False)
        except Exception as e:
            raise HandlerError(
                f"aioresty: '{self.name}' expects a {self.codec} payload: {e}", RC_BAD_REQUEST
            ) from None

    def encode(self, result: Any) -> bytes | None:
        if self.codec == "json":
            try:
                return json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()
            except (TypeError, ValueError) as e:
                raise HandlerError(
                    f"aioresty: '{self.name}' returned a value json cannot encode: {e}",
                    RC_BAD_RESULT,
                ) from None
        if self.codec == "msgpack":
            try:
                return msgpack.packb(result, use_bin_type=True)  # type: ignore[no-any-return]
            except Exception as e:
                raise HandlerError(
                    f"aioresty: '{self.name}' returned a value msgpack cannot pack: {e}",
                    RC_BAD_RESULT,
                ) from None
        if result is None or isinstance(result, bytes):
            return result
        if isinstance(result, str):
            try:
                return result.encode()
            except UnicodeEncodeError as e:
                raise HandlerError(
                    f"aioresty: '{self.name}' returned a str that is not valid UTF-8 ({e.reason} "
                    f"at position {e.start})",
                    RC_BAD_RESULT,
                ) from None
        if isinstance(result, (bytearray, memoryview)):
            return bytes(result)
        raise HandlerError(
            f"aioresty: '{self.name}' returned {type(result).__name__}; return bytes or str, "
            "or register it with codec='json' or codec='msgpack'",
            RC_BAD_RESULT,
        )


def _identity(payload: bytes) -> bytes:
    return payload


def error_answer(handler: str, exc: BaseException) -> tuple[int, str]:
    """The (rc, message) answered for an exception escaping a handler."""
    if isinstance(exc, HandlerError):
        msg = exc.message if isinstance(exc.message, str) else describe(exc)
        return exc.rc, msg
    return RC_ERROR, f"aioresty: handler '{handler}' raised {type(exc).__name__}: {describe(exc)}"


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
    cancelled (bounded: a positive, finite number).  ``unload_grace``: seconds
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
        self.timeout = _check_timeout(timeout, "App timeout")
        self.unload_grace = unload_grace
        self.startup_timeout = _check_timeout(startup_timeout, "App startup_timeout")
        self.failure_log_level = _check_level(failure_log_level)
        self.blocking_warning = (
            None
            if blocking_warning is None
            else _check_timeout(blocking_warning, "blocking_warning")
        )
        #: the JSON object after the app spec in the cfg string ({} without one)
        self.config: dict[str, Any] = {}
        #: a namespace for what startup hooks create (clients, pools)
        self.state = types.SimpleNamespace()
        self._handlers: dict[str, Handler] = {}
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        # Envoy HTTP filter hooks (aioresty/filters.py): phase -> hooks in order
        self._filter_hooks: dict[str, list[Any]] = {"request": [], "response": []}
        self._filter_handlers: dict[tuple[str, int], Handler] = {}
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
        t = self.timeout if timeout is _UNSET else _check_timeout(timeout, f"'{hname}' timeout")
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
        from .filters import register

        return register(self, "request", fn, body)

    def on_response(self, fn: HandlerFn | None = None, *, body: bool = False) -> Any:
        """Register an Envoy filter hook for responses (FilterResponse)."""
        from .filters import register

        return register(self, "response", fn, body)

    def lookup(self, method: str) -> Handler:
        h = self._handlers.get(method)
        if h is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise HandlerError(
                f"aioresty: no handler for method '{method}' (handlers: {known})", RC_NO_METHOD
            )
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
