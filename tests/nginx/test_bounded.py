"""Every call is bounded on nginx: resty_ffi's default timeout bounds the
adapter's semaphore wait (tests/bounded_cases.py; routes in lua/bounded.lua)."""

from __future__ import annotations

import os

import pytest

from tests import bounded_cases
from tests.hostlib import build_slow_runtime

SERVER = """
location / {
    content_by_lua_block { require("bounded").handle() }
}
"""


@pytest.fixture
def bounded(nginx):
    # ffi_slow in the prefix: readable by the workers (nobody when run as root)
    lib = build_slow_runtime(nginx.prefix / "libffi_slow.so")
    os.chmod(lib, 0o755)
    nginx.extra_env["AIORESTY_LIB_PATH"] = str(nginx.prefix)
    nginx.write_conf(
        SERVER, main="env AIORESTY_LIB_PATH;", workers=1, init='require("bounded").init()'
    )
    nginx.start()
    yield nginx
    nginx.stop()
    assert nginx.bad_log_lines() == []


def test_default_timeout_constant(bounded):
    bounded_cases.check_default(bounded)


def test_blocked_python_loop_times_out_then_recovers(bounded):
    bounded_cases.check_blocked_loop(bounded)


def test_c_runtime_that_does_not_answer_is_bounded(bounded):
    bounded_cases.check_c_runtime(bounded)
