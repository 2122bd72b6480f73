"""Real Envoy 1.40 running aioresty's Python filter in front of a local echo
upstream; every wait is bounded, everything listens on 127.0.0.1 only, the
processes are stopped by pid."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aioresty import envoy_config, envoy_python_mode
from tests.envoy.conftest import REPO, EnvoyProcess, build_dir, free_port

APP = "tests.envoy.python.filterapp:app"
BODY_APP = "tests.envoy.python.filterapp:body_app"
BODY_LIMIT = 64 * 1024


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with a JSON echo of what it received."""

    protocol_version = "HTTP/1.1"
    hits = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        self._echo()

    def do_POST(self) -> None:
        self._echo()

    def _echo(self) -> None:
        with _Echo.lock:
            _Echo.hits += 1
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        if "/big" in self.path:
            out = b"x" * 5000
        else:
            out = json.dumps(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                    "body": body.decode("latin-1"),
                }
            ).encode()
        self.send_response(201 if "/created" in self.path else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.send_header("x-drop-me", "1")
        if "/teapot" in self.path:
            self.send_header("x-teapot", "1")
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: hundreds of connections at once
    daemon_threads = True


class Upstream:
    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Echo)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> int:
        return _Echo.hits

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FilterEnvoy(EnvoyProcess):
    """Envoy running envoy_python_mode.build_filter_config (the python mode in
    front of ``upstream``)."""

    def __init__(self, tmp: Path, upstream: int, concurrency: int = 1, **kw: Any) -> None:
        port, admin_port = free_port(), free_port()
        cfg = envoy_python_mode.build_filter_config(
            kw.pop("app", APP),
            listen=f"127.0.0.1:{port}",
            upstream=f"127.0.0.1:{upstream}",
            admin=f"127.0.0.1:{admin_port}",
            **kw,
        )
        env = envoy_config.environment(lib_dir=build_dir(), python_path=[str(REPO)])
        env["AIORESTY_VENV"] = sys.prefix
        super().__init__(tmp, cfg, env, port, admin_port, concurrency)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self, timeout: float = 15.0) -> int | None:  # type: ignore[override]
        """SIGTERM by pid; the exit code (None if never started)."""
        if self.proc is None:
            return None
        return self.terminate(timeout)


ROUTES: list[dict[str, Any]] = [
    {"prefix": "/off/", "disabled": True},
    {"prefix": "/open/", "app": APP, "fail_open": True, "timeout": 0.3},
    {"prefix": "/t/", "app": APP, "timeout": 0.3},
    {"prefix": "/rb/", "app": BODY_APP, "body_limit": 4096},
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def envoy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilterEnvoy]:
    e = FilterEnvoy(
        tmp_path_factory.mktemp("envoy"), upstream.port, body_limit=BODY_LIMIT, routes=ROUTES
    )
    e.start()
    yield e
    rc = e.stop()
    assert rc == 0, f"envoy exit code {rc}"
