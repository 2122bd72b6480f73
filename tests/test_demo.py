"""The README's demo commands, as a newcomer runs them (smoke tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.democheck import run_demo_check
from tests.hostlib import ROOT
from tests.netutil import free_port, http_request, wait_until


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


def test_demo_stops_once_on_repeated_signals() -> None:
    """`make demo` serves until stopped; a second SIGTERM (make and whoever stopped
    it both send one) or a second Ctrl-C must not interrupt the stopping: exit 0,
    no traceback, Envoy and the stand-in gone with it."""
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aioresty.demo",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def greeted() -> bool:
            try:
                status, _, body = http_request(port, "POST", "/app/greet", b"envoy", timeout=5)
            except OSError:
                return False
            return (status, body) == (200, b"hello, envoy, from async Python")

        wait_until(greeted, 60, "the demo's greet answer")
        # a 20 ms burst: signals land while it begins to stop (stopping Envoy takes longer)
        deadline = time.monotonic() + 0.02
        while time.monotonic() < deadline and proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    break
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert "demo: stopping" in err and "Traceback" not in err, err
    with pytest.raises(OSError):  # Envoy stopped with it
        http_request(port, "GET", "/app/greet", timeout=2)
