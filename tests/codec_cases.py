"""The three codecs from Lua, shared by the Envoy modes and nginx: scripts
tests/envoy/scripts/codec.lua and tests/nginx/lua/codec.lua, handlers in
tests/apps/codecapp.py.  Answers are "ok|res_or_rc|err"."""

from __future__ import annotations

import json
from typing import Any

import msgpack

from tests.bounded_cases import get


def post(proxy: Any, path: str, body: bytes) -> bytes:
    if hasattr(proxy, "admin_port"):
        status, _, out = proxy.request("POST", path, body=body)
    else:
        status, _, out = proxy.request(path, body=body)
    assert status == 200, (status, out)
    return out


def split(answer: str | bytes) -> tuple[str, str, str]:
    if isinstance(answer, bytes):
        answer = answer.decode("latin-1")
    ok, res, err = answer.split("|", 2)
    return ok, res, err


def check_json_table(proxy: Any) -> None:
    """A Lua table, cjson-encoded, arrives as a dict; the dict answer
    decodes back into a Lua table."""
    assert get(proxy, "/json/table") == "true|dict,alice,b,42,true|nil"


def check_json_string_and_bad(proxy: Any) -> None:
    ok, res, err = split(get(proxy, "/json/string"))
    assert (ok, err) == ("true", "nil")
    assert json.loads(res) == {
        "got": {"name": "alice", "tags": ["a", "b"], "n": 41},
        "kind": "dict",
    }
    ok, rc, _msg = split(get(proxy, "/json/bad"))
    assert (ok, rc) == ("false", "4")


def check_msgpack_and_bytes(proxy: Any) -> None:
    out = post(proxy, "/msgpack", msgpack.packb({"a": [1, 2]}))
    ok, _, err = split(out)
    res = out[len(b"true|") : -len(b"|nil")]
    assert (ok, err) == ("true", "nil") and msgpack.unpackb(res) == {
        "got": {"a": [1, 2]},
        "kind": "dict",
    }
    assert post(proxy, "/bytes", b"a\x00b") == b"true|3 bytes: a\x00b|nil"
