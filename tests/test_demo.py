"""The README's demo commands, as a newcomer runs them (smoke tests)."""

from __future__ import annotations

import subprocess
import sys

from tests.democheck import run_demo_check
from tests.hostlib import ROOT


def test_envoy_demo_check() -> None:
    """make demo's program: the seed block + the app through real Envoy, checked."""
    run_demo_check(sys.executable, ROOT, timeout=120)


def test_envoy_demo_check_lua_mode() -> None:
    """make demo-lua-mode's program: the same seed block and app, unchanged, in aioresty's
    LuaJIT filter inside the dynamic module (script_mode = "lua")."""
    run_demo_check(sys.executable, ROOT, None, "--script-mode", "lua", timeout=120)


def test_host_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "examples/demo_host.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "greet('envoy') -> rc=0 'hello, envoy, from async Python'" in proc.stdout
    assert proc.stdout.rstrip().endswith("exit tasks=0 queues=0")
