"""Unit-test aioresty handlers and filter hooks with pytest-asyncio, no proxy.

    from aioresty.testing import AppClient, FilterClient

    async def test_echo():
        async with AppClient(myapp.app) as client:
            res = await client.call("echo", b"hi")
        assert res.ok and res.body == b"hi"

    async def test_auth_hook():
        async with FilterClient(myapp.filters.app) as client:
            res = await client.request("GET", "/", headers={"authorization": "Bearer ok"})
        assert res.continued and res.header("x-user") == "alice"

A call goes through the same code as in a proxy: the App's startup hooks run
on a real runtime thread with its own loop, each call is posted to a real task
queue, runs as its own Task there (timeout, abort, codecs, error mapping
included), and answers what Lua would see: ``ok``, ``rc``, the body or the
message.  Cancelling a ``call`` aborts it the way a client going away does.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import msgpack

from . import _native, filters, runtime
from .app import App, load_app, split_cfg
from .filters import Response


@dataclass(frozen=True)
class Result:
    rc: int
    body: bytes | None  # the answer bytes (rc == 0) or the error message (rc != 0)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def text(self) -> str:
        return (self.body or b"").decode()

    def unpack(self) -> Any:
        """The msgpack-decoded body (for handlers with codec='msgpack')."""
        return msgpack.unpackb(self.body or b"", raw=False)

    def json(self) -> Any:
        """The JSON-decoded body (for handlers with codec='json')."""
        return json.loads(self.body or b"null")


class AppClient:
    """Calls an App's handlers the way a proxy's ``runtime:<method>(req)`` would.

    ``app``: an App, or a cfg string as Lua gives it (``"pkg.mod:app {json}"``);
    ``config``: ``app.config`` (the cfg string's JSON).  Use ``async with``, or
    ``await client.close()``: that unloads the runtime (shutdown hooks run).
    """

    def __init__(self, app: App | str, config: dict[str, Any] | None = None) -> None:
        if isinstance(app, str):
            spec, cfg_config = split_cfg(app)
            self.app = load_app(spec)
            self.name = spec
            config = cfg_config if config is None else config
        else:
            self.app = app
            self.name = "testing"
        self.config = config
        self._rt: runtime.Runtime | None = None
        self._tq = 0
        self._host = 0
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[tuple[int, bytes | None]]] = {}
        self._starting: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AppClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the runtime (its startup hooks); raises what they raised."""
        if self._rt is not None:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        tq = _native.queue_new()
        host, fd = _native.host_new()
        try:
            rt = await asyncio.to_thread(runtime.start, self.app, tq, self.name, self.config)
        except BaseException:
            # as the registry does when libffi_init fails: close, drop both refs
            _native.unload(tq)
            _native.queue_unref(tq)
            _native.queue_unref(tq)
            _native.host_free(host)
            self._starting = None
            raise
        self._loop, self._tq, self._host, self._fd, self._rt = loop, tq, host, fd, rt
        loop.add_reader(fd, self._collect)

    def _collect(self) -> None:
        for task, rc, body in _native.host_collect(self._host):
            fut = self._pending.pop(task, None)
            if fut is not None and not fut.done():
                fut.set_result((rc, body))

    async def call(
        self, method: str, payload: bytes | str | None = b"", *, timeout: float | None = None
    ) -> Result:
        """One call; ``timeout`` (seconds) bounds the wait like a proxy's per-call
        timeout: past it the call is aborted and TimeoutError raised (default:
        the App's timeout plus 5 s, so a stuck handler cannot hang a test)."""
        await self.start()
        if isinstance(payload, str):
            payload = payload.encode()
        assert self._loop is not None
        task = _native.host_post(self._host, self._tq, method, payload or b"")
        fut: asyncio.Future[tuple[int, bytes | None]] = self._loop.create_future()
        self._pending[task] = fut
        limit = self.app.timeout + 5.0 if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                rc, body = await asyncio.shield(fut)
        except BaseException:
            if not fut.done():  # still posted: the runtime sees an abort
                _native.host_abort(task)
            raise
        return Result(rc, body)

    async def call_msgpack(self, method: str, value: Any) -> Result:
        return await self.call(method, msgpack.packb(value, use_bin_type=True))

    async def call_json(self, method: str, value: Any) -> Result:
        return await self.call(method, json.dumps(value).encode())

    async def close(self) -> None:
        """Unload the runtime: calls in flight finish (unload_grace), then the
        shutdown hooks run; waits for its thread (bounded)."""
        rt, self._rt = self._rt, None
        if rt is None:
            return
        _native.unload(self._tq)
        limit = 2 * self.app.unload_grace + 5.0
        stopped = await asyncio.to_thread(rt.join, limit)
        assert self._loop is not None
        self._collect()
        self._loop.remove_reader(self._fd)
        _native.queue_unref(self._tq)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("aioresty: the runtime was unloaded"))
        self._pending.clear()
        self._starting = None
        if not stopped:  # answers may still come: the host stays allocated
            raise RuntimeError(f"aioresty: runtime '{self.name}' did not stop in {limit}s")
        _native.host_free(self._host)


@dataclass(frozen=True)
class FilterResult:
    """What the Envoy filter would do after one phase's hooks ran."""

    rc: int  # 0, or the failure (1 raised, 3 timeout...): Envoy applies the fail policy
    reply: Response | None  # a hook's local reply (the chain ended there)
    headers: list[tuple[str, str]]  # the headers after the hooks' changes, pseudo-headers first
    body: bytes | None  # the body a hook set, None if unchanged
    error: str = ""  # the failure message when rc != 0

    @property
    def continued(self) -> bool:
        """The request (response) goes on, with the changes."""
        return self.rc == 0 and self.reply is None

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (or a pseudo-header such as ``:path``)."""
        return next((v for k, v in self.headers if k == name.lower()), None)


class FilterClient(AppClient):
    """Runs an App's ``on_request`` / ``on_response`` hooks the way the Envoy
    ``python`` filter does: the same snapshot posted to the same runtime, the
    answer decoded into a :class:`FilterResult`."""

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        *,
        authority: str = "localhost",
        scheme: str = "http",
    ) -> FilterResult:
        pseudo = [(":method", method), (":path", path), (":authority", authority)]
        pseudo.append((":scheme", scheme))
        return await self._phase(filters.METHOD_REQUEST, 1, pseudo, headers, body)

    async def response(
        self,
        status: int = 200,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> FilterResult:
        pseudo = [(":status", str(status))]
        return await self._phase(filters.METHOD_RESPONSE, 2, pseudo, headers, body)

    async def _phase(
        self,
        method: str,
        phase: int,
        pseudo: list[tuple[str, str]],
        headers: dict[str, str] | list[tuple[str, str]] | None,
        body: bytes | None,
    ) -> FilterResult:
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        pairs = [(k.lower(), v) for k, v in pairs]
        hooks = self.app.filters.hooks("request" if phase == 1 else "response")
        wants = any(h.body for h in hooks)
        flat = [x for kv in pseudo + pairs for x in kv]
        snapshot = msgpack.packb([phase, 0, flat, (body or b"") if wants else None])
        res = await self.call(method, snapshot)
        if not res.ok:
            return FilterResult(res.rc, None, pseudo + pairs, None, res.text)
        if not res.body:
            return FilterResult(0, None, pseudo + pairs, None)
        answer = msgpack.unpackb(res.body, raw=False)
        if answer[0] == 1:
            _, status, rflat, rbody = answer
            it = iter(rflat)
            reply = Response(status, rbody, list(zip(it, it, strict=True)))
            return FilterResult(0, reply, pseudo + pairs, None)
        _, ops, new_body = answer
        out = pseudo + pairs
        for i in range(0, len(ops), 3):
            op, k, v = ops[i : i + 3]
            if op == 0:  # set: replaces every value
                at = next((j for j, (n, _) in enumerate(out) if n == k), len(out))
                out = [(n, x) for n, x in out if n != k]
                out.insert(min(at, len(out)), (k, v))
            elif op == 1:  # add
                out.append((k, v))
            else:  # remove
                out = [(n, x) for n, x in out if n != k]
        return FilterResult(0, None, out, new_body)
