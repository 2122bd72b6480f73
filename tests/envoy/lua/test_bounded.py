"""Every call is bounded in aioresty's Envoy lua mode: resty_ffi's default
timeout arms the module's timeout thread (native/envoy/timeouts.c)
(tests/bounded_cases.py, same script as the bridge's)."""

from __future__ import annotations

import pytest

from tests import bounded_cases
from tests.envoy.conftest import slow_runtime  # noqa: F401 (fixture)
from tests.envoy.lua.conftest import REPO, direct_user, lua_mode_filter

BOUNDED = REPO / "tests" / "envoy" / "scripts" / "bounded.lua"


@pytest.fixture
def bounded(lua_mode_factory, slow_runtime):  # noqa: F811
    return lua_mode_factory(direct_user(), [lua_mode_filter(filename=BOUNDED)])


def test_default_timeout_constant(bounded):
    bounded_cases.check_default(bounded)


def test_blocked_python_loop_times_out_then_recovers(bounded):
    bounded_cases.check_blocked_loop(bounded)


def test_c_runtime_that_does_not_answer_is_bounded(bounded):
    bounded_cases.check_c_runtime(bounded)
