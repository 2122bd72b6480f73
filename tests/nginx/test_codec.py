"""The three codecs from nginx Lua (tests/codec_cases.py; lua/codec.lua):
a Lua table round-trips through a codec="json" handler with lua-cjson."""

from __future__ import annotations

import pytest

from tests import codec_cases


@pytest.fixture
def codec(nginx):
    nginx.write_conf('location / { content_by_lua_block { require("codec").handle() } }', workers=1)
    nginx.start()
    yield nginx
    nginx.stop()
    assert nginx.bad_log_lines() == []


def test_json_table_round_trip_with_cjson(codec):
    codec_cases.check_json_table(codec)


def test_json_plain_string_and_undecodable(codec):
    codec_cases.check_json_string_and_bad(codec)


def test_msgpack_and_bytes(codec):
    codec_cases.check_msgpack_and_bytes(codec)
