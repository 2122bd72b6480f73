"""Fixtures for the integration tests against real stock nginx (Debian 12 packages).

Every test starts its own `nginx -g 'daemon off;'` (master as the current user,
workers as `nobody` when that user is root) in a private prefix, on free
127.0.0.1 ports, with the Debian dynamic modules loaded and lua_package_path set
to the repository's lua/ directory.  Python runtimes run in the workers from the
repository checkout (PYTHONPATH) in the venv given by AIORESTY_VENV / VIRTUAL_ENV
(else the interpreter running pytest).  Every wait is bounded.

The `nginx` fixture runs each test twice: "stock" (aioresty's wake socket, timer and
semaphores) and "accel" (with `load_module ngx_http_aioresty_accel_module.so`, the
optional accelerator, native/nginx/accel), which Nginx.start() adds after the lua
module's load_module line of whatever config the test wrote.  A test about one path
only takes that one: ``@pytest.mark.parametrize("nginx", ["stock"], indirect=True)``.
AIORESTY_NGINX_PATHS=stock (or accel) runs one of them only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from aioresty import paths
from tests import promtext
from tests.netutil import free_port, http_request, wait_until

REPO = Path(__file__).resolve().parents[2]
LUA_DIR = REPO / "lua"
TEST_LUA = Path(__file__).resolve().parent / "lua"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MODULES = Path("/usr/lib/nginx/modules")
RESTY_CORE = Path("/usr/share/lua/5.1")


def lib_dir() -> Path:
    """aioresty.paths.lib_dir()."""
    return paths.lib_dir()


ACCEL_MODULE = "ngx_http_aioresty_accel_module.so"
PATHS = ("stock", "accel")


def accel_module() -> Path:
    return lib_dir() / ACCEL_MODULE


def venv_dir() -> str:
    for var in ("AIORESTY_VENV", "VIRTUAL_ENV"):
        if os.environ.get(var):
            return os.environ[var]
    return sys.prefix if sys.prefix != sys.base_prefix else ""


def _missing() -> str | None:
    if not Path(NGINX).exists():
        return "nginx is not installed"
    for mod in ("ndk_http_module.so", "ngx_http_lua_module.so"):
        if not (MODULES / mod).is_file():
            return f"{MODULES / mod} missing (apt-get install libnginx-mod-http-lua)"
    if not (RESTY_CORE / "resty" / "core.lua").is_file():
        return "lua-resty-core is not installed"
    if not (lib_dir() / "libaioresty_nginx.so").is_file():
        return f"libaioresty_nginx.so not built in {lib_dir()}"
    return None


def children(pid: int) -> list[int]:
    """Pids whose parent is pid (nginx workers of a master)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces: the ppid is the 2nd field after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(d))
    return sorted(out)


def proc_user(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise LookupError(pid)


METRICS_LOCATION = (
    'location = /metrics { content_by_lua_block { require("aioresty.nginx").metrics() } }'
)


class Nginx:
    """One nginx instance in its own prefix."""

    def __init__(self, prefix: Path, port: int, accel: bool = False):
        self.prefix = prefix
        self.accel = accel  # load the accelerator module (see the module docstring)
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.sock_dir = prefix / "sock"
        self.sock_dir.mkdir(mode=0o1777)
        os.chmod(self.sock_dir, 0o1777)  # workers (nobody) create their private dirs here
        (prefix / "logs").mkdir()
        self.conf = prefix / "nginx.conf"
        self.extra_env: dict[str, str] = {}

    # -- configuration -------------------------------------------------
    def write_conf(
        self,
        server: str,
        http: str = "",
        main: str = "",
        workers: int = 2,
        init: str = "",
        init_worker: str = "",
        listen: str = "",
        metrics: bool = True,
    ) -> None:
        """metrics: the shared dict and GET /metrics (aioresty.nginx.metrics), as
        docs/operations.md recommends; scrape() reads it."""
        lua_path = f"{LUA_DIR}/?.lua;{TEST_LUA}/?.lua;{RESTY_CORE}/?.lua;;"
        extra = os.environ.get("AIORESTY_NGINX_EXTRA_LUA_PATH")  # local stand-ins
        if extra:
            lua_path = f"{LUA_DIR}/?.lua;{TEST_LUA}/?.lua;{extra}/?.lua;{RESTY_CORE}/?.lua;;"
        self.conf.write_text(f"""
load_module {MODULES}/ndk_http_module.so;
load_module {MODULES}/ngx_http_lua_module.so;
worker_processes {workers};
error_log logs/error.log info;
pid logs/nginx.pid;
env AIORESTY_LIB_DIR;
env AIORESTY_VENV;
env PYTHONPATH;
{main}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_buffer_size 4m;
    client_max_body_size 8m;
    client_body_temp_path {self.prefix}/tmp_body;
    lua_package_path "{lua_path}";
    lua_shared_dict results 1m;
    {"lua_shared_dict aioresty_metrics 1m;" if metrics else ""}
    init_by_lua_block {{
        require "resty_ffi"
        require("aioresty.nginx").configure{{ socket_dir = "{self.sock_dir}" }}
        {init}
    }}
    init_worker_by_lua_block {{
        {init_worker}
    }}
    {http}
    server {{
        listen 127.0.0.1:{self.port} {listen};
        {METRICS_LOCATION if metrics else ""}
        {server}
    }}
}}
""")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["AIORESTY_LIB_DIR"] = str(lib_dir())
        env["PYTHONPATH"] = str(REPO)
        venv = venv_dir()
        if venv:
            env["AIORESTY_VENV"] = venv
        env.update(self.extra_env)
        return env

    # -- process control -------------------------------------------------
    def add_accel_module(self) -> None:
        """load_module the accelerator right after the lua module's load_module."""
        text = self.conf.read_text()
        if ACCEL_MODULE in text:
            return
        lines = text.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if "ngx_http_lua_module.so" in line and line.lstrip().startswith("load_module"):
                lines.insert(i + 1, f"load_module {accel_module()};\n")
                break
        else:
            raise AssertionError("the config loads no ngx_http_lua_module.so")
        self.conf.write_text("".join(lines))

    def start(self, timeout: float = 15.0) -> None:
        if self.accel:
            self.add_accel_module()
        self.stdout = open(self.prefix / "stdout.log", "wb")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=self.stdout,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
        )

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nginx exited with {self.proc.returncode}:\n{self.output()}\n{self.log()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(up, timeout, what="nginx to listen")

    def workers(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGQUIT, timeout: float = 20.0) -> int:
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise

    def log(self) -> str:
        p = self.prefix / "logs" / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def output(self) -> str:
        p = self.prefix / "stdout.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def bad_log_lines(self, allow: tuple[str, ...] = ()) -> list[str]:
        bad = []
        for line in self.log().splitlines():
            if any(f"[{lvl}]" in line for lvl in ("error", "crit", "alert", "emerg")):
                if not any(a in line for a in allow):
                    bad.append(line)
        return bad

    # -- client ----------------------------------------------------------
    def scrape(self) -> dict:
        """GET /metrics, parsed (tests/promtext.py)."""
        status, _, body = self.request("/metrics")
        assert status == 200, body
        return promtext.parse(body.decode())

    def request(
        self,
        path: str,
        body: bytes | None = None,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15.0,
    ):
        """(status, headers dict, body) of one request on a fresh connection."""
        verb = method or ("POST" if body is not None else "GET")
        return http_request(self.port, verb, path, body, headers, timeout)


def _paths() -> list[str]:
    only = os.environ.get("AIORESTY_NGINX_PATHS")
    return [p for p in PATHS if not only or p in only.split(",")]


@pytest.fixture(params=_paths())
def nginx(request):
    why = _missing()
    if why:
        pytest.skip(why)
    accel = request.param == "accel"
    if accel and not accel_module().is_file():
        pytest.skip(
            f"{accel_module()} not built (the build says why: nginx-dev or the lua module's "
            "source missing; make deps fetches them)"
        )
    prefix = Path(tempfile.mkdtemp(prefix="aioresty-nginx-"))
    os.chmod(prefix, 0o755)  # workers run as nobody when the master is root
    inst = Nginx(prefix, free_port(), accel=accel)
    try:
        yield inst
    finally:
        try:
            inst.stop(signal.SIGTERM, timeout=10)
        finally:
            if getattr(inst, "stdout", None):
                inst.stdout.close()
            if os.environ.get("AIORESTY_KEEP_NGINX"):
                print(f"nginx prefix kept: {prefix}")
            else:
                shutil.rmtree(prefix, ignore_errors=True)
