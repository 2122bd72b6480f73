"""Filter apps used by tests/envoy/python (loaded inside Envoy by the module)."""

from __future__ import annotations

import asyncio
import sys

import aioresty
from aioresty import FilterRequest, FilterResponse, Response

app = aioresty.App()


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def _hygiene(req: FilterRequest, case: str) -> None:
    """What a client-influenced hook might try to send on (issue 11, point 4)."""
    if case == "tab-name":
        req.headers["x\ty"] = "1"
    elif case == "paren-name":
        req.headers["x(y"] = "1"
    elif case == "utf8-name":
        req.headers["é"] = "1"
    elif case == "ctl-value":
        req.headers["x-v"] = "a\x01b"
    elif case == "del-value":
        req.headers["x-v"] = "a\x7fb"
    elif case == "tab-path":
        req.path = "/a\tb"
    elif case == "continue":
        raise aioresty.HandlerError("unused")
    elif case == "status-100":
        aioresty.Response(100)
    elif case == "content-length":  # would let the upstream read a shorter request
        req.headers["content-length"] = "1"
    elif case == "transfer-encoding":
        req.headers.add("transfer-encoding", "chunked")


def _note(msg: str) -> None:
    print(f"[filterapp] {msg}", file=sys.stderr, flush=True)


@app.on_request(body=True)
async def auth(req: FilterRequest) -> Response | None:
    path = req.path
    if "/sleep/" in path:
        secs, xid = float(path.rsplit("/", 1)[1]), req.headers.get("x-id")
        if xid:
            _note(f"sleep {secs} started id={xid}")
        try:
            await asyncio.sleep(secs)
        except asyncio.CancelledError:
            _note(f"sleep {secs} cancelled id={xid}")
            raise
    if "/boom" in path:
        raise RuntimeError("boom from the filter")
    if "/unprintable" in path:
        raise Unprintable()
    if path.startswith("/hygiene/"):
        _hygiene(req, path.rsplit("/", 1)[1])
    if path.startswith("/status/"):
        return Response(int(path.rsplit("/", 1)[1]))
    if "/surrogate" in path:
        return Response(403, "no \udcff way")  # a body str that is not UTF-8
    if req.headers.get("authorization") != "Bearer ok":
        return Response(401, b"denied", headers={"www-authenticate": "Bearer"})
    req.headers["x-user"] = "alice"
    if "x-remove-me" in req.headers:
        del req.headers["x-remove-me"]
    req.headers.add("x-multi", "one")
    req.headers.add("x-multi", "two")
    if "x-id" in req.headers:
        await asyncio.sleep(0.01)
        req.headers["x-echo-id"] = req.headers["x-id"] + "-seen"
    if path.startswith("/rewrite"):
        body = await req.body()
        req.set_body(body.upper() + b"!")
    if path.startswith("/newpath"):
        req.path = "/echo/rewritten"
    return None


@app.on_response
async def stamp(resp: FilterResponse) -> Response | None:
    resp.headers["x-served-by"] = "aioresty"
    resp.headers.pop("x-drop-me", None)
    if resp.headers.get("x-teapot"):
        return Response(418, "short and stout")
    if resp.status == 201:
        resp.status = 202
    return None


# an app that reads and rewrites response bodies
body_app = aioresty.App()


@body_app.on_response(body=True)
async def upper(resp: FilterResponse) -> None:
    data = await resp.body()
    resp.set_body(data.upper())
    resp.headers["x-body-len"] = str(len(data))


# an app whose own timeout bounds its hooks (the filter config gives none)
quick_app = aioresty.App(timeout=0.4)


@quick_app.on_request
async def slow(req: FilterRequest) -> None:
    if "/sleep/" in req.path:
        await asyncio.sleep(float(req.path.rsplit("/", 1)[1]))


# a pass-through app (benchmarks, the minimal cost)
passthrough = aioresty.App()


@passthrough.on_request
async def nothing(req: FilterRequest) -> None:
    return None


# the benchmark's auth filter (same logic as benchmarks/extproc_auth.py)
auth_app = aioresty.App()


@auth_app.on_request
async def check(req: FilterRequest) -> Response | None:
    if req.headers.get("authorization") != "Bearer ok":
        return Response(401, b"denied", headers={"www-authenticate": "Bearer"})
    req.headers["x-user"] = "alice"
    return None
