"""A bounded fuzz of every way aioresty runs (issue 11, point 7).

Random method names (empty, 1-200 bytes, percent-encoded bytes with %00,
reserved names, handler names with suffixes, non-ASCII), payloads (empty,
random binary up to 64 KiB, a few of 1-4 MiB), header sets and paths, and
forged bridge authorities, sent concurrently over raw HTTP/1.1 connections
(keep-alive and not) to:

- Envoy's stock Lua filter + the bridge, with a user route that lets clients
  name the bridge cluster (`cluster_header`, as tests/envoy/test_bridge_trust.py);
- aioresty's Envoy "lua" mode;
- the Envoy Python HTTP filter (tests/apps/fuzzfilter.py);
- nginx + the lua module.

What must hold whatever the answer: every request gets one complete HTTP
response within PER_REQUEST seconds, the proxy is alive afterwards and still
answers a normal echo, no request unloaded the runtime the fuzz script calls
(its registry id never changes), no forged bridge call reached a runtime, and
nothing in the logs says crash.  Inputs come from AIORESTY_FUZZ_SEED (default
SEED below), printed in every failure: `AIORESTY_FUZZ_SEED=N pytest
tests/fuzz -k <mode>` replays one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import msgpack

from tests.apps.fuzzapp import HANDLERS
from tests.envoy.conftest import REPO
from tests.envoy.lua.conftest import hcm
from tests.envoy.python.conftest import FilterEnvoy, Upstream

HERE = Path(__file__).resolve().parent
FUZZCALL = HERE / "lua" / "fuzzcall.lua"
APP_CALLS = REPO / "tests" / "envoy" / "scripts" / "app_calls.lua"
SEED = int(os.environ.get("AIORESTY_FUZZ_SEED", "20261111"))
PER_REQUEST = 10.0  # s: the bound on every answer
IN_FLIGHT = 32  # connections at once
# requests per mode (sized for <= 60 s for the module on a loaded 2-core machine)
N_CALLS, N_BRIDGE, N_FILTER = 1200, 800, 1200
BUDGET = 11.0  # s per mode: no request is started later (each is then bounded by PER_REQUEST)
CHURN = "tests.apps.fuzzapp:churn"  # the runtime app_calls.lua may unload
FILTER_APP = "tests.apps.fuzzfilter:app"

# ----------------------------------------------------------------- the client


class Broken(Exception):
    """The bytes the proxy sent are not one well-framed HTTP/1.1 response."""


@dataclass
class Req:
    what: str  # for failure messages
    head: bytes  # request line and headers, without connection: and the blank line
    body: bytes = b""
    lib: str | None = None  # "py" / "c": a fuzzcall.lua call (its x-rt-id is checked)
    bridge: bool = False  # a forged call to the bridge cluster
    took: float = 0.0  # s, until answered (or given up)

    def data(self, close: bool) -> bytes:
        conn = b"close" if close else b"keep-alive"
        return self.head + b"\r\nconnection: " + conn + b"\r\n\r\n" + self.body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5]\d\d)(?: [^\r\n]*)?")


async def read_answer(reader: asyncio.StreamReader) -> tuple[Answer, bool]:
    """One response (1xx skipped) -> (answer, the server closes after it)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        m = _STATUS.fullmatch(lines[0])
        if not m:
            raise Broken(f"bad status line {lines[0][:100]!r}")
        status = int(m.group(1))
        headers: dict[str, str] = {}
        for ln in lines[1:]:
            name, sep, value = ln.partition(b":")
            if not sep or not re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
                raise Broken(f"bad header line {ln[:100]!r}")
            key = name.decode().lower()
            if key in headers and key in ("content-length", "transfer-encoding"):
                raise Broken(f"two {key} headers")
            if re.search(rb"[\x00\r\n]", value):  # RFC 9110 5.5: never in a field value
                raise Broken(f"CR, LF or NUL in the value of {key}: {value[:60]!r}")
            headers[key] = value.strip(b" \t").decode("latin-1")
        if status >= 200:
            break
    closing = headers.get("connection", "").lower() == "close"
    if status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise Broken(f"bad chunk size {line[:40]!r}") from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            chunk = await reader.readexactly(size + 2)
            if chunk[-2:] != b"\r\n":
                raise Broken("chunk without CRLF")
            parts.append(chunk[:-2])
        body = b"".join(parts)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
        closing = True
    return Answer(status, headers, body), closing


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[Answer, bool]:
    """Sends while reading (a proxy may answer before reading the whole body)."""

    async def send() -> None:
        writer.write(data)
        await writer.drain()

    sender = asyncio.create_task(send())
    try:
        answer, closing = await asyncio.wait_for(read_answer(reader), PER_REQUEST)
        return answer, closing or not sender.done()
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sender


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


async def run_connection(port: int, reqs: list[Req]) -> list[tuple[Req, Answer | str]]:
    """The requests in turn on one connection (a new one when the server
    closed it); each gets an Answer or a string saying what went wrong."""
    out: list[tuple[Req, Answer | str]] = []
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    reused = False
    for n, req in enumerate(reqs):
        last = n == len(reqs) - 1
        result: Answer | str = "not sent"
        t0 = time.monotonic()
        for attempt in (0, 1):
            if conn is None:
                try:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port, limit=1 << 22), PER_REQUEST
                    )
                except (OSError, TimeoutError) as e:
                    result = f"connect: {e!r}"
                    break
                reused = False
            reader, writer = conn
            try:
                answer, closing = await _exchange(reader, writer, req.data(close=last))
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                _close(writer)
                conn = None
                if attempt == 0 and reused and not getattr(e, "partial", b"x"):
                    continue  # the server had closed the idle connection: once more
                result = f"no complete answer: {e!r}"[:300]
                break
            except TimeoutError:
                _close(writer)
                conn = None
                result = f"no answer within {PER_REQUEST:g} s"
                break
            except (OSError, Broken, ValueError) as e:
                _close(writer)
                conn = None
                result = f"{type(e).__name__}: {e}"[:300]
                break
            result = answer
            if closing or last:
                # nothing may follow the response on a closing connection (our
                # FIN ends the proxy's delayed close at once)
                with contextlib.suppress(TimeoutError, OSError):
                    writer.write_eof()
                    rest = await asyncio.wait_for(reader.read(), 2)
                    if rest:
                        result = f"{len(rest)} bytes after the response: {rest[:80]!r}"
                _close(writer)
                conn = None
            else:
                reused = True
            break
        req.took = time.monotonic() - t0
        out.append((req, result))
    if conn is not None:
        _close(conn[1])
    return out


async def _fire(
    port: int, plans: list[list[Req]], budget: float = 3600.0
) -> list[tuple[Req, Answer | str]]:
    sem = asyncio.Semaphore(IN_FLIGHT)
    deadline = time.monotonic() + budget

    async def go(plan: list[Req]) -> list[tuple[Req, Answer | str]]:
        async with sem:
            if time.monotonic() > deadline:
                return []  # out of time: not sent (the run says how many were)
            return await run_connection(port, plan)

    done = await asyncio.gather(*(go(p) for p in plans))
    return [r for rs in done for r in rs]


def fire(port: int, reqs: list[Req], rng: Random) -> list[tuple[Req, Answer | str]]:
    """Sends reqs concurrently, 1-3 requests per connection, in order; none is
    started after BUDGET seconds (a loaded machine sends fewer)."""
    plans: list[list[Req]] = []
    i = 0
    while i < len(reqs):
        k = 1 if rng.random() < 0.6 else rng.randint(2, 3)
        plans.append(reqs[i : i + k])
        i += k
    return asyncio.run(_fire(port, plans, BUDGET))


def one(port: int, req: Req) -> Answer | str:
    return asyncio.run(_fire(port, [[req]]))[0][1]


# ----------------------------------------------------------------- the inputs

TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
OBS = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100)) + b" \t"
# names that change the framing or the routing of the request are never random
FRAMING = {
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"host",
    b"expect",
    b"upgrade",
    b"te",
    b"keep-alive",
    b"proxy-connection",
    b"trailer",
    b"http2-settings",
    b"x-cluster",
}
NAMES = [
    b"cookie",
    b"authorization",
    b"x-forwarded-for",
    b"x-request-id",
    b"content-type",
    b"accept",
    b"user-agent",
    b"x-envoy-upstream-rq-timeout-ms",
    b"x-envoy-retry-on",
    b"grpc-timeout",
    b"x-fuzz-echo",
    b"range",
    b"origin",
    b"via",
    b"forwarded",
    b"x-envoy-original-path",
    b"accept-encoding",
    b"x-forwarded-proto",
    b"x-aioresty-rc",
    b"x-aioresty-error",
]
INVALID = [
    (b"x-bad", b"a\x00b"),
    (b"x bad", b"1"),
    (b"x-bad", b"a\rb"),
    (b"x-bad\x7f", b"1"),
    (b"", b"x"),
    (b"x-bad", b"a\x01b"),
]
RESERVED = ["__unload", "key", "finished", "handle", "tq"]
SPECIAL = [
    "",
    "/",
    "..",
    "__filter_request",
    "__filter_response",
    "__filter_info",
    "__filter_",
    "__init__",
    "__index",
    "__call",
    "__gc",
    "__newindex",
    "echo\x00",
    "echo\x00zzz",
    "\x00",
    "echo ",
    " echo",
    "ECHO",
    "echo\r\nx-injected: 1",
    "echo?x=1",
    "echo#x",
    "echo/../echo",
    "echo%00",
    "\u00e9cho",
    "\xff\xfe",
    "\u202eohce",
    "a" * 127,
    "a" * 128,
    "e" * 200,
]
SPLIT = [
    b"a\r\nx-injected: 1\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    b"a\nx-injected: 1\n\n",
    b"a\rx-injected: 1",
    b"a\x00x-injected: 1",
]
NUMBERS = ["1", "0", "-5", "0.5", "nan", "inf", "1e999", "abc", "30000", "5", "2", ""]


def method_name(rng: Random) -> bytes:
    r = rng.random()
    if r < 0.2:
        return rng.choice(HANDLERS).encode()
    if r < 0.35:
        return rng.choice(HANDLERS).encode() + rng.randbytes(rng.randint(1, 8))
    if r < 0.45:
        name = rng.choice(RESERVED)
        return (name + rng.choice(["", "", "\x00", " ", "x", "\u00e9"])).encode()
    if r < 0.6:
        return rng.choice(SPECIAL).encode("utf-8", "surrogatepass")
    if r < 0.85:
        return rng.randbytes(rng.choice([0, 1, 2, 5, 20, 100, 126, 127, 128, 129, 200]))
    text = "".join(
        chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0x2FFF)]))
        for _ in range(rng.randint(1, 60))
    )
    return text.encode()


_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$'()*+,;:@")


def pct(data: bytes, rng: Random) -> bytes:
    """Percent-encodes data for a path segment; sometimes every byte."""
    every = rng.random() < 0.2
    out = bytearray()
    for b in data:
        if b in _SAFE and not every:
            out.append(b)
        else:
            out += (b"%%%02X" if rng.random() < 0.5 else b"%%%02x") % b
    return bytes(out)


def payload(rng: Random, name: bytes) -> bytes:
    r = rng.random()
    if name.startswith(b"__filter_") and r < 0.7:
        snap = [
            rng.choice([1, 2, 0, -1, "x", None, 2**40]),
            rng.choice([0, 1, -1, 2500, 10**9, 1e308, float("nan"), float("inf"), "x", None, [1]]),
            rng.choice(
                [
                    [],
                    [":path", "/x", "a", "b"],
                    ["", "x"],
                    ["a"],
                    [1, 2],
                    "str",
                    None,
                    [":status", "999"],
                    [":method", "GET", ":path", "/", "x", "y" * 500],
                ]
            ),
            rng.choice([None, b"", rng.randbytes(50), 5, "text"]),
        ]
        return bytes(msgpack.packb(snap[: rng.randint(0, 4)] if rng.random() < 0.2 else snap))
    if name == b"mecho" and r < 0.6:
        return bytes(
            msgpack.packb(rng.choice([{"a": [1.5, None, b"x"]}, [], "s" * 100, 2**63, -1]))
        )
    if name == b"jecho" and r < 0.6:
        return rng.choice([b'{"a": [1, 2.5, null]}', b"[]", b'"s"', b"1e999", b"{", b'"\\ud800"'])
    if r < 0.1:  # an answer that would split a response if a header carried it raw
        return rng.choice(SPLIT)
    if r < 0.3:
        return b""
    return rng.randbytes(rng.choice([1, 7, 100, 1000, 4096, 20000, 65536]))


def hvalue(rng: Random) -> bytes:
    n = rng.choice((0, 1, 2, 5, 10, 20, 40, 100, 500, 2000))
    r = rng.random()
    if r < 0.5:
        return bytes(rng.choices(range(0x20, 0x7F), k=n))
    if r < 0.8:
        return bytes(rng.choices(OBS, k=n))
    return "".join(chr(rng.randint(0xA0, 0x10FFF)) for _ in range(n // 4 + 1)).encode(
        "utf-8", "surrogatepass"
    )


def header_set(rng: Random, exclude: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    r = rng.random()
    count = (
        rng.randint(0, 8) if r < 0.7 else rng.randint(9, 60) if r < 0.95 else rng.randint(90, 130)
    )
    hs: list[tuple[bytes, bytes]] = []
    for _ in range(count):
        if rng.random() < 0.25:
            name = rng.choice(NAMES)
        elif hs and rng.random() < 0.1:
            name = rng.choice(hs)[0]  # a repeated name
        else:
            name = bytes(rng.choices(TCHAR, k=rng.randint(1, 40)))
        if name.lower() in FRAMING or name.lower() in exclude:
            continue
        hs.append((name, hvalue(rng)))
    if rng.random() < 0.02:
        hs.append((b"x-long", b"a" * rng.randint(8000, 70000)))
    if rng.random() < 0.02:
        hs.append(rng.choice(INVALID))
    return hs


HTTP_METHODS = (
    [b"GET"] * 3 + [b"POST"] * 6 + [b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"FUZZ", b"get"]
)


def request(
    rng: Random,
    what: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
    host: bytes = b"fuzz",
    method: bytes | None = None,
    **kw: Any,
) -> Req:
    m = method or rng.choice(HTTP_METHODS)
    if body is None and m != b"GET":
        body = b""
    lines = [m + b" " + target + b" HTTP/1.1", b"host: " + host]
    lines += [k + b": " + v for k, v in headers]
    if body is not None:
        lines.append(b"content-length: %d" % len(body))
    short = f"{what} {m.decode('latin-1')} {target[:120]!r} headers={len(headers)}"
    return Req(f"{short} body={len(body or b'')}", b"\r\n".join(lines), body or b"", **kw)


def call_request(rng: Random, big: bool = False) -> Req:
    """A fuzzcall.lua call: /f/<name>?how=&t=&lib=&rh=."""
    name = rng.choice([b"echo", b"double", b"jecho"]) if big else method_name(rng)
    lib = "c" if rng.random() < 0.15 else "py"
    how = rng.choices([b"call", b"index", b"bare", pct(rng.randbytes(4), rng)], [60, 25, 7, 8])
    q = [b"how=" + how[0]]
    if rng.random() < 0.3:
        q.append(b"t=" + rng.choice(NUMBERS).encode())
    if lib == "c":
        q.append(b"lib=c")
    if rng.random() < 0.15:
        q.append(b"rh=1")
    if rng.random() < 0.05:
        q.append(pct(rng.randbytes(rng.randint(1, 30)), rng))
    rng.shuffle(q)
    target = b"/f/" + pct(name, rng) + b"?" + b"&".join(q)
    if rng.random() < 0.04:
        target = b"http://fuzz" + target  # absolute form
    if big:
        body: bytes | None = rng.randbytes(rng.randint(1 << 20, 4 << 20))
    else:
        body = payload(rng, name) if rng.random() < 0.9 else None
    hs = header_set(rng)
    return request(
        rng, f"call {name[:60]!r}", target, hs, body, lib=lib, method=b"POST" if big else None
    )


def app_calls_request(rng: Random) -> Req:
    """tests/envoy/scripts/app_calls.lua on the churn runtime: rt[method] with
    names it routes ([%w_]+), reserved ones included, and /unload."""
    if rng.random() < 0.15:
        target = b"/unload?cfg=" + CHURN.encode()
    else:
        r = rng.random()
        if r < 0.3:
            name = rng.choice(HANDLERS)
        elif r < 0.5:
            name = rng.choice([*RESERVED, "sleep", "__filter_info", "__filter_request"])
        else:
            alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
            name = "".join(rng.choices(alnum, k=rng.choice([1, 5, 20, 127, 128, 200])))
        q = [b"cfg=" + CHURN.encode()]
        if rng.random() < 0.3:
            q.append(b"t=" + rng.choice(NUMBERS).encode())
        if rng.random() < 0.05:
            q.append(b"mq=" + rng.choice(NUMBERS).encode())
        target = b"/py/" + name.encode() + b"?" + b"&".join(q)
    return request(rng, "app_calls", target, header_set(rng), payload(rng, b"x"), method=b"POST")


def lua_requests(rng: Random, n: int, with_app_calls: bool) -> list[Req]:
    out = [call_request(rng, big=True) for _ in range(2)]
    for _ in range(n):
        r = rng.random()
        if with_app_calls and r < 0.12:
            out.append(app_calls_request(rng))
        elif r < 0.97:
            out.append(call_request(rng))
        else:  # a path the script does not know
            target = b"/" + pct(rng.randbytes(rng.randint(0, 40)), rng)
            out.append(request(rng, "junk", target, header_set(rng), None))
    return out


def authority(rng: Random) -> bytes:
    """A forged bridge :authority (Host): never this process's id.secret."""
    hexd = b"0123456789abcdef"
    r = rng.random()
    ident = str(rng.choice([0, 1, 2, 3, 4, 7, 4096, 2**63, 2**64, 10**30])).encode()
    if r < 0.15:
        return bytes(rng.choices(b"0123456789", k=rng.randint(1, 30)))
    if r < 0.4:
        k = rng.choice([0, 1, 16, 31, 32, 32, 32, 33, 64])
        sec = bytes(rng.choices(hexd, k=k))
        return ident + b"." + (sec.upper() if rng.random() < 0.2 else sec)
    if r < 0.5:
        return rng.choice(
            [
                b".",
                b"..",
                b"1.",
                b".abc",
                b"-1." + b"a" * 32,
                b"0x10.a",
                b"1e5.a",
                b" 1." + b"a" * 32,
                b"1 ." + b"a" * 32,
                b"1.." + b"a" * 32,
                b"[::1]",
                b"u@1.a",
                b"1.aa:80",
                b"1." + b"a" * 32 + b":80",
                "\uff11.".encode() + b"a" * 32,
                b"1." + b"a" * 32 + b".",
            ]
        )
    if r < 0.6:
        return (
            ident
            + b"."
            + bytes(rng.choices(b"0123456789abcdefABCDEFghxyz.-", k=rng.randint(0, 200)))
        )
    if r < 0.9:
        return bytes(rng.choices(OBS, k=rng.randint(1, 100))).strip(b" \t") or b"x"
    return bytes(rng.choices(OBS, k=rng.randint(1000, 9000))).strip(b" \t") or b"x"


def bridge_request(rng: Random) -> Req:
    name = method_name(rng)
    target = b"/" + pct(name, rng)
    cluster = (
        b"aioresty_bridge"
        if rng.random() < 0.9
        else rng.choice(
            [b"aioresty_bridge_sink", b"nope", b"AIORESTY_BRIDGE", bytes(rng.choices(TCHAR, k=10))]
        )
    )
    host = authority(rng)
    if rng.random() < 0.05:
        target = b"http://" + host + target  # the authority in the request target
    hs = [(b"x-cluster", cluster), *header_set(rng, frozenset({b"content-type"}))]
    return request(
        rng,
        f"bridge {host[:80]!r}",
        target,
        hs,
        payload(rng, name),
        host=host,
        bridge=cluster == b"aioresty_bridge",
    )


# ----------------------------------------------------------------- the checks

CRASH = re.compile(
    r"Segmentation fault|signal 11|SIGSEGV|SIGABRT|SIGBUS|Caught [A-Z][a-z]+ |Backtrace|"
    r"Fatal Python error|Traceback \(most recent call last\)|Exception in callback|"
    r"Task exception was never retrieved|Task was destroyed|exited on signal|panic:|"
    r"assert failure|^\[C\] |\[crit\]|\[alert\]|\[emerg\]"
)


# A handler's (or filter hook's) exception: the runtime answers the call (rc 1)
# and logs it, its traceback under a line of its logger naming the call.
HANDLER_ERROR = re.compile(r"aioresty\.runtime \[[^\]]+\]: .*\b(call|handler) '")


def crash_lines(log: str) -> list[str]:
    """Log lines that say crash; a traceback counts unless the runtime logged
    it for a handler's exception."""
    lines = log.splitlines()
    bad = []
    for i, ln in enumerate(lines):
        if not CRASH.search(ln):
            continue
        if ln.startswith("Traceback") and i and HANDLER_ERROR.search(lines[i - 1]):
            continue
        bad.append(ln[:300])
    return bad


def _kind(what: str) -> str:
    """The kind of a problem, to group them: its words before the details."""
    return re.split(r"[:({]", re.sub(r"\d+", "N", what), maxsplit=1)[0].strip() or what[:40]


def problems(results: list[tuple[Req, Answer | str]]) -> list[tuple[str, str]]:
    """(kind, description) of unanswered requests, broken answers, forged
    bridge calls that reached a runtime, and fuzzcall.lua runtimes whose id
    changed (unloaded by some request)."""
    bad = []
    ids: dict[tuple[str, str], set[str]] = {}
    for req, ans in results:
        if isinstance(ans, str):
            bad.append((_kind(ans), f"{req.what}: {ans}"))
            continue
        if "x-injected" in ans.headers:  # only a payload (SPLIT) has it: a split response
            bad.append(("response splitting", f"{req.what}: {ans.headers}"))
        if req.bridge and ans.status == 200:
            bad.append(("a forged bridge call answered 200", f"{req.what}: {ans.headers}"))
        if req.lib and "x-rt-id" in ans.headers:
            ids.setdefault((ans.headers.get("x-worker", ""), req.lib), set()).add(
                ans.headers["x-rt-id"]
            )
    for (worker, lib), seen in sorted(ids.items()):
        if len(seen) != 1 or "closed" in seen:
            bad.append(("runtime unloaded", f"{lib} (worker {worker or '-'}): ids seen {seen}"))
    return bad


def verdict(
    mode: str, results: list[tuple[Req, Answer | str]], planned: int, log: str, elapsed: float
) -> None:
    bad = problems(results)
    crashes = crash_lines(log)
    statuses: dict[str, dict[int, int]] = {}  # per kind of request
    for r, a in results:
        if isinstance(a, Answer):
            per = statuses.setdefault(r.what.split(" ", 1)[0], {})
            per[a.status] = per.get(a.status, 0) + 1
    print(
        f"fuzz {mode}: seed {SEED}, {len(results)} requests ({planned} planned) in {elapsed:.1f}s,"
        f" statuses {statuses}"
    )
    kinds: dict[str, list[str]] = {}
    for kind, text in bad:
        kinds.setdefault(kind, []).append(text)
    report = [
        f"{len(texts)} x {kind}:\n" + "\n".join("    " + t[:400] for t in texts[:3])
        for kind, texts in sorted(kinds.items(), key=lambda kv: -len(kv[1]))
    ]
    assert not bad and not crashes, (
        f"fuzz {mode} failed (AIORESTY_FUZZ_SEED={SEED}): {len(bad)} problems in"
        f" {len(results)} requests\n"
        + "\n".join(report)
        + ("\nlog:\n" + "\n".join(crashes[:40]) if crashes else "")
    )


def echo_works(port: int, rng: Random, path: bytes = b"/f/echo", **kw: Any) -> Answer:
    data = rng.randbytes(3000)
    ans = one(port, request(rng, "echo", path, [], data, method=b"POST", **kw))
    assert isinstance(ans, Answer) and (ans.status, ans.body) == (200, data), (
        f"AIORESTY_FUZZ_SEED={SEED}: a normal echo after the fuzz: {ans!r:.500}"
    )
    return ans


# ----------------------------------------------------------------- the modes

_ENVOY_SCRIPT = """
local fuzz = dofile(%s)
local STOCK = %s
function envoy_on_request(h)
    -- a headers object is valid until the coroutine yields (body(), a call)
    local hdrs = h:headers()
    local n = 0
    for _, _ in pairs(hdrs) do n = n + 1 end
    local path, echo = hdrs:get(":path"), hdrs:get("x-fuzz-echo")
    local req = ""
    local body = h:body()
    if body and body:length() > 0 then req = body:getBytes(0, body:length()) end
    local status, hs, out = fuzz.run(path, req, h)
    if hs["x-res"] and STOCK then
        -- Envoy's own respond() writes header values as given (CR/LF/NUL too):
        -- that is the stock filter's, not aioresty's; keep it out
        hs["x-res"] = hs["x-res"]:gsub("%%c", "?")
    end
    hs[":status"] = tostring(status)
    hs["x-headers"] = tostring(n)
    if echo then hs["x-echo"] = echo end
    h:respond(hs, out)
end
"""


def _envoy_user(mode: str) -> dict[str, Any]:
    return {
        "script_mode": mode,
        "lua": {
            "fuzz": {
                "inline": _ENVOY_SCRIPT % (json.dumps(str(FUZZCALL)), str(mode == "bridge").lower())
            },
            "calls": str(APP_CALLS),
        },
        "routes": [
            {"prefix": "/py/", "lua": "calls"},
            {"prefix": "/unload", "lua": "calls"},
            {"prefix": "/", "lua": "fuzz"},
        ],
    }


def _client_picks_cluster(config: dict[str, Any]) -> None:
    """The user route of test_bridge_trust.py: the cluster from x-cluster."""
    routes = hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    match = {"prefix": "/", "headers": [{"name": "x-cluster", "present_match": True}]}
    routes.insert(0, {"match": match, "route": {"cluster_header": "x-cluster"}})


def _fuzz_lua_envoy(env: Any, rng: Random, mode: str, n: int, n_bridge: int) -> None:
    t0 = time.monotonic()
    base = one(env.port, request(rng, "id", b"/id", [], None, method=b"GET"))
    assert isinstance(base, Answer) and base.status == 200, base
    reqs = lua_requests(rng, n, with_app_calls=True)
    reqs += [bridge_request(rng) for _ in range(n_bridge)]
    rng.shuffle(reqs)
    results = fire(env.port, reqs, rng)
    assert env.proc.poll() is None, f"AIORESTY_FUZZ_SEED={SEED}: envoy died:\n{env.log()[-3000:]}"
    # the same runtimes still serve (ids as before the fuzz), the churn one reloads
    after = one(env.port, request(rng, "id", b"/id", [], None, method=b"GET"))
    assert isinstance(after, Answer) and after.body == base.body, (base, after)
    for lib in ("py", "c"):
        path = b"/f/echo" + (b"?lib=c" if lib == "c" else b"")
        results.append((Req("echo", b""), echo_works(env.port, rng, path, lib=lib)))
    echo_works(env.port, rng, b"/py/echo?cfg=" + CHURN.encode())
    verdict(mode, results, len(reqs), env.log(), time.monotonic() - t0)
    if n_bridge:
        refused = [ln for ln in env.log().splitlines() if "bridge refused" in ln]
        assert 1 <= len(refused) <= time.monotonic() - t0 + 2, refused  # at most one a second
    assert env.terminate() == 0, env.log()[-3000:]


def test_fuzz_envoy_stock_lua_and_bridge(lua_mode_factory: Any) -> None:
    rng = Random(f"{SEED}:stock")
    env = lua_mode_factory(_envoy_user("bridge"), [], mutate=_client_picks_cluster, concurrency=2)
    _fuzz_lua_envoy(env, rng, "bridge", n=N_CALLS, n_bridge=N_BRIDGE)


def test_fuzz_envoy_lua_mode(lua_mode_factory: Any) -> None:
    rng = Random(f"{SEED}:lua_mode")
    env = lua_mode_factory(_envoy_user("lua"), [], concurrency=2)
    _fuzz_lua_envoy(env, rng, "lua_mode", n=N_CALLS + N_BRIDGE, n_bridge=0)


_NGINX_SERVER = """
location / {
    content_by_lua_block {
        local fuzz = require "fuzzcall"
        local h = ngx.req.get_headers(200)
        local n = 0
        for _, _ in pairs(h) do n = n + 1 end
        local status, hs, out = fuzz.run(ngx.var.request_uri, require("ngxtest").body(), nil)
        ngx.status = status
        for k, v in pairs(hs) do ngx.header[k] = v end
        ngx.header["X-Worker"] = tostring(ngx.worker.pid())
        ngx.header["X-Headers"] = tostring(n)
        if type(h["x-fuzz-echo"]) == "string" then ngx.header["X-Echo"] = h["x-fuzz-echo"] end
        ngx.print(out)
    }
}
"""


def test_fuzz_nginx(nginx: Any) -> None:
    rng = Random(f"{SEED}:nginx")
    t0 = time.monotonic()
    nginx.write_conf(
        _NGINX_SERVER, init=f"package.loaded.fuzzcall = dofile({json.dumps(str(FUZZCALL))})"
    )
    nginx.start()
    workers = nginx.workers()
    reqs = lua_requests(rng, N_CALLS + N_BRIDGE, with_app_calls=False)
    results = fire(nginx.port, reqs, rng)
    assert nginx.proc.poll() is None, f"AIORESTY_FUZZ_SEED={SEED}: nginx died"
    assert nginx.workers() == workers, (
        f"AIORESTY_FUZZ_SEED={SEED}: a worker died: {nginx.log()[-3000:]}"
    )
    for _ in range(4):
        for lib in ("py", "c"):
            path = b"/f/echo" + (b"?lib=c" if lib == "c" else b"")
            results.append((Req("echo", b""), echo_works(nginx.port, rng, path, lib=lib)))
    verdict("nginx", results, len(reqs), nginx.log() + nginx.output(), time.monotonic() - t0)


# --- the Python filter


# tests/apps/fuzzfilter.py's operations
OPS = (
    "copy del set add many unicode surrogate path status body empty reply sleep raise return"
).split()


def _arg_value(rng: Random, kind: str) -> bytes:
    pick = {
        "name": [
            b"x-n",
            b"X-Up",
            b"x y",
            "\u00e9".encode(),
            b"content-length",
            b"host",
            b"transfer-encoding",
            b":path",
            b":status",
            b"x-n\t",
            b"a" * 300,
            b"te",
            b"connection",
            b"x-envoy-original-path",
            b"content-type",
        ],
        "path": [
            b"/",
            b"/a b",
            b"/a%20b",
            b"/off/x",
            b"/open/x",
            b"//",
            b"/..",
            b"/#x",
            b"/a?b=c",
            "/\u00e9".encode(),
            b"/" + b"a" * 5000,
            b"x",
            b"/a\tb",
        ],
        "status": [
            b"200",
            b"204",
            b"304",
            b"404",
            b"599",
            b"600",
            b"100",
            b"abc",
            b"-1",
            b"302",
            b"201",
        ],
        "count": [b"0", b"10", b"150", b"399", b"x"],
    }[kind]
    if kind in ("name", "path") and rng.random() < 0.3:
        return bytes(rng.choices(OBS, k=rng.randint(1, 30))).strip(b" \t") or b"x"
    return rng.choice(pick)


def filter_request(rng: Random, big: bool = False) -> Req:
    prefix = rng.choice([b"/", b"/open/", b"/off/", b"/echo/", b"/big", b"/created", b"/teapot"])
    target = prefix + pct(rng.randbytes(rng.randint(0, 30)), rng)
    if rng.random() < 0.5:
        target += b"?" + pct(rng.randbytes(rng.randint(0, 60)), rng).replace(b"%3D", b"=")
    hs = header_set(rng)
    for hdr, kind in (
        (b"x-fuzz-name", "name"),
        (b"x-fuzz-path", "path"),
        (b"x-fuzz-status", "status"),
        (b"x-fuzz-count", "count"),
    ):
        if rng.random() < 0.5:
            hs.append((hdr, _arg_value(rng, kind)))
    if rng.random() < 0.5:
        hs.append((b"x-fuzz-value", hvalue(rng) or b"v"))
    for hdr in (b"x-fuzz-op", b"x-fuzz-rop"):
        if rng.random() < 0.7:
            ops = rng.choices(OPS, k=rng.randint(1, 3))
            if rng.random() < 0.01:
                ops.append("slow")
            hs.append((hdr, ",".join(ops).encode()))
    rng.shuffle(hs)
    if big:
        body: bytes | None = rng.randbytes(rng.randint(1 << 20, 2 << 20))
    else:
        body = rng.randbytes(rng.choice([0, 1, 100, 5000, 65536])) if rng.random() < 0.6 else None
    return request(rng, "filter", target, hs, body, method=b"POST" if big else None)


def test_fuzz_envoy_python_filter(tmp_path: Path) -> None:
    rng = Random(f"{SEED}:filter")
    t0 = time.monotonic()
    upstream = Upstream()
    routes = [
        {"prefix": "/open/", "app": FILTER_APP, "fail_open": True},
        {"prefix": "/off/", "disabled": True},
    ]
    env = FilterEnvoy(
        tmp_path, upstream.port, concurrency=2, app=FILTER_APP, routes=routes, timeout=1.0
    )
    try:
        env.start()
        reqs = [filter_request(rng, big=True) for _ in range(2)]
        reqs += [filter_request(rng) for _ in range(N_FILTER)]
        results = fire(env.port, reqs, rng)
        assert env.proc is not None and env.proc.poll() is None, (
            f"AIORESTY_FUZZ_SEED={SEED}: envoy died:\n{env.log()[-3000:]}"
        )
        data = rng.randbytes(2000)
        ans = one(
            env.port,
            request(rng, "ok", b"/echo/ok", [(b"x-fuzz-op", b"body")], data, method=b"POST"),
        )
        assert isinstance(ans, Answer) and ans.status == 200, ans
        seen = json.loads(ans.body)
        assert seen["body"].encode("latin-1") == data[::-1] + b"!", seen
        verdict("filter", results, len(reqs), env.log(), time.monotonic() - t0)
    finally:
        rc = env.stop()
        upstream.stop()
    assert rc == 0, env.log()[-3000:]
