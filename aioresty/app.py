"""Apps and handlers: what users write, independent of any proxy.

An :class:`App` maps Lua method names (``runtime:<method>(req)``) to ``async def``
handlers. Payloads arrive as ``bytes``; a handler returns ``bytes``, ``str`` or
``None``. With ``codec="msgpack"`` the request is unpacked before the call and the
result packed after it, so Lua can exchange tables (via a msgpack library) or
plain strings/numbers.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import msgpack

Codec = Literal["bytes", "msgpack"]
HandlerFn = Callable[[Any], Coroutine[Any, Any, Any]]

# rc values answered to Lua (ok == false, res_or_rc == rc, err == message).
RC_ERROR = 1  # the handler raised
RC_NO_METHOD = 2  # no handler for the called method
RC_TIMEOUT = 3  # the handler ran longer than its timeout
RC_BAD_REQUEST = 4  # the payload could not be decoded by the handler's codec
RC_BAD_RESULT = 5  # the result could not be encoded
RC_CANCELLED = 6  # the caller went away, or the runtime was shut down

_UNSET: Any = object()


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
    timeout: float | None
    eager: bool

    # raw bytes in and eager start: the runtime's inline path applies
    fast: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fast", self.codec == "bytes" and self.eager)

    def decode(self, payload: bytes) -> Any:
        if self.codec == "msgpack":
            try:
                return msgpack.unpackb(payload, raw=False)
            except Exception as e:
                raise HandlerError(
                    f"aioresty: '{self.name}' expects a msgpack payload: {e}", RC_BAD_REQUEST
                ) from None
        return payload

    def encode(self, result: Any) -> bytes | str | None:
        if self.codec == "msgpack":
            try:
                return msgpack.packb(result, use_bin_type=True)
            except Exception as e:
                raise HandlerError(
                    f"aioresty: '{self.name}' returned a value msgpack cannot pack: {e}",
                    RC_BAD_RESULT,
                ) from None
        if result is None or isinstance(result, (bytes, str)):
            return result
        if isinstance(result, (bytearray, memoryview)):
            return bytes(result)
        raise HandlerError(
            f"aioresty: '{self.name}' returned {type(result).__name__}; return bytes or str, "
            "or register it with codec='msgpack'",
            RC_BAD_RESULT,
        )


def error_answer(handler: str, exc: BaseException) -> tuple[int, str]:
    """The (rc, message) answered for an exception escaping a handler."""
    if isinstance(exc, HandlerError):
        return exc.rc, exc.message
    return RC_ERROR, f"aioresty: handler '{handler}' raised {type(exc).__name__}: {exc}"


class App:
    """A set of ``async def`` handlers served by one aioresty runtime.

    ``timeout``: default seconds a handler may run (None = no limit).
    ``unload_grace``: seconds in-flight handlers get to finish when the runtime is
    unloaded, before they are cancelled.
    """

    def __init__(self, *, timeout: float | None = 60.0, unload_grace: float = 5.0) -> None:
        self.timeout = timeout
        self.unload_grace = unload_grace
        self._handlers: dict[str, Handler] = {}
        # Envoy HTTP filter hooks (aioresty/filters.py): phase -> hooks in order
        self._filter_hooks: dict[str, list[Any]] = {"request": [], "response": []}
        self._filter_handlers: dict[tuple[str, int], Handler] = {}

    def handler(
        self,
        fn_or_name: HandlerFn | str | None = None,
        *,
        name: str | None = None,
        codec: Codec = "bytes",
        timeout: float | None = _UNSET,
        eager: bool = True,
    ) -> Any:
        """Register an ``async def`` handler; usable bare or with options.

        ``@app.handler`` / ``@app.handler("lua_name", codec="msgpack", timeout=2)``.
        By default the handler's first step runs eagerly, outside any asyncio Task
        (a Task is made only if it suspends). ``eager=False`` starts it as a real
        Task instead; needed when its first step uses ``asyncio.current_task()``
        (``asyncio.timeout``, an aiohttp client call before the first ``await``).
        """
        if isinstance(fn_or_name, str):
            name = fn_or_name
            fn_or_name = None

        def register(fn: HandlerFn) -> HandlerFn:
            self.add(fn, name=name, codec=codec, timeout=timeout, eager=eager)
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
        timeout: float | None = _UNSET,
        eager: bool = True,
    ) -> Handler:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"aioresty handlers must be 'async def' functions, got {fn!r}")
        if codec not in ("bytes", "msgpack"):
            raise ValueError(f"unknown codec {codec!r} (use 'bytes' or 'msgpack')")
        hname = name or fn.__name__
        if hname.startswith("__"):
            raise ValueError(f"handler name {hname!r} is reserved (names starting with '__')")
        h = Handler(
            name=hname,
            fn=fn,
            codec=codec,
            timeout=self.timeout if timeout is _UNSET else timeout,
            eager=eager,
        )
        self._handlers[hname] = h
        return h

    def on_request(
        self, fn: HandlerFn | None = None, *, body: bool = False, eager: bool = True
    ) -> Any:
        """Register an Envoy filter hook for requests (aioresty/filters.py).

        ``@app.on_request`` / ``@app.on_request(body=True)``: the hook gets a
        FilterRequest and returns None (continue, with its changes) or a
        Response (local reply).  ``body=True`` buffers the request body.
        """
        from .filters import register

        return register(self, "request", fn, body, eager)

    def on_response(
        self, fn: HandlerFn | None = None, *, body: bool = False, eager: bool = True
    ) -> Any:
        """Register an Envoy filter hook for responses (FilterResponse)."""
        from .filters import register

        return register(self, "response", fn, body, eager)

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


def load_app(spec: str) -> App:
    """Resolve ``"pkg.module"`` or ``"pkg.module:attr"`` to an App."""
    modname, _, attr = spec.partition(":")
    if not modname or not all(part.isidentifier() for part in modname.split(".")):
        raise ValueError(f"bad app spec {spec!r}: expected 'pkg.module' or 'pkg.module:app'")
    module = importlib.import_module(modname)
    if not attr:
        return app_from_module(module)
    obj: App | Any = getattr(module, attr, None)
    if obj is None:
        raise LookupError(f"module '{modname}' has no attribute '{attr}'")
    if not isinstance(obj, App):
        raise TypeError(f"'{spec}' is {type(obj).__name__}, not an aioresty.App")
    return obj
