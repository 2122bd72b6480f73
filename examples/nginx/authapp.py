"""Example aioresty app for nginx: an auth decision and a content handler.

nginx.conf calls these from Lua with lua-resty-ffi's API:
    local app = ngx.load_ffi("aioresty", "authapp")
    local ok, user, err = app:authorize(token)      -- access_by_lua_block
    local ok, body, err = app:hello(user)           -- content_by_lua_block
"""

import asyncio
import json
import time

from aioresty import App, HandlerError

app = App(timeout=2.0)

# A stand-in for a token service or database: looked up asynchronously.
_TOKENS = {"secret-alice": "alice", "secret-bob": "bob"}
RC_DENIED = 10


@app.handler
async def authorize(req: bytes) -> str:
    """Bearer token -> user name; rc 10 (denied) otherwise."""
    token = req.decode(errors="replace").removeprefix("Bearer ").strip()
    await asyncio.sleep(0.001)  # e.g. an async call to the token service
    user = _TOKENS.get(token)
    if user is None:
        raise HandlerError("invalid or missing token", rc=RC_DENIED)
    return user


@app.handler
async def hello(req: bytes) -> str:
    return json.dumps({"hello": req.decode(), "at": time.time()})


@app.handler(codec="msgpack")
async def stats(req: object) -> dict:
    return {"users": len(_TOKENS)}
