"""The README's demo commands, as a newcomer runs them (smoke tests)."""

from __future__ import annotations

import subprocess
import sys

from tests.democheck import check_demo_output
from tests.hostlib import ROOT
from tests.netutil import free_port


def test_envoy_demo_check() -> None:
    """make demo's program: the seed block + the app through real Envoy, checked."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aioresty.demo",
            "--check",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin",
            f"127.0.0.1:{free_port()}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hello, envoy, from async Python" in proc.stdout
    check_demo_output(proc.stdout)


def test_envoy_demo_check_module_mode() -> None:
    """make demo-luamod's program: the same seed block and app, unchanged, in aioresty's
    LuaJIT filter inside the dynamic module (lua_mode = "module")."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aioresty.demo",
            "--check",
            "--lua-mode",
            "module",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin",
            f"127.0.0.1:{free_port()}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hello, envoy, from async Python" in proc.stdout
    assert "msgpack -> {'sum': 42}" in proc.stdout
    check_demo_output(proc.stdout)


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
