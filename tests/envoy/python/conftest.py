"""Real Envoy 1.40 running aioresty's Python filter in front of a local echo
upstream; every wait is bounded, everything listens on 127.0.0.1 only, the
processes are stopped by pid."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aioresty import envoy_config, envoy_python_mode
from tests.envoy.conftest import REPO, build_dir, envoy_binary, free_port, wait_until
from tests.netutil import http_request, terminate

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


class FilterEnvoy:
    """One Envoy process running envoy_python_mode.build_filter_config."""

    def __init__(self, tmp: Path, upstream: int, concurrency: int = 1, **kw: Any) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        cfg = envoy_python_mode.build_filter_config(
            kw.pop("app", APP),
            listen=f"127.0.0.1:{self.port}",
            upstream=f"127.0.0.1:{upstream}",
            admin=f"127.0.0.1:{self.admin_port}",
            **kw,
        )
        self.config_path = tmp / f"envoy-{self.port}.json"
        self.config_path.write_text(envoy_config.to_yaml(cfg))
        self.log_path = tmp / f"envoy-{self.port}.log"
        self.env = envoy_config.environment(lib_dir=build_dir(), python_path=[str(REPO)])
        self.env["AIORESTY_VENV"] = sys.prefix
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> FilterEnvoy:

        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(self.config_path),
                "--concurrency",
                str(self.concurrency),
                "--disable-hot-restart",
                "-l",
                "info",
                "--log-format",
                "[%L] %v",
            ],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.config_path.parent,
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited {self.proc.returncode}:\n{self.log()}")
            try:
                return http_request(self.admin_port, "GET", "/ready", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, "envoy /ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        try:
            return terminate(self.proc, timeout, "envoy")
        finally:
            self._log.close()


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
