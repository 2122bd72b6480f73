"""The fuzz tests' Envoy Python filter app (tests/fuzz, filter_name "python").

The hooks read everything a message has, then apply the operations the
client asked for: `x-fuzz-op` (request hook) and `x-fuzz-rop` (response hook,
read from the upstream's JSON echo of the request headers), comma-separated.
Operations take their arguments from the client's own headers, so a fuzzed
request drives every kind of change, valid or not (an invalid change is a hook
error: the failure policy answers).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aioresty
from aioresty import FilterRequest, FilterResponse, Headers, Response

app = aioresty.App(timeout=2.0)


def _look(headers: Headers) -> list[tuple[str, str]]:
    """Reads the headers every way the API offers."""
    pairs = headers.multi_items()
    for k, _ in pairs:
        assert k in headers and headers.getall(k) and headers.get(k) == headers[k]
    assert len(list(headers)) == len(headers)
    return pairs


async def _apply(
    msg: FilterRequest | FilterResponse, ops: list[str], args: Headers, pairs: list[tuple[str, str]]
) -> Response | None:
    body = await msg.body()
    for op in ops:
        if op == "copy":  # the client's values back to Envoy (obs-text round trip)
            for i, (_, v) in enumerate(pairs[:40]):
                if v:
                    msg.headers.add(f"x-c{i}", v)
        elif op == "del":
            for k, _ in pairs[:8]:
                msg.headers.pop(k, None)
        elif op == "set":  # name and value chosen by the client: may be invalid
            msg.headers[args.get("x-fuzz-name", "x-n")] = args.get("x-fuzz-value", "v")
        elif op == "add":
            msg.headers.add(args.get("x-fuzz-name", "x-n"), args.get("x-fuzz-value", "v"))
        elif op == "many":
            for i in range(int(args.get("x-fuzz-count", "150") or 0) % 400):
                msg.headers.add(f"x-m{i % 37}", "v" * (1 + i % 50))
        elif op == "unicode":
            msg.headers["x-u"] = "\u00e9\u202e\U0001f600"
        elif op == "surrogate":
            msg.headers["x-s"] = args.get("x-fuzz-value", "v") + "\udcff"
        elif op == "path" and isinstance(msg, FilterRequest):
            msg.path = args.get("x-fuzz-path", "/")
        elif op == "status" and isinstance(msg, FilterResponse):
            msg.status = int(args.get("x-fuzz-status", "200"))
        elif op == "body":
            msg.set_body(body[::-1] + b"!")
        elif op == "empty":
            msg.set_body(b"")
        elif op == "reply":
            st = int(args.get("x-fuzz-status", "200"))
            return Response(st, b"" if st in (204, 304) else body[:2000], headers=pairs[:50])
        elif op == "sleep":
            await asyncio.sleep(0.002)
        elif op == "slow":  # past the filter's timeout (1 s in tests/fuzz): the phase times out
            await asyncio.sleep(5)
        elif op == "raise":
            raise RuntimeError("fuzz: the hook raised")
        elif op == "return":
            return "not a Response"  # type: ignore[return-value]
    return None


@app.on_request(body=True)
async def on_request(req: FilterRequest) -> Response | None:
    _ = (req.method, req.path, req.authority, req.scheme, repr(req))
    pairs = _look(req.headers)
    ops = (req.headers.get("x-fuzz-op") or "").split(",")
    return await _apply(req, ops, req.headers, pairs)


@app.on_response(body=True)
async def on_response(resp: FilterResponse) -> Response | None:
    _ = (resp.status, repr(resp))
    pairs = _look(resp.headers)
    args = Headers()
    try:  # the upstream's echo: the request headers it saw
        echoed: Any = json.loads(await resp.body())
        for k, v in echoed["headers"]:
            if v:
                args.add(k, v)
    except (ValueError, KeyError, TypeError):
        return None
    ops = (args.get("x-fuzz-rop") or "").split(",")
    return await _apply(resp, ops, args, pairs)
