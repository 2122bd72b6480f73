"""The Envoy demo: the seed's Lua block verbatim plus an aioresty app, on stock Envoy.

    python -m aioresty.demo [--listen 127.0.0.1:8000] [--concurrency 2] [--check]
                            [--script-mode bridge|lua]

Starts the httpbin stand-in (examples/envoy/httpbin.py) on a free 127.0.0.1
port, generates the Envoy config from examples/envoy/demo.toml (route
/httpbin/ -> the seed block -> the stand-in; /app/<method> -> the async def
handlers of examples/python/myapp/handlers.py), runs Envoy in the foreground
and prints the curl commands to try.  Ctrl-C or SIGTERM stops Envoy and the
stand-in (by pid).  ``--check`` makes the requests itself, prints the answers
and exits 0 when they are right, 1 otherwise.  ``--script-mode lua`` runs
the same two scripts, unchanged, in the module's ``lua`` mode, aioresty's own
LuaJIT filter (docs/lua-mode.md), instead of Envoy's Lua filter + the bridge
cluster (the user config's ``script_mode`` key).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import envoy_config
from .cli import UsageError, build_from_user, envoy_binary, envoy_env, lib_dir, load_user


def _examples() -> Path:
    """The repository's examples/ in a source checkout, else the copy the
    wheel carries (setup.py puts examples/envoy and examples/python there)."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "examples"
    return checkout if (checkout / "envoy" / "demo.toml").is_file() else here / "_examples"


EXAMPLES = _examples()
DEMO_TOML = EXAMPLES / "envoy" / "demo.toml"


def go_echo_stand_in(env: dict[str, str], tmp: Path) -> None:
    """The seed block loads the Go echo runtime (ffi_go_echo), which the package does not
    carry (Go runtimes are built for the repository's tests and demo only: make venv).
    Where none is found ($AIORESTY_LIB_PATH, aioresty's lib dir), the C echo runtime of
    the package (same lua-resty-ffi ABI, same answers) stands in under that name."""
    name = "libffi_go_echo.so"
    dirs = [d for d in env.get("AIORESTY_LIB_PATH", "").split(":") if d]
    if any((Path(d) / name).is_file() for d in [*dirs, str(lib_dir())]):
        return
    stand_in = tmp / "runtimes"
    stand_in.mkdir(exist_ok=True)
    (stand_in / name).symlink_to(lib_dir() / "libffi_c_echo.so")
    env["AIORESTY_LIB_PATH"] = ":".join([str(stand_in), *dirs])
    print(
        "demo: no ffi_go_echo runtime (Go runtimes are not in the package): the seed's "
        'ngx.load_ffi("ffi_go_echo") gets the C echo runtime (libffi_c_echo.so)',
        file=sys.stderr,
    )


class _Stop(Exception):
    """SIGTERM or SIGINT received."""


class _StopSignals:
    """SIGTERM and SIGINT stop the demo once: the first raises _Stop, later
    ones (make and its caller both send SIGTERM; Ctrl-C pressed twice) do
    nothing, so none interrupts the stopping.  (A handler that does nothing,
    not SIG_IGN: a signal already pending when SIG_IGN is set is reported as
    "ignored due to race condition" on stderr.)  A signal ignored by whoever
    started the demo stays ignored.  Installed for the rest of the process:
    the demo is a program, not a library."""

    def __init__(self) -> None:
        self.stopping = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            raise _Stop


def _wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], name: str, timeout: float = 15.0) -> int | None:
    """SIGTERM by pid, bounded wait, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(
                f"demo: {name} (pid {proc.pid}) ignored SIGTERM for {timeout:.0f}s; killing",
                file=sys.stderr,
            )
            os.kill(proc.pid, signal.SIGKILL)
            return proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    return proc.returncode


def _http(
    method: str, url: str, body: bytes | None = None, timeout: float = 10.0
) -> tuple[int, list[tuple[str, str]], bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, list(r.getheaders()), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, list(e.headers.items()), e.read()


def _show(title: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    print(f"$ {title}")
    print(f"< {status}")
    for k, v in headers:
        print(f"< {k}: {v}")
    print(body.decode(errors="replace").rstrip("\n"))
    print()


def _check(base: str, log_path: Path) -> bool:
    import msgpack

    ok = True
    status, headers, body = _http("GET", f"{base}/httpbin/get")
    _show(f"GET {base}/httpbin/get", status, headers, body)
    try:
        data = json.loads(body)
        good = status == 200 and data["url"].endswith("/get") and "headers" in data
    except (ValueError, KeyError, TypeError, AttributeError):
        good = False
    if not good:
        print("demo --check: /httpbin/get is wrong", file=sys.stderr)
        ok = False

    status, headers, body = _http("POST", f"{base}/app/greet", b"envoy")
    _show(f"POST {base}/app/greet  (body 'envoy')", status, headers, body)
    if status != 200 or body != b"hello, envoy, from async Python":
        print("demo --check: /app/greet is wrong", file=sys.stderr)
        ok = False

    status, headers, body = _http("POST", f"{base}/app/add", msgpack.packb({"a": 2, "b": 40}))
    decoded: Any = None
    try:
        decoded = msgpack.unpackb(body)
    except Exception:  # any decode failure is a wrong answer
        decoded = None
    _show(
        f"POST {base}/app/add  (msgpack {{'a': 2, 'b': 40}})",
        status,
        headers,
        f"msgpack -> {decoded!r}".encode(),
    )
    if status != 200 or decoded != {"sum": 42}:
        print("demo --check: /app/add is wrong", file=sys.stderr)
        ok = False

    # a failing assert in the seed block only logs (the request still proxies)
    bad = [
        line
        for line in log_path.read_text(errors="replace").splitlines()
        if "][error]" in line or "][critical]" in line or "assertion failed" in line
    ]
    if bad:
        print("demo --check: Envoy logged errors:\n" + "\n".join(bad[-20:]), file=sys.stderr)
        ok = False
    return ok


def run(args: argparse.Namespace) -> int:
    user = load_user(DEMO_TOML)
    tmp = Path(tempfile.mkdtemp(prefix="aioresty-demo-"))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    logs: list[IO[bytes]] = []
    signals = _StopSignals()
    try:
        # the httpbin stand-in, on a free port (it prints the port it got)
        hb_log = tmp / "httpbin.log"
        logs.append(open(hb_log, "wb"))  # closed in finally
        hb = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / "envoy" / "httpbin.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(args.httpbin_port),
            ],
            stdout=logs[-1],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(("httpbin stand-in", hb))

        def hb_port() -> str | None:
            if hb.poll() is not None:
                raise RuntimeError(
                    f"httpbin stand-in exited {hb.returncode}: {hb_log.read_text(errors='replace')}"
                )
            text = hb_log.read_text(errors="replace")
            if "http://" in text and text.endswith("\n"):
                return text.split("http://", 1)[1].split()[0]
            return None

        upstream = _wait_for(hb_port, 10, "the httpbin stand-in")

        user = dict(
            user,
            listen=args.listen,
            admin=args.admin,
            upstreams=dict(user.get("upstreams", {}), httpbin=upstream),
        )
        if args.script_mode is not None:
            user["script_mode"] = args.script_mode
        config = build_from_user(user, DEMO_TOML.parent, str(DEMO_TOML))
        cfg_path = tmp / "envoy.json"
        cfg_path.write_text(envoy_config.to_yaml(config))
        env = envoy_env(user, DEMO_TOML.parent)
        for name in ("resty_ffi_python", "aioresty", "ffi_c_echo"):
            if not (lib_dir() / f"lib{name}.so").is_file():
                print(f"demo: warning: {lib_dir()}/lib{name}.so is missing", file=sys.stderr)
        go_echo_stand_in(env, tmp)

        cmd = [
            envoy_binary(),
            "-c",
            str(cfg_path),
            "--concurrency",
            str(args.concurrency),
            "--disable-hot-restart",
            "-l",
            args.log_level,
        ]
        envoy_log = tmp / "envoy.log"
        out: IO[bytes] | None = None
        if args.check:
            logs.append(open(envoy_log, "wb"))  # closed in finally
            out = logs[-1]
        envoy = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp
        )
        procs.append(("envoy", envoy))

        admin_url = f"http://{args.admin}"

        def ready() -> bool:
            if envoy.poll() is not None:
                tail = envoy_log.read_text(errors="replace")[-3000:] if args.check else ""
                raise RuntimeError(f"envoy exited {envoy.returncode}\n{tail}")
            try:
                return _http("GET", f"{admin_url}/ready", timeout=2)[0] == 200
            except OSError:
                return False

        _wait_for(ready, 30, "Envoy to be ready")
        host, _, port = args.listen.rpartition(":")
        base = f"http://{host}:{port}"
        if args.check:
            return 0 if _check(base, envoy_log) else 1

        short = f"localhost:{port}" if host in ("127.0.0.1", "localhost") else f"{host}:{port}"
        py = shlex.quote(sys.executable)  # has msgpack; a bare `python` may not exist
        mode = envoy_config.script_mode(user)
        mode_text = f"script_mode = {mode!r}: {envoy_config.SCRIPT_MODES[mode]}"
        print(
            f"""
aioresty demo: Envoy (pid {envoy.pid}, --concurrency {args.concurrency}) on {base}
  scripts run in: {mode_text}
  /httpbin/  the seed's Lua block (examples/envoy/seed.lua), then the httpbin stand-in
             (pid {hb.pid}, {upstream})
  /app/<m>   examples/envoy/app.lua -> async def <m> in examples/python/myapp/handlers.py
  admin      {admin_url}

try:
  curl -v {short}/httpbin/get
  curl -d envoy {short}/app/greet
  {py} -c 'import msgpack,sys; sys.stdout.buffer.write(msgpack.packb({{"a": 2, "b": 40}}))' \\
    | curl -s --data-binary @- {short}/app/add | {py} -c 'import msgpack,sys; \\
print(msgpack.unpackb(sys.stdin.buffer.read()))'

Ctrl-C stops Envoy and the stand-in.
""",
            flush=True,
        )
        while envoy.poll() is None:
            if hb.poll() is not None:
                print(f"demo: the httpbin stand-in exited ({hb.returncode})", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"demo: envoy exited ({envoy.returncode})", file=sys.stderr)
        return 1
    except _Stop:
        print("\ndemo: stopping", file=sys.stderr)
        return 0
    except (RuntimeError, UsageError, OSError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        signals.stopping = True  # from here signals change nothing
        try:  # Envoy first: it may be mid-call to Python
            for name, proc in reversed(procs):
                rc = _stop(proc, name)
                if name == "envoy" and rc not in (0, None, -signal.SIGTERM):
                    print(f"demo: envoy exited with {rc}", file=sys.stderr)
        finally:
            for f in logs:
                f.close()
            shutil.rmtree(tmp, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m aioresty.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--listen", default="127.0.0.1:8000", help="Envoy's listener (host:port)")
    ap.add_argument("--admin", default="127.0.0.1:9901", help="Envoy's admin (host:port)")
    ap.add_argument(
        "--httpbin-port",
        type=int,
        default=0,
        help="port of the httpbin stand-in on 127.0.0.1 (0: a free one)",
    )
    ap.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    ap.add_argument("--log-level", default="error", help="Envoy's -l")
    ap.add_argument(
        "--script-mode",
        choices=sorted(envoy_config.SCRIPT_MODES),
        default=None,
        help="which module mode runs the scripts: 'bridge' (Envoy's Lua filter + the bridge; "
        "demo.toml's default) or 'lua' (aioresty's LuaJIT filter in the dynamic module)",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="make the requests, print the answers, exit 0 if right (else 1)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key in ("listen", "admin"):
        value = getattr(args, key)
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            print(f"demo: --{key} must be host:port, got {value!r}", file=sys.stderr)
            return 2
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
