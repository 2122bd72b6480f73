"""The three codecs from the stock Envoy Lua filter (tests/codec_cases.py;
lua/codec.lua): a Lua table round-trips through a codec="json" handler with
Debian's lua-cjson, which Envoy's LuaJIT loads through LUA_CPATH."""

from __future__ import annotations

import sys

import pytest

from tests import codec_cases
from tests.envoy.conftest import REPO

USER = {"lua": {"c": "scripts/codec.lua"}, "routes": [{"prefix": "/", "lua": "c"}]}
CJSON_CPATH = "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;"  # lua-cjson's directory


@pytest.fixture
def codec(envoy_factory):
    env = {"AIORESTY_VENV": sys.prefix, "LUA_CPATH": CJSON_CPATH}
    return envoy_factory(USER, env=env, python_path=[str(REPO)])


def test_json_table_round_trip_with_cjson(codec):
    codec_cases.check_json_table(codec)


def test_json_plain_string_and_undecodable(codec):
    codec_cases.check_json_string_and_bad(codec)


def test_msgpack_and_bytes(codec):
    codec_cases.check_msgpack_and_bytes(codec)
