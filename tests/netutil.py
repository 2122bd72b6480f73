"""Small helpers every integration test needs: loopback ports, bounded waits."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (nothing of ours listens elsewhere)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    pred: Callable[[], Any], timeout: float, what: str = "condition", interval: float = 0.05
) -> Any:
    """Poll pred() until it is truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1:port on a fresh connection: (status, headers, body),
    header names lower-cased."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def terminate(proc: subprocess.Popen[Any], timeout: float, what: str) -> int:
    """SIGTERM by pid and wait; a process still there after `timeout` is killed
    and the test fails (a hang at shutdown is a bug)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        raise AssertionError(f"{what} did not exit {timeout}s after SIGTERM") from None


def sigterm_with_requests_pending(env: Any, request: bytes, n: int) -> None:
    """Opens `n` connections that each send `request` (calls that stay pending),
    then SIGTERMs the proxy: it must exit 0 within 10 s (`env`: a test proxy
    with .port, .terminate(timeout) and .log())."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", env.port), timeout=5)
        s.sendall(request)
        socks.append(s)
    time.sleep(0.3)
    t0 = time.monotonic()
    rc = env.terminate(timeout=15)
    assert time.monotonic() - t0 < 10
    assert rc == 0, env.log()[-3000:]
    for s in socks:
        s.close()
