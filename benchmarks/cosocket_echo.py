"""The peer of bench-nginx: the same ``async def echo`` served by an asyncio unix-socket server.

What an OpenResty user writes without aioresty: a Python service next to nginx,
reached from Lua through a cosocket (``ngx.socket.tcp():connect("unix:...")``, kept
alive with ``setkeepalive``).  Frames both ways: 4-byte big-endian length + payload.
Each connection carries one request at a time (a cosocket is request/response).

    python benchmarks/cosocket_echo.py /path/echo.sock [--impl protocol|streams]

``streams`` is the textbook asyncio server (``readexactly`` + ``write``); ``protocol``
(the default: faster) parses frames in ``data_received`` and runs the handler
eagerly: a handler that finishes without suspending answers in the same callback, one
that suspends continues as a Task.  The handler is tests/apps/echoapp.py's ``echo``,
the function the aioresty variant calls.  SIGTERM/SIGINT stop it; the socket file is
removed.  Prints "ready <path>" on stdout once it accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import struct
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.apps.echoapp import echo

Handler = Callable[[bytes], Awaitable[bytes]]
_HDR = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


def frame(payload: bytes) -> bytes:
    return _HDR.pack(len(payload)) + payload


class EchoProtocol(asyncio.Protocol):
    """Frames parsed from a bytearray; the handler is stepped eagerly."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a suspended handler is running: keep frames in order
        self.pending: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        buf = self.buf
        while not self.busy and len(buf) >= 4:
            (n,) = _HDR.unpack_from(buf, 0)
            if n > MAX_FRAME:
                assert self.transport is not None
                self.transport.close()
                return
            if len(buf) < 4 + n:
                return
            payload = bytes(buf[4 : 4 + n])
            del buf[: 4 + n]
            coro = self.handler(payload)
            assert isinstance(coro, Coroutine)
            try:
                first = coro.send(None)
            except StopIteration as stop:  # finished without suspending
                self._answer(stop.value)
                continue
            except Exception as exc:
                self._fail(exc)
                return
            self.busy = True
            self.pending = asyncio.ensure_future(self._finish(coro, first))

    async def _finish(self, started: Coroutine[Any, Any, bytes], first: Any) -> None:
        try:
            result = await _Resume(started, first)  # the rest of the started coroutine
        except Exception as exc:
            self._fail(exc)
            return
        self.busy = False
        self._answer(result)
        self._process()

    def _answer(self, result: bytes | str | None) -> None:
        if isinstance(result, str):
            result = result.encode()
        assert self.transport is not None
        self.transport.write(frame(result or b""))

    def _fail(self, exc: BaseException) -> None:
        print(f"cosocket_echo: handler failed: {exc!r}", file=sys.stderr)
        if self.transport is not None:
            self.transport.close()


class _Resume:
    """Awaitable continuing a coroutine that already yielded `first` (its first step
    ran in data_received): yields what it yields, sends/throws back what the Task
    sends/throws (asyncio's Task protocol), returns its result."""

    def __init__(self, coro: Coroutine[Any, Any, bytes], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Any:
        coro, fut = self.coro, self.first
        while True:
            value: Any = None
            exc: BaseException | None = None
            try:
                value = yield fut
            except BaseException as e:
                exc = e
            try:
                fut = coro.throw(exc) if exc is not None else coro.send(value)
            except StopIteration as stop:
                return stop.value


async def _streams_conn(
    handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            hdr = await reader.readexactly(4)
            (n,) = _HDR.unpack(hdr)
            payload = await reader.readexactly(n) if n else b""
            result = await handler(payload)
            writer.write(frame(result))
            if writer.transport.get_write_buffer_size() > 65536:
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(path: str, impl: str, handler: Handler = echo) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    loop = asyncio.get_running_loop()
    if impl == "streams":
        server = await asyncio.start_unix_server(
            lambda r, w: _streams_conn(handler, r, w), path, backlog=1024
        )
    else:
        server = await loop.create_unix_server(lambda: EchoProtocol(handler), path, backlog=1024)
    os.chmod(path, 0o666)  # nginx workers run as `nobody` when the master is root
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {path}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="unix socket path")
    parser.add_argument("--impl", choices=("protocol", "streams"), default="protocol")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.path, args.impl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
