"""Every call is bounded on the stock Envoy Lua filter + bridge: resty_ffi's
default timeout becomes the httpCall's timeout_ms (tests/bounded_cases.py)."""

from __future__ import annotations

import sys

import pytest

from tests import bounded_cases
from tests.envoy.conftest import REPO

USER = {"lua": {"b": "scripts/bounded.lua"}, "routes": [{"prefix": "/", "lua": "b"}]}


@pytest.fixture
def bounded(envoy_factory, slow_runtime):
    return envoy_factory(USER, env={"AIORESTY_VENV": sys.prefix}, python_path=[str(REPO)])


def test_default_timeout_constant(bounded):
    bounded_cases.check_default(bounded)


def test_blocked_python_loop_times_out_then_recovers(bounded):
    bounded_cases.check_blocked_loop(bounded)


def test_c_runtime_that_does_not_answer_is_bounded(bounded):
    bounded_cases.check_c_runtime(bounded)
