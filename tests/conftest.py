from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostlib import ROOT, Host, build_testhost
from tests.netutil import free_port, wait_until

# Lua helpers the proxies' test scripts dofile() (tests/envoy/scripts/runtime_object.lua)
os.environ.setdefault(
    "AIORESTY_TEST_LUA_DIR", str(Path(__file__).resolve().parent / "envoy" / "scripts")
)


@pytest.fixture(scope="session")
def testhost_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_testhost(tmp_path_factory.mktemp("testhost"))


@pytest.fixture
def host(testhost_exe: Path) -> Iterator[Host]:
    h = Host(testhost_exe)
    yield h
    last = h.close()
    assert last == "exit tasks=0 queues=0", f"leaked at exit: {last}\n{h.stderr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """With AIORESTY_NO_SKIP=1 (make test, CI) a skipped test fails: every
    dependency is installed there, so a skip would only hide a broken setup."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("AIORESTY_NO_SKIP") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped, but AIORESTY_NO_SKIP=1: {report.longrepr}"


@pytest.fixture
def httpbin() -> Iterator[str]:
    """The httpbin stand-in of the Envoy demo on a free port: "127.0.0.1:<port>"."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples/envoy/httpbin.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        wait_until(up, 10, "httpbin stand-in")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
