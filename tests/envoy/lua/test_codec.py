"""The codecs from aioresty's Envoy lua mode (tests/codec_cases.py, the
bridge's lua/codec.lua): its private LuaJIT has no JSON library and must not
load C modules such as cjson.so (they bind to Envoy's LuaJIT), so JSON goes
as a plain string; a Lua table goes through msgpack or JSON text built by
the script."""

from __future__ import annotations

import pytest

from tests import codec_cases
from tests.envoy.lua.conftest import REPO, direct_user, lua_mode_filter

CODEC = REPO / "tests" / "envoy" / "scripts" / "codec.lua"


@pytest.fixture
def codec(lua_mode_factory):
    return lua_mode_factory(direct_user(), [lua_mode_filter(filename=CODEC)])


def test_json_plain_string_and_undecodable(codec):
    codec_cases.check_json_string_and_bad(codec)
    # the script does not try cjson here
    status, _, body = codec.request("GET", "/json/table")
    assert status == 501 and body.startswith(b"no cjson"), body


def test_msgpack_and_bytes(codec):
    codec_cases.check_msgpack_and_bytes(codec)
