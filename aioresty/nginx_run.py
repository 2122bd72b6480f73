"""Run stock nginx (Debian's nginx + lua module) with aioresty, in the foreground.

    aioresty nginx run examples/nginx/nginx.conf      # what `make demo-nginx` runs
    aioresty nginx reload examples/nginx/nginx.conf   # HUP: new workers, new Python code

It makes a private prefix (``<prefix>/lua`` -> aioresty's Lua files, ``<prefix>/logs``),
passes what the workers need in their environment (``AIORESTY_LIB_DIR``,
``AIORESTY_VENV`` = this interpreter's venv, ``PYTHONPATH`` = the config's directory,
the ``--pythonpath`` entries, the current directory, then any inherited PYTHONPATH),
checks that the workers' user can reach the Python, the venv and aioresty's files (exit
2 naming the directory in the way otherwise), and starts ``nginx -p <prefix> -c <conf>
-g 'daemon off;'`` in its own process group, with warnings and errors also on this
terminal. Ctrl-C (SIGINT) or SIGTERM stops nginx gracefully (SIGQUIT: calls in flight
finish); a second Ctrl-C, or 10 s without an exit, stops it at once (SIGTERM, then
SIGKILL to its process group). The prefix is removed afterwards unless ``--keep`` or
nginx failed.

The same ``Nginx`` class starts the benchmark's nginx (benchmarks/bench_nginx.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType

from . import paths

MODULES = Path("/usr/lib/nginx/modules")
RESTY_CORE = Path("/usr/share/lua/5.1")
_PR_SET_PDEATHSIG = 1


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def missing() -> str | None:
    """Why stock nginx + lua cannot run here, or None."""
    if not Path(nginx_binary()).exists():
        return "nginx is not installed (apt-get install nginx-light)"
    for mod in ("ndk_http_module.so", "ngx_http_lua_module.so"):
        if not (MODULES / mod).is_file():
            return f"{MODULES / mod} missing (apt-get install libnginx-mod-http-lua)"
    if not (RESTY_CORE / "resty" / "core.lua").is_file():
        return "lua-resty-core is not installed (apt-get install lua-resty-core)"
    if not (paths.lib_dir() / "libaioresty_nginx.so").is_file():
        return f"libaioresty_nginx.so is not built in {paths.lib_dir()} (pip install -e .)"
    return None


def venv_dir() -> str | None:
    """The venv whose Python the workers' runtimes use: $AIORESTY_VENV, $VIRTUAL_ENV, ours."""
    for var in ("AIORESTY_VENV", "VIRTUAL_ENV"):
        if os.environ.get(var):
            return os.environ[var]
    return sys.prefix if sys.prefix != sys.base_prefix else None


def runtime_env(pythonpath: Iterable[str | Path] = ()) -> dict[str, str]:
    """This environment plus what aioresty reads in the workers (the config must
    pass them with ``env AIORESTY_LIB_DIR; env AIORESTY_VENV; env PYTHONPATH;``)."""
    env = dict(os.environ)
    env["AIORESTY_LIB_DIR"] = str(paths.lib_dir())
    venv = venv_dir()
    if venv:
        env["AIORESTY_VENV"] = venv
    parts = [str(p) for p in pythonpath]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def make_prefix(prefix: Path | None = None) -> Path:
    """A prefix directory with logs/ and lua -> aioresty's Lua files (world-readable:
    the workers run as `nobody` when the master is root)."""
    if prefix is None:
        prefix = Path(tempfile.mkdtemp(prefix="aioresty-nginx-"))
    prefix.mkdir(parents=True, exist_ok=True)
    os.chmod(prefix, 0o755)
    (prefix / "logs").mkdir(exist_ok=True)
    link = prefix / "lua"
    if link.is_symlink():
        link.unlink()
    if not link.exists():  # a real lua/ directory of the user's is left alone
        link.symlink_to(paths.lua_dir())
    return prefix


def _uncommented(conf: Path) -> str:
    return re.sub(r"#[^\n]*", "", conf.read_text())


def has_directive(conf: Path, name: str) -> bool:
    """The main config sets `name` (a top-level directive such as daemon)."""
    return re.search(rf"(?m)^\s*{name}\s", _uncommented(conf)) is not None


def listen_addresses(conf: Path) -> list[str]:
    """host:port of the `listen` directives of a config (for the banner only)."""
    return re.findall(r"\blisten\s+([0-9.]+:\d+)", _uncommented(conf))


def worker_user(conf: Path) -> str | None:
    """The user nginx's workers run as: the config's ``user`` directive, else
    ``nobody`` when the master is root (nginx's built-in default); None when
    the master is not root (the workers are then this user)."""
    if os.geteuid() != 0:
        return None
    m = re.search(r"(?m)^\s*user\s+([^\s;]+)", _uncommented(conf))
    return m.group(1) if m else "nobody"


def _searchable(path: Path, uid: int, gids: set[int]) -> bool:
    st = path.stat()
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def unreachable(conf: Path, needed: Iterable[str | Path]) -> str | None:
    """Why the workers cannot reach a path they load from (the Python, the
    venv, aioresty's libraries, the app's directories), or None."""
    user = worker_user(conf)
    if user is None:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None  # nginx itself says "getpwnam(...) failed"
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for target in needed:
        path = Path(target).resolve()
        for d in [*reversed(path.parents), path]:
            if not d.is_dir() or _searchable(d, pw.pw_uid, gids):
                continue
            mode = stat.filemode(d.stat().st_mode)
            return (
                f"nginx workers run as {user!r} and cannot reach {path} ({d} is {mode}): "
                f"`chmod o+x {d}` (what `make python-access` does for the repository's "
                f"venv), put the venv and the app where {user!r} can read them, or set "
                f"`user` in the config"
            )
    return None


def children(pid: int) -> list[int]:
    """Live pids whose parent is pid (the workers of an nginx master)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(d))
    return sorted(out)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Nginx:
    """One `nginx -g 'daemon off;'` master in its own process group."""

    def __init__(
        self,
        conf: Path,
        prefix: Path,
        env: dict[str, str] | None = None,
        *,
        stderr_level: str | None = None,
        output: Path | None = None,
    ) -> None:
        self.conf = conf
        self.prefix = prefix
        self.env = env if env is not None else runtime_env()
        self.stderr_level = stderr_level  # also log this level and up to stderr
        self.output = output  # None: inherit stdout/stderr
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "nginx is not started"
        return self.proc.pid

    def start(self, wait_for: Sequence[tuple[str, int]] = (), timeout: float = 15.0) -> None:
        # a config that says `daemon off;` itself must not get it twice (nginx refuses)
        glob = "" if has_directive(self.conf, "daemon") else "daemon off;"
        if self.stderr_level:
            glob += f" error_log stderr {self.stderr_level};"
        cmd = [nginx_binary(), "-p", f"{self.prefix}/", "-c", str(self.conf), "-e", "stderr"]
        cmd += ["-g", glob.strip()] if glob.strip() else []
        out = open(self.output, "ab") if self.output else None
        try:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, not the workers
                preexec_fn=_die_with_parent,
            )
        finally:
            if out:
                out.close()
        deadline = time.monotonic() + timeout
        for addr in wait_for:
            while not self._accepts(addr):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    self.stop(graceful=False)
                    raise TimeoutError(f"nginx did not listen on {addr} within {timeout}s")
                time.sleep(0.05)

    @staticmethod
    def _accepts(addr: tuple[str, int]) -> bool:
        try:
            with socket.create_connection(addr, timeout=0.5):
                return True
        except OSError:
            return False

    def workers(self) -> list[int]:
        return children(self.pid) if self.proc else []

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, graceful: bool = True, timeout: float = 10.0) -> int:
        """SIGQUIT (graceful) or SIGTERM; then SIGTERM; then SIGKILL to the group."""
        if self.proc is None:
            return 0
        steps: list[tuple[int, float]] = [(signal.SIGTERM, 5.0)]
        if graceful:
            steps.insert(0, (signal.SIGQUIT, timeout))
        for sig, wait_s in steps:
            if not self.running():
                break
            self.signal(sig)
            if self.wait(wait_s) is not None:
                break
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.wait(5.0)
        self._kill_stray_workers()
        return self.proc.returncode if self.proc.returncode is not None else -9

    def _kill_stray_workers(self) -> None:
        # the group holds the master and its workers; after the master is gone
        # nothing of ours may stay in it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def log(self, tail: int = 40) -> str:
        text = ""
        for p in (self.prefix / "logs" / "error.log", self.output):
            if p is not None and p.exists():
                text += p.read_text(errors="replace")
        return "\n".join(text.splitlines()[-tail:])


def _serve(args: argparse.Namespace) -> int:
    why = missing()
    if why:
        print(f"aioresty nginx: {why}", file=sys.stderr)
        return 2
    conf = Path(args.conf).resolve()
    if not conf.is_file():
        print(f"aioresty nginx: no such config: {conf}", file=sys.stderr)
        return 2
    own_prefix = args.prefix is None
    prefix = make_prefix(Path(args.prefix).resolve() if args.prefix else None)
    pythonpath = [conf.parent, *args.pythonpath, Path.cwd()]
    needed: list[str | Path] = [sys.base_prefix, venv_dir() or sys.prefix]
    needed += [paths.lib_dir(), paths.lua_dir()]
    why = unreachable(conf, needed)
    if why:
        print(f"aioresty nginx: {why}", file=sys.stderr)
        return 2
    for d in pythonpath:  # needed only if the app's modules are there
        why = unreachable(conf, [d])
        if why:
            print(f"aioresty nginx: warning: {why}; modules there will not import", file=sys.stderr)
    nginx = Nginx(conf, prefix, runtime_env(pythonpath), stderr_level=args.log_level)

    stops: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stops.append(signum)

    handlers: dict[signal.Signals, Callable[[int, FrameType | None], object] | int | None] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handlers[sig] = signal.signal(sig, on_signal)
    rc = 1
    try:
        nginx.start()
        urls = ", ".join(f"http://{a}/" for a in listen_addresses(conf)) or "(see the config)"
        print(
            f"aioresty nginx: {conf} on {urls}\n"
            f"  master pid {nginx.pid} (`aioresty nginx reload {args.conf}` or kill -HUP "
            f"reloads), prefix {prefix}\n"
            f"  error log {prefix}/logs/error.log (warnings also here); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        pidfile = master_pidfile(conf)
        pidfile.write_text(str(nginx.pid))
        rc = _supervise(nginx, stops)
        with contextlib.suppress(OSError):
            if pidfile.read_text() == str(nginx.pid):
                pidfile.unlink()
    finally:
        if nginx.running():
            nginx.stop(graceful=False)
        for sig, old in handlers.items():
            signal.signal(sig, old)
        if own_prefix and not args.keep and rc == 0:
            shutil.rmtree(prefix, ignore_errors=True)
        elif own_prefix:
            print(f"aioresty nginx: prefix kept: {prefix}", file=sys.stderr)
    return rc


def master_pidfile(conf: Path) -> Path:
    """Where `run` records the master of a config, for `reload`:
    $AIORESTY_STATE_DIR (default /tmp/aioresty-<uid>)/nginx-<crc of its path>.pid."""
    return paths.state_dir() / f"nginx-{zlib.crc32(str(conf.resolve()).encode()):08x}.pid"


def reload(conf: str) -> int:
    """SIGHUP to the nginx master `run` started for conf: new workers, new Python."""
    pidfile = master_pidfile(Path(conf))
    pid = paths.hup(pidfile)
    if pid is None:
        print(
            f"aioresty nginx: no `aioresty nginx run {conf}` is running ({pidfile})",
            file=sys.stderr,
        )
        return 2
    print(f"aioresty nginx: reload requested (master pid {pid})", file=sys.stderr)
    return 0


def _supervise(nginx: Nginx, stops: list[int]) -> int:
    """Wait for nginx; on a stop signal: SIGQUIT, then SIGTERM after 10 s or a 2nd signal."""
    seen = 0
    quit_at: float | None = None
    term_at: float | None = None
    while True:
        rc = nginx.wait(0.2)
        if rc is not None:
            if quit_at is None and rc == 0:  # stopped from outside (nginx -s quit, QUIT)
                print("aioresty nginx: nginx stopped", file=sys.stderr)
                return 0
            if quit_at is None:
                print(f"aioresty nginx: nginx exited by itself ({rc})", file=sys.stderr)
                print(nginx.log(), file=sys.stderr)
                return rc
            print("aioresty nginx: stopped", file=sys.stderr)
            return rc
        now = time.monotonic()
        if len(stops) > seen:
            seen = len(stops)
            if quit_at is None:
                print("\naioresty nginx: stopping (graceful)", file=sys.stderr, flush=True)
                nginx.signal(signal.SIGQUIT)
                quit_at = now
            elif term_at is None:
                nginx.signal(signal.SIGTERM)
                term_at = now
        if quit_at is not None and term_at is None and now - quit_at > 10.0:
            nginx.signal(signal.SIGTERM)
            term_at = now
        if term_at is not None and now - term_at > 5.0:
            nginx.stop(graceful=False, timeout=0.0)
            return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioresty nginx run",
        description="Run stock nginx with aioresty in the foreground (Ctrl-C stops it).",
    )
    add_run_arguments(parser)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("conf", help="nginx.conf (lua_package_path may use $prefix/lua/)")
    parser.add_argument("-p", "--prefix", help="prefix directory (default: a fresh temp dir)")
    parser.add_argument(
        "--pythonpath",
        action="append",
        default=[],
        help="extra PYTHONPATH entry for the workers (the config's directory is always first)",
    )
    parser.add_argument(
        "--log-level", default="warn", help="also log this level and up to stderr (warn)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp prefix")


def serve(args: argparse.Namespace) -> int:
    return _serve(args)


def main(argv: list[str] | None = None) -> int:
    return _serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
