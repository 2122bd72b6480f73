"""`python -m aioresty.demo --check`, run and judged the way every test that needs it
does (the repository's venv, a fresh venv, an installed wheel)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.netutil import free_port


def check_demo_output(stdout: str) -> None:
    """What --check printed: the httpbin stand-in's JSON through the seed block,
    the app's two answers (the exit code says the demo judged them right)."""
    assert re.search(r'"url": "http://[^"]+/get"', stdout), stdout
    assert "hello, envoy, from async Python" in stdout
    assert "msgpack -> {'sum': 42}" in stdout


def run_demo_check(
    python: str | Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    *extra: str,
    timeout: float = 180,
) -> str:
    """Runs the demo's check with `python` on free ports; asserts it passed and what
    it printed; returns its stdout."""
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "aioresty.demo",
            "--check",
            *extra,
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin",
            f"127.0.0.1:{free_port()}",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_demo_output(proc.stdout)
    return proc.stdout
