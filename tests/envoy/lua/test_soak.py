"""Lua memory stays flat under load in aioresty's "lua" mode (full GC before
each check).  The spec is a 60 s soak: AIORESTY_LUA_MODE_SOAK_SECONDS=60; the
default run is short."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.envoy.lua.conftest import HANDLE_API, direct_user, lua_mode_filter

SECONDS = float(os.environ.get("AIORESTY_LUA_MODE_SOAK_SECONDS", "6"))
CHECKS = 4


def lua_kb(env) -> float:
    status, _, body = env.request("GET", "/mem")
    assert status == 200
    return float(body)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk not installed")
def test_lua_memory_flat_under_load(lua_mode_factory):
    env = lua_mode_factory(direct_user(), [lua_mode_filter(filename=HANDLE_API)])
    url = f"http://127.0.0.1:{env.port}/two_calls"
    step = float(max(1, round(SECONDS / CHECKS)))

    def load(seconds: float) -> int:
        r = subprocess.run(
            ["wrk", "-t1", "-c16", f"-d{seconds:.0f}s", url],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        assert r.returncode == 0, r.stderr
        assert "Non-2xx" not in r.stdout, r.stdout
        return int(r.stdout.split(" requests in ")[0].split()[-1])

    load(1)  # warm-up: runtime, JIT traces, caches
    base, base_rss = lua_kb(env), rss_kb(env.proc.pid)
    samples, total = [], 0
    for _ in range(CHECKS):
        total += load(step)
        samples.append(lua_kb(env))
    rss = rss_kb(env.proc.pid)
    print(
        f"\nsoak {step * CHECKS:.0f}s, {total} requests (2 calls each): Lua heap after full GC "
        f"{base:.0f} KB -> {[round(s) for s in samples]} KB; Envoy RSS {base_rss} -> {rss} KB"
    )
    assert total > 1000
    assert max(samples) < base * 1.25 + 64, (base, samples)
    assert samples[-1] < base * 1.10 + 32, (base, samples)
