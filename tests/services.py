"""Real backing services for the integration suite (tests/integration): a
redis-server, a PostgreSQL cluster and a small HTTP upstream, each on a free
127.0.0.1 port in its own temporary directory.

Every start is bounded and fails at once with a message naming the component
(and the tail of its log); every process is stopped by its pid.  As root,
PostgreSQL (which refuses to run as root) runs as the `postgres` user (Debian's
package creates it), else as `nobody`, through `setpriv`, which execs, so the
pid we hold is the postmaster's.  The fixtures are session-scoped: one of each
for the whole run.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.netutil import free_port, wait_until

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _stop_pid(proc: subprocess.Popen[bytes], sig: int, timeout: float, what: str) -> None:
    """Signal by pid, wait `timeout`; SIGKILL and fail if it is still there."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        raise AssertionError(
            f"{what} (pid {proc.pid}) did not stop {timeout}s after {sig!r}"
        ) from None


# ---------------------------------------------------------------------------
# redis


class Redis:
    """`redis-server` in the foreground: no persistence, loopback only."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.exe = exe
        self.dir = Path(tempfile.mkdtemp(prefix="aioresty-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Redis:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                "",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"redis-server exited {self.proc.returncode}:\n{_tail(self.log_path)}"
                )
            return self.command(b"PING") == b"+PONG"

        try:
            wait_until(up, timeout, "redis-server to answer PING")
        except AssertionError as e:
            tail = _tail(self.log_path)
            self.stop()
            raise AssertionError(f"redis-server did not come up: {e}\n{tail}") from None
        return self

    def command(self, *args: bytes) -> bytes | None:
        """One RESP command on a fresh connection: the first reply line, None
        when nothing listens yet."""
        out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(out)
                return s.recv(65536).split(b"\r\n", 1)[0]
        except OSError:
            return None

    def log(self) -> str:
        return _tail(self.log_path, 1 << 20)

    def stop(self) -> None:
        try:
            if self.proc is not None:
                _stop_pid(self.proc, signal.SIGTERM, 10, "redis-server")
        finally:
            if getattr(self, "_log", None):
                self._log.close()
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# PostgreSQL


def pg_bin(name: str) -> str | None:
    for d in PG_BIN_DIRS:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which(name)


def _pg_user() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise AssertionError("postgres: running as root and neither 'postgres' nor 'nobody' exists")


class Postgres:
    """A throw-away cluster: initdb (trust auth, superuser `postgres`), then the
    postmaster in the foreground, TCP on 127.0.0.1 only, its unix socket in the
    temporary directory, durability off (test data)."""

    def __init__(self) -> None:
        self.initdb = pg_bin("initdb")
        self.postgres = pg_bin("postgres")
        self.psql_exe = pg_bin("psql")
        if not (self.initdb and self.postgres and self.psql_exe):
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        self.user = _pg_user()
        self.dir = Path(tempfile.mkdtemp(prefix="aioresty-pg-"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.sock.mkdir()
        if self.user is not None:
            for p in (self.dir, self.sock):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
            os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _as_user(self, cmd: list[str]) -> list[str]:
        if self.user is None:
            return cmd
        return [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--init-groups",
            "--",
            *cmd,
        ]

    def start(self, timeout: float = 30.0) -> Postgres:
        assert self.initdb and self.postgres
        try:
            r = subprocess.run(
                self._as_user(
                    [
                        self.initdb,
                        "-D",
                        str(self.data),
                        "-U",
                        "postgres",
                        "-A",
                        "trust",
                        "-E",
                        "UTF8",
                        "--locale=C",
                        "--no-sync",
                        "--no-instructions",
                    ]
                ),
                capture_output=True,
                timeout=90,
                cwd=self.dir,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError("postgres: initdb did not finish within 90s") from None
        if r.returncode != 0:
            raise AssertionError(
                f"postgres: initdb failed ({r.returncode}):\n{r.stdout.decode()}{r.stderr.decode()}"
            )
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self._as_user(
                [
                    self.postgres,
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.sock),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=100",
                    "-c",
                    "shared_buffers=32MB",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ]
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"postgres exited {self.proc.returncode}:\n{_tail(self.log_path)}"
                )
            try:
                return self.psql("SELECT 1", timeout=3) == [["1"]]
            except AssertionError:
                return False

        try:
            wait_until(up, timeout, "postgres to accept connections", interval=0.1)
        except AssertionError as e:
            tail = _tail(self.log_path)
            self.stop()
            raise AssertionError(f"postgres did not come up: {e}\n{tail}") from None
        return self

    def psql(self, sql: str, timeout: float = 10.0) -> list[list[str]]:
        """Rows of one statement (psql -At, '|' separated); AssertionError on failure."""
        assert self.psql_exe
        try:
            r = subprocess.run(
                [
                    self.psql_exe,
                    "-X",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    sql,
                ],
                capture_output=True,
                timeout=timeout,
                env={**os.environ, "PGCONNECT_TIMEOUT": "2"},
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"psql timed out after {timeout}s: {sql}") from None
        if r.returncode != 0:
            raise AssertionError(f"psql failed ({r.returncode}): {r.stderr.decode()}")
        return [line.split("|") for line in r.stdout.decode().splitlines()]

    def active_queries(self, tag: str) -> list[list[str]]:
        """(pid, state) of the other backends whose current query names `tag`
        and is still running."""
        return self.psql(
            "SELECT pid, state FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            f"AND state = 'active' AND query LIKE '%{tag}%'"
        )

    def cancelled_statements(self) -> list[str]:
        """Statements the server cancelled on a client's cancel request (the log's
        "canceling statement due to user request" + its STATEMENT line)."""
        out = []
        lines = self.log().splitlines()
        for i, line in enumerate(lines):
            if "canceling statement due to user request" in line:
                for nxt in lines[i + 1 : i + 3]:
                    if "STATEMENT:" in nxt:
                        out.append(nxt.split("STATEMENT:", 1)[1].strip())
                        break
        return out

    def log(self) -> str:
        return _tail(self.log_path, 1 << 20)

    def stop(self) -> None:
        try:
            if self.proc is not None:
                # SIGINT: "fast" shutdown (disconnects clients, no waiting for them)
                _stop_pid(self.proc, signal.SIGINT, 20, "postgres")
        finally:
            if getattr(self, "_log", None):
                self._log.close()
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# HTTP upstream


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with a JSON echo: method, path, headers (names
    lower-cased, one value each), body."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._echo()

    def do_POST(self) -> None:
        self._echo()

    def _echo(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.count(self.path)
        out = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("latin-1"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: hundreds of connections at once
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}

    def count(self, path: str) -> None:
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1


class HttpUpstream:
    """A threaded HTTP/1.1 (keep-alive) JSON echo server on a free port."""

    def __init__(self) -> None:
        self.server = _Server()
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def hits(self, prefix: str = "/") -> int:
        with self.server.lock:
            return sum(n for p, n in self.server.hits.items() if p.startswith(prefix))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    r = Redis().start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def http_upstream() -> Iterator[HttpUpstream]:
    u = HttpUpstream()
    yield u
    u.stop()


@pytest.fixture(scope="session")
def store_config(
    redis_server: Redis, postgres_server: Postgres, http_upstream: HttpUpstream
) -> dict[str, str]:
    """app.config of tests/apps/storeapp.py: where its clients connect."""
    return {
        "redis_url": redis_server.url,
        "pg_dsn": postgres_server.dsn,
        "http_url": http_upstream.url,
    }


def store_env(config: dict[str, str]) -> dict[str, str]:
    """The same addresses as environment variables: the fallback the filter app
    reads (its filter_config string carries no JSON) and what the Lua scripts
    read the cfg string from (AIORESTY_STORE_CFG)."""
    return {
        "AIORESTY_STORE_CFG": "tests.apps.storeapp:app " + json.dumps(config),
        "AIORESTY_TEST_REDIS_URL": config["redis_url"],
        "AIORESTY_TEST_PG_DSN": config["pg_dsn"],
        "AIORESTY_TEST_HTTP_URL": config["http_url"],
    }
