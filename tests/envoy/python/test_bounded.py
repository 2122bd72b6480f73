"""The Python filter's phase is bounded by the module itself
(native/envoy/python/hooks.c + timeouts.c): a hook that blocks its runtime's
loop (time.sleep, tests/apps/stuckapp.py) cannot enforce `timeout=` from
Python, so the module's timer (timeout + 250 ms) applies the failure policy."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.envoy.conftest import wait_until
from tests.envoy.python.conftest import FilterEnvoy, Upstream
from tests.netutil import http_request

STUCK = "tests.apps.stuckapp:filter_app"


@pytest.fixture
def stuck(upstream: Upstream, tmp_path: Path) -> Iterator[FilterEnvoy]:
    e = FilterEnvoy(
        tmp_path,
        upstream.port,
        app=STUCK,
        timeout=0.5,
        routes=[{"prefix": "/open/", "app": STUCK, "fail_open": True, "timeout": 0.5}],
    )
    e.start()
    yield e
    assert e.stop() == 0, e.log()[-3000:]


def timed(env: FilterEnvoy, path: str) -> tuple[int, dict[str, str], bytes, float]:
    t0 = time.monotonic()
    status, h, body = http_request(env.port, "GET", path, timeout=15)
    return status, h, body, time.monotonic() - t0


def hook_ran(body: bytes) -> bool:
    return any(k == "x-hook" and v == "ran" for k, v in json.loads(body)["headers"])


def test_blocked_hook_fails_closed_then_open_then_recovers(stuck: FilterEnvoy) -> None:
    status, _, body, _ = timed(stuck, "/echo")
    assert status == 200 and hook_ran(body)
    # fail=closed: 500 timeout from the module, about 0.5 s + 0.25 s after the post
    status, h, _, dt = timed(stuck, "/block/3")
    assert status == 500 and h["x-aioresty-error"] == "timeout", (status, h)
    assert 0.6 < dt < 2.0, dt
    # fail=open, the loop still blocked: the request goes upstream unchanged
    status, _, body, dt = timed(stuck, "/open/echo")
    assert status == 200 and not hook_ran(body), body
    assert 0.6 < dt < 2.0, dt
    assert "no answer within 500 ms (+250 ms): timeout" in stuck.log()
    # the hook returned: the app filters again
    wait_until(
        lambda: (r := timed(stuck, "/echo"))[0] == 200 and hook_ran(r[2]), 10, "hooks run again"
    )
