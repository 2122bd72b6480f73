"""Envoy HTTP filters written as ``async def`` Python (docs/python-mode.md).

::

    app = aioresty.App()

    @app.on_request
    async def auth(req: aioresty.FilterRequest) -> aioresty.Response | None:
        if req.headers.get("authorization") != "Bearer ok":
            return aioresty.Response(401, b"denied", headers={"www-authenticate": "Bearer"})
        req.headers["x-user"] = "alice"  # applied, then the request goes upstream

    @app.on_response
    async def stamp(resp: aioresty.FilterResponse) -> None:
        resp.headers["x-served-by"] = "aioresty"

The Envoy side is the dynamic module's ``python`` filter mode
(native/envoy/python/).  For every stream it posts a msgpack snapshot to
the App's runtime (method ``__filter_request`` / ``__filter_response``); the
runtime thread runs the hooks (Python never runs on an Envoy worker) and
answers with the changes, which the module applies on the worker thread.

Hooks run in registration order and see each other's changes; the first
one that returns a :class:`Response` answers locally and ends the chain.
Bodies are buffered only when a hook asks for them (``body=True``), up to the
filter's ``body_limit`` (413 for requests, 502 for responses beyond it).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgpack

from .handler import Handler, HandlerError, describe

Phase = Literal["request", "response"]
RequestHook = Callable[["FilterRequest"], Awaitable["Response | None"]]
ResponseHook = Callable[["FilterResponse"], Awaitable["Response | None"]]
_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])

METHOD_REQUEST = "__filter_request"
METHOD_RESPONSE = "__filter_response"
METHOD_INFO = "__filter_info"
_PHASE_REQUEST = 1
_OP_SET, _OP_ADD, _OP_REMOVE = 0, 1, 2


class Headers(MutableMapping[str, str]):
    """Multi-valued, case-insensitive HTTP headers (names are lower-cased).

    ``h[k]`` / ``h.get(k)`` give the first value, ``h.getall(k)`` every value;
    ``h[k] = v`` replaces every value, ``h.add(k, v)`` appends one,
    ``del h[k]`` removes them all.  Pseudo-headers (``:path``...) are not here:
    see the request/response attributes.
    """

    __slots__ = ("_d", "_dirty")

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] | None = None) -> None:
        self._d: dict[str, list[str]] = {}
        self._dirty: set[str] = set()
        if items is not None:
            pairs = items.items() if isinstance(items, Mapping) else items
            for k, v in pairs:
                self._d.setdefault(k.lower(), []).append(v)

    @classmethod
    def _from_wire(cls, d: dict[str, list[str]]) -> Headers:
        h = cls.__new__(cls)
        h._d = d
        h._dirty = set()
        return h

    def __getitem__(self, key: str) -> str:
        vals = self._d.get(key.lower())
        if not vals:
            raise KeyError(key)
        return vals[0]

    def get(self, key: str, default: Any = None) -> Any:  # first value, fast path
        vals = self._d.get(key.lower())
        return vals[0] if vals else default

    def getall(self, key: str) -> list[str]:
        return list(self._d.get(key.lower(), ()))

    def __setitem__(self, key: str, value: str) -> None:
        k = _check_name(key)
        self._d[k] = [_check_value(value)]
        self._dirty.add(k)

    def add(self, key: str, value: str) -> None:
        k = _check_name(key)
        self._d.setdefault(k, []).append(_check_value(value))
        self._dirty.add(k)

    def __delitem__(self, key: str) -> None:
        k = _check_name(key)
        if k not in self._d:
            raise KeyError(key)
        del self._d[k]
        self._dirty.add(k)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def multi_items(self) -> list[tuple[str, str]]:
        """Every (name, value) pair, repeated names included."""
        return [(k, v) for k, vals in self._d.items() for v in vals]

    def __repr__(self) -> str:
        return f"Headers({self.multi_items()!r})"

    def _ops(self, out: list[Any]) -> None:
        for k in self._dirty:
            vals = self._d.get(k)
            if not vals:
                out += (_OP_REMOVE, k, None)
                continue
            out += (_OP_SET, k, vals[0])
            for v in vals[1:]:
                out += (_OP_ADD, k, v)


# RFC 9110: a field name is a token (lower-cased here; ':' is never one: pseudo-headers
# are attributes); a field value has no CTL but HTAB; a request target is visible ASCII.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+").fullmatch
_BAD_VALUE = re.compile("[\x00-\x08\x0a-\x1f\x7f]").search
_BAD_PATH = re.compile("[^\x21-\x7e]|#").search


def _check_status(status: Any) -> int:
    """A final status a filter may send: 200-599 (1xx are not final answers)."""
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"bad status {status!r}: a local reply or a rewrite takes 200-599")
    return status


# Message framing is Envoy's: a hook that set these could make the upstream or the
# client read a different message than the one sent (request smuggling); set_body()
# recomputes content-length.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


def _check_name(key: str) -> str:
    k = key.lower()
    if not _TOKEN(k):
        raise ValueError(
            f"invalid header name {key!r} (an RFC 9110 token: letters, digits, !#$%&'*+-.^_`|~)"
        )
    if k in _FRAMING:
        raise ValueError(f"{k} is Envoy's to set (message framing): use set_body(), which sets it")
    return k


def _check_value(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"header values are str, got {type(value).__name__}")
    if not value:
        # Envoy's set_header removes a header given an empty value
        raise ValueError("empty header values are not supported (delete the header instead)")
    if _BAD_VALUE(value):
        raise ValueError(f"invalid header value {value!r} (control characters other than tab)")
    return value


@dataclass
class Response:
    """A local reply: returned by a hook, it answers the client without
    going (or going further) upstream."""

    status: int = 200
    body: bytes | str = b""
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None

    def __post_init__(self) -> None:
        _check_status(self.status)
        if self.status in (204, 304) and self.body:
            raise ValueError(f"a {self.status} response has no body")

    def _pack(self) -> bytes:
        _check_status(self.status)
        flat: list[str] = []
        if self.headers is not None:
            hs = self.headers
            pairs = (
                hs.multi_items()
                if isinstance(hs, Headers)
                else hs.items()
                if isinstance(hs, Mapping)
                else hs
            )
            for k, v in pairs:
                flat += (_check_name(k), _check_value(v))
        if len(flat) > 512:
            raise ValueError("too many headers in a local reply (max 256)")
        body = self.body.encode() if isinstance(self.body, str) else bytes(self.body)
        return _PACK([1, int(self.status), flat, body])


class _Message:
    __slots__ = ("_body", "_new_body", "_pseudo", "_pseudo_dirty", "_wants_body", "headers")

    def __init__(
        self, pseudo: dict[str, str], headers: Headers, body: bytes | None, wants_body: bool
    ) -> None:
        self._pseudo = pseudo
        self._pseudo_dirty = False
        self.headers = headers
        self._body = body
        self._new_body: bytes | None = None
        self._wants_body = wants_body

    async def body(self) -> bytes:
        """The whole body (hooks registered with ``body=True``); b"" if none."""
        if self._new_body is not None:
            return self._new_body
        if self._body is None:
            if not self._wants_body:
                raise RuntimeError("the body was not buffered: register the hook with body=True")
            return b""
        return self._body

    def set_body(self, data: bytes | str) -> None:
        """Replace the body (content-length is updated)."""
        if self._body is None:
            raise RuntimeError(
                "no buffered body to replace: register the hook with body=True "
                "(a message that ended with its headers has none)"
            )
        self._new_body = data.encode() if isinstance(data, str) else bytes(data)


class FilterRequest(_Message):
    """The request as the filter sees it (``method``, ``path``, ``headers``)."""

    __slots__ = ()

    @property
    def method(self) -> str:
        return self._pseudo.get(":method", "")

    @property
    def path(self) -> str:
        return self._pseudo.get(":path", "")

    @path.setter
    def path(self, value: str) -> None:
        if not value.startswith("/") or _BAD_PATH(value):
            raise ValueError(
                f"invalid path {value!r}: an origin-form target, '/' then visible ASCII "
                "(percent-encode anything else, e.g. urllib.parse.quote), no '#'"
            )
        self._pseudo[":path"] = value
        self._pseudo_dirty = True

    @property
    def authority(self) -> str:
        return self._pseudo.get(":authority", "")

    @property
    def scheme(self) -> str:
        return self._pseudo.get(":scheme", "")

    def __repr__(self) -> str:
        return f"<FilterRequest {self.method} {self.path} {self.headers!r}>"


class FilterResponse(_Message):
    """The upstream's (or Envoy's) response: ``status``, ``headers``."""

    __slots__ = ()

    @property
    def status(self) -> int:
        try:
            return int(self._pseudo.get(":status", "0"))
        except ValueError:
            return 0

    @status.setter
    def status(self, value: int) -> None:
        status = _check_status(value)
        if status in (204, 304):  # the upstream's body (and its length) would still follow
            raise ValueError(
                f"a hook cannot turn a response into {status} (it has no body): return "
                f"aioresty.Response({status}) instead"
            )
        self._pseudo[":status"] = str(status)
        self._pseudo_dirty = True

    def __repr__(self) -> str:
        return f"<FilterResponse {self.status} {self.headers!r}>"


@dataclass(frozen=True)
class FilterHook:
    fn: Callable[[Any], Awaitable[Any]]
    phase: Phase
    body: bool


class FilterChain:
    """An App's Envoy filter hooks (``App.on_request`` / ``App.on_response``)
    and what the runtime runs for the reserved ``__filter_*`` methods
    (:meth:`start`).  ``timeout`` gives the app's default call timeout."""

    def __init__(self, timeout: Callable[[], float]) -> None:
        self._timeout = timeout
        self._hooks: dict[Phase, list[FilterHook]] = {"request": [], "response": []}
        self._handlers: dict[tuple[str, int], Handler] = {}  # (method, timeout ms)

    def register(self, phase: Phase, fn: _F | None, body: bool) -> Any:
        """Usable bare (``@app.on_request``) or with options (``body=True``)."""

        def add(f: _F) -> _F:
            checked: Any = f  # the check narrows its argument's type; keep f's
            if not inspect.iscoroutinefunction(checked):
                raise TypeError(f"aioresty filter hooks must be 'async def' functions, got {f!r}")
            self._hooks[phase].append(FilterHook(f, phase, body))
            self._handlers.clear()
            return f

        if fn is not None:
            return add(fn)
        return add

    def hooks(self, phase: Phase) -> list[FilterHook]:
        return self._hooks[phase]

    def start(self, method: str, payload: bytes) -> tuple[Handler, Coroutine[Any, Any, Any]]:
        """A reserved ``__filter_*`` call: its Handler (timeout) and coroutine."""
        if method == METHOD_INFO:
            return self._handler(METHOD_INFO, 0), self._info()
        if method not in (METHOD_REQUEST, METHOD_RESPONSE):
            raise LookupError(f"aioresty: unknown filter method {method!r}")
        phase, timeout_ms, flat, body = _unpack(payload)
        return self._handler(method, timeout_ms), _run(self, phase, flat, body)

    async def _info(self) -> str:
        """The module's config-time question (native/envoy/python/config.c):
        "RBSC<ms>", four '0'/'1' (on_request, request body, on_response,
        response body) and the App's timeout in whole milliseconds, the
        hooks' timeout where the filter config gives none."""
        req, resp = self._hooks["request"], self._hooks["response"]
        hooks = (req, any(h.body for h in req), resp, any(h.body for h in resp))
        timeout_ms = max(1, round(self._timeout() * 1000))
        return "".join("1" if x else "0" for x in hooks) + str(timeout_ms)

    def _handler(self, method: str, timeout_ms: Any) -> Handler:
        """A Handler per (method, timeout): the runtime's timeout/abort machinery.
        The module sends whole milliseconds (0: the App's timeout); anything else -
        a Lua script posting __filter_* itself - is refused, so the cache stays as
        small as the set of configured timeouts."""
        if (
            isinstance(timeout_ms, bool)
            or not isinstance(timeout_ms, int)
            or not 0 <= timeout_ms < 2**32
        ):
            raise ValueError(f"aioresty: bad filter timeout {timeout_ms!r}")
        key = (method, timeout_ms)
        h = self._handlers.get(key)
        if h is None:
            h = Handler(
                name=method,
                fn=_no_fn,
                codec="bytes",
                timeout=timeout_ms / 1000.0 if timeout_ms else self._timeout(),
            )
            if len(self._handlers) < 64:  # configs have a handful of timeouts
                self._handlers[key] = h
        return h


async def _no_fn(payload: Any) -> None:
    """Handler.fn of the filter handlers: the chain runs its own coroutine."""


_PACK = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, unicode_errors="surrogateescape")


async def _run(chain: FilterChain, phase: int, flat: list[str], body: bytes | None) -> bytes:
    pseudo: dict[str, str] = {}
    d: dict[str, list[str]] = {}
    it = iter(flat)
    for k, v in zip(it, it, strict=True):
        if k[0] == ":":
            pseudo[k] = v
        else:
            vals = d.get(k)
            if vals is None:
                d[k] = [v]
            else:
                vals.append(v)
    headers = Headers._from_wire(d)
    msg: _Message
    if phase == _PHASE_REQUEST:
        hooks = chain.hooks("request")
        msg = FilterRequest(pseudo, headers, body, any(h.body for h in hooks))
    else:
        hooks = chain.hooks("response")
        msg = FilterResponse(pseudo, headers, body, any(h.body for h in hooks))
    for hook in hooks:
        try:
            result = await hook.fn(msg)
        except HandlerError:
            raise  # the hook chose its rc and message
        except Exception as exc:  # name the hook, not "__filter_request"
            where = "on_request" if phase == _PHASE_REQUEST else "on_response"
            err = HandlerError(
                f"aioresty: {where} hook '{hook.fn.__qualname__}' raised "
                f"{type(exc).__name__}: {describe(exc)}"
            )
            raise err.with_traceback(exc.__traceback__) from None  # one traceback: the hook's
        if result is None:
            continue
        if isinstance(result, Response):
            return result._pack()
        raise TypeError(
            f"filter hook {hook.fn.__qualname__} returned {type(result).__name__}; "
            "return None (continue) or aioresty.Response (local reply)"
        )
    # the changes: header ops, then the body (or nil)
    ops: list[Any] = []
    if msg._pseudo_dirty:
        key = ":path" if phase == _PHASE_REQUEST else ":status"
        ops += (_OP_SET, key, pseudo[key])
    if headers._dirty:
        headers._ops(ops)
    if not ops and msg._new_body is None:
        return b""  # continue unchanged
    return _PACK([0, ops, msg._new_body])
