"""make bench-nginx: aioresty on stock nginx-lua vs plain Lua, a C runtime and a cosocket peer.

One nginx (Debian's nginx + lua module, worker_processes 1) serves four locations;
wrk (``-t1 -c16 --latency``) drives one location at a time on 127.0.0.1, the
variants interleaved (A B C D, ROUNDS rounds, medians quoted):

  plain     content_by_lua: ngx.say(16 bytes)
  python    Lua -> aioresty -> ``async def echo`` (tests/apps/echoapp.py), 16 bytes
  c         Lua -> the C echo runtime (lua-resty-ffi runtime ABI: ffi_c_echo)
  cosocket  the peer: Lua cosocket -> the same ``async def echo`` in an asyncio server
            on a unix socket (benchmarks/cosocket_echo.py), 4-byte big-endian length +
            payload frames, connections pooled with setkeepalive

Why one nginx with four locations rather than one nginx per variant: every variant
runs in the same worker process (same binary, same warm LuaJIT state, same place in
memory), interleaving costs no restarts, and the runtimes that a variant does not
use sit idle (blocked in epoll / a condition variable: the worker's CPU over an idle
second is measured and reported as ``idle_worker_cpu_ms_per_s``).

Per window: req/s, p50/p99 (wrk), and server CPU per request: utime+stime of the
nginx worker (all its threads, the Python runtime's included) from /proc over the
window / requests.  For the cosocket peer the Python server's CPU is reported too,
both ways: worker only, and worker + server.  For the runtimes, completions drained
per wake byte come from ``aioresty.nginx.stats()``.

With the accelerator module built (native/nginx/accel), a second nginx, the same
config plus ``load_module ngx_http_aioresty_accel_module.so``, serves python_accel and
c_accel (interleaved with the others; its worker's CPU is measured the same way).

Writes benchmarks/results/nginx.json with "ratios" (req/s):
lua_python_vs_plain, lua_python_vs_cosocket, lua_c_vs_plain, and with the
accelerator lua_python_vs_plain_accel, lua_c_vs_plain_accel.  BENCH_SECONDS
(default 5) sets the window.  Every process started here is stopped (try/finally).
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aioresty import paths  # noqa: E402
from aioresty.nginx_run import (  # noqa: E402
    MODULES,
    RESTY_CORE,
    Nginx,
    make_prefix,
    missing,
    runtime_env,
)
from benchmarks.common import (  # noqa: E402
    CLK_TCK,
    bench_seconds,
    cpu_seconds,
    free_port,
    median,
    print_table,
    run_wrk,
    write_result,
)

VARIANTS = ("plain", "python", "c", "cosocket")
ACCEL_VARIANTS = ("python_accel", "c_accel")  # served by the accelerated nginx
ACCEL_SO = "ngx_http_aioresty_accel_module.so"
LABELS = {
    "python_accel": "Lua -> aioresty Python echo, accelerator",
    "c_accel": "Lua -> C echo runtime, accelerator",
    "plain": "plain content_by_lua ngx.say",
    "python": "Lua -> aioresty Python echo",
    "c": "Lua -> C echo runtime",
    "cosocket": "Lua cosocket -> asyncio echo",
}
ROUNDS = 3
THREADS = 1
CONNECTIONS = 16
PAYLOAD_SIZE = 16
PAYLOAD = b"a" * PAYLOAD_SIZE

BENCH_LUA = r"""
-- bench-nginx handlers: one function per variant, every object cached in an upvalue
local PAYLOAD = string.rep("a", __SIZE__)
local PEER = "unix:__PEER__"
local say = ngx.say
local exit = ngx.exit
local log = ngx.log
local ERR = ngx.ERR
local tcp = ngx.socket.tcp
local char = string.char
local byte = string.byte
local floor = math.floor

local _M = {}
local py_rt, c_rt

function _M.plain()
    say(PAYLOAD)
end

local function fail(what, a, b)
    log(ERR, what, ": ", tostring(a), " ", tostring(b))
    return exit(502)
end

function _M.python()
    if not py_rt then
        local err
        py_rt, err = ngx.load_ffi("aioresty", "tests.apps.echoapp")
        if not py_rt then return fail("load python", err) end
    end
    local ok, res, err = py_rt:echo(PAYLOAD)
    if not ok then return fail("python echo", res, err) end
    say(res)
end

function _M.c()
    if not c_rt then
        local err
        c_rt, err = ngx.load_ffi("ffi_c_echo")
        if not c_rt then return fail("load c", err) end
    end
    local ok, res, err = c_rt:echo(PAYLOAD)
    if not ok then return fail("c echo", res, err) end
    say(res)
end

-- the peer, written the way a careful OpenResty user would: timeouts set, one
-- send per frame, the connection returned to the pool with setkeepalive
local function be32(n)
    return char(floor(n / 16777216) % 256, floor(n / 65536) % 256,
                floor(n / 256) % 256, n % 256)
end

function _M.cosocket()
    local sock = tcp()
    sock:settimeouts(1000, 1000, 5000)
    local ok, err = sock:connect(PEER)
    if not ok then return fail("peer connect", err) end
    ok, err = sock:send({ be32(#PAYLOAD), PAYLOAD })
    if not ok then sock:close() return fail("peer send", err) end
    local hdr
    hdr, err = sock:receive(4)
    if not hdr then sock:close() return fail("peer receive", err) end
    local b1, b2, b3, b4 = byte(hdr, 1, 4)
    local n = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    local body = ""
    if n > 0 then
        body, err = sock:receive(n)
        if not body then sock:close() return fail("peer receive", err) end
    end
    sock:setkeepalive(60000, 64)
    say(body)
end

function _M.stats()
    say(require("aioresty.nginx").stats())
end

return _M
"""

# nginx.conf of the nginx benchmarks (bench_nginx_seq.py too): __BENCH_MODULE__ is the Lua
# module of handlers (in __PREFIX__/bench), __LOCATIONS__ its server's locations;
# __ACCEL__ is empty or the accelerator's load_module line.
CONF = """
load_module __MODULES__/ndk_http_module.so;
load_module __MODULES__/ngx_http_lua_module.so;
__ACCEL__
worker_processes 1;
error_log logs/error.log notice;
pid logs/nginx.pid;
env AIORESTY_LIB_DIR;
env AIORESTY_VENV;
env PYTHONPATH;
events { worker_connections 1024; }
http {
    access_log off;
    lua_package_path "__LUA_FIRST____LUA__/?.lua;__PREFIX__/bench/?.lua;__RESTY_CORE__/?.lua;;";
    init_by_lua_block {
        require "resty_ffi"
        require("aioresty.nginx").configure{ socket_dir = "__PREFIX__/sock" }
        require "__BENCH_MODULE__"
    }
    server {
        listen 127.0.0.1:__PORT__;
__LOCATIONS__
    }
}
"""


LOCATIONS = """
        location = /plain    { content_by_lua_block { require("aioresty_bench").plain() } }
        location = /python   { content_by_lua_block { require("aioresty_bench").python() } }
        location = /c        { content_by_lua_block { require("aioresty_bench").c() } }
        location = /cosocket { content_by_lua_block { require("aioresty_bench").cosocket() } }
        location = /stats    { content_by_lua_block { require("aioresty_bench").stats() } }
"""


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def stats(port: int) -> dict[str, float]:
    status, body = get(port, "/stats")
    if status != 200:
        raise RuntimeError(f"/stats: {status} {body!r}")
    out: dict[str, float] = {}
    for key, value in re.findall(r"(\w+)=(-?[0-9.]+)\b", body.decode()):
        out[key] = float(value)
    return out


def wrk(port: int, path: str, seconds: float) -> dict[str, float]:
    return run_wrk(
        f"http://127.0.0.1:{port}{path}", seconds, connections=CONNECTIONS, threads=THREADS
    )


class Peer:
    """benchmarks/cosocket_echo.py in its own process."""

    def __init__(self, path: Path, impl: str) -> None:
        self.path = path
        self.impl = impl
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 15.0) -> None:
        script = Path(__file__).resolve().parent / "cosocket_echo.py"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.path), "--impl", self.impl],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"cosocket peer did not start: {line!r}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def thread_cpu(pid: int) -> tuple[float, float]:
    """(event-loop thread, all other threads) utime+stime of a process, seconds."""
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # thread gone
        t = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if int(tid) == pid:
            main += t
        else:
            other += t
    return main, other


def wait_one_worker(nginx: Nginx, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        workers = nginx.workers()
        if len(workers) == 1:
            return workers[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected one nginx worker, found {workers}")
        time.sleep(0.05)


def measure(port: int, worker: int, peer: int, variant: str, seconds: float) -> dict[str, float]:
    uses_runtime = variant in ("python", "c", *ACCEL_VARIANTS)
    s0 = stats(port) if uses_runtime else {}
    t0 = thread_cpu(worker)
    w0, p0 = cpu_seconds(worker), cpu_seconds(peer)
    res = wrk(port, f"/{variant.removesuffix('_accel')}", seconds)
    w1, p1 = cpu_seconds(worker), cpu_seconds(peer)
    t1 = thread_cpu(worker)
    if res["non2xx"] or res["socket_errors"]:
        raise RuntimeError(f"{variant}: errors during the run: {res}")
    n = max(res["requests"], 1.0)
    res["cpu_us_per_req"] = (w1 - w0) / n * 1e6
    # where the worker's CPU goes: nginx's own thread vs runtime threads
    res["loop_thread_cpu_us_per_req"] = (t1[0] - t0[0]) / n * 1e6
    res["runtime_threads_cpu_us_per_req"] = (t1[1] - t0[1]) / n * 1e6
    if variant == "cosocket":
        res["peer_cpu_us_per_req"] = (p1 - p0) / n * 1e6
        res["cpu_us_per_req_with_peer"] = res["cpu_us_per_req"] + res["peer_cpu_us_per_req"]
    if uses_runtime:
        s1 = stats(port)
        wakes = s1["lua_wakes"] - s0["lua_wakes"]
        res["completions_per_wake"] = (s1["lua_drained"] - s0["lua_drained"]) / max(wakes, 1.0)
        res["max_batch"] = s1["max_batch"]
    return res


def check_bodies(port: int, variants: tuple[str, ...] = VARIANTS) -> None:
    for variant in variants:
        status, body = get(port, f"/{variant.removesuffix('_accel')}")
        if (status, body) != (200, PAYLOAD + b"\n"):
            raise RuntimeError(f"/{variant} answered {status} {body[:200]!r}")


def machine() -> dict[str, Any]:
    """The "machine" entry of the nginx benchmarks' result files."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "nginx": subprocess.run(
            ["nginx", "-v"], capture_output=True, text=True, timeout=10, check=False
        ).stderr.strip(),
    }


def bad_log_lines(prefix: Path) -> list[str]:
    log = prefix / "logs" / "error.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return [
        line
        for line in text.splitlines()
        if any(f"[{lvl}]" in line for lvl in ("error", "crit", "alert", "emerg"))
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bench-nginx (see the module docstring)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--peer-impl", choices=("protocol", "streams"), default="protocol")
    parser.add_argument("--keep", action="store_true", help="keep the nginx prefix")
    parser.add_argument(
        "--lua-first",
        metavar="DIR",
        help="put DIR/?.lua ahead of aioresty's Lua files (to try a patched adapter)",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset (default: all)"
    )
    parser.add_argument(
        "--no-accel", action="store_true", help="leave out the accelerator's variants"
    )
    args = parser.parse_args(argv)
    seconds = bench_seconds(5.0)
    have_accel = not args.no_accel and (paths.lib_dir() / ACCEL_SO).is_file()
    every = VARIANTS + (ACCEL_VARIANTS if have_accel else ())
    wanted = args.variants.split(",") + (
        list(ACCEL_VARIANTS) if args.variants == ",".join(VARIANTS) else []
    )
    chosen = tuple(v for v in every if v in wanted or v == "plain")
    # only a full run with the shipped Lua files is the benchmark of record
    of_record = chosen == every and not args.lua_first
    if not have_accel:
        print(f"bench-nginx: {paths.lib_dir() / ACCEL_SO} not used: no accelerated variants")

    why = missing() or (None if shutil.which("wrk") else "wrk is not installed")
    if why:
        print(f"bench-nginx: {why}", file=sys.stderr)
        return 2

    prefix = make_prefix()
    (prefix / "sock").mkdir(mode=0o1777)
    os.chmod(prefix / "sock", 0o1777)  # workers (nobody) make their private dirs here
    (prefix / "peer").mkdir(mode=0o755)
    (prefix / "bench").mkdir(mode=0o755)
    peer_path = prefix / "peer" / "echo.sock"
    port = free_port()
    subst = {
        "__MODULES__": str(MODULES),
        "__LUA__": str(paths.lua_dir()),
        "__PREFIX__": str(prefix),
        "__RESTY_CORE__": str(RESTY_CORE),
        "__PORT__": str(port),
        "__PEER__": str(peer_path),
        "__SIZE__": str(PAYLOAD_SIZE),
        "__LUA_FIRST__": f"{Path(args.lua_first).resolve()}/?.lua;" if args.lua_first else "",
        "__BENCH_MODULE__": "aioresty_bench",
        "__LOCATIONS__": LOCATIONS,
    }

    def fill(text: str) -> str:
        for key, value in subst.items():  # (LOCATIONS holds no other key)
            text = text.replace(key, value)
        return text

    (prefix / "bench" / "aioresty_bench.lua").write_text(fill(BENCH_LUA))
    conf = prefix / "nginx.conf"
    conf.write_text(fill(CONF).replace("__ACCEL__", ""))
    # the accelerated twin: its own prefix (logs, pid, wake sockets) and port
    aprefix = make_prefix(prefix / "accel")
    (aprefix / "sock").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(aprefix / "sock", 0o1777)
    aport = free_port()
    aconf = aprefix / "nginx.conf"
    aconf.write_text(
        fill(CONF)
        .replace("__ACCEL__", f"load_module {paths.lib_dir() / ACCEL_SO};")
        .replace(f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{aport};")
        .replace(f'socket_dir = "{prefix}/sock"', f'socket_dir = "{aprefix}/sock"')
    )

    peer = Peer(peer_path, args.peer_impl)
    nginx = Nginx(conf, prefix, runtime_env([ROOT]), output=prefix / "logs" / "stdout.log")
    anginx = Nginx(aconf, aprefix, runtime_env([ROOT]), output=aprefix / "logs" / "stdout.log")
    use_accel = any(v in ACCEL_VARIANTS for v in chosen)
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in chosen}
    ok = False
    try:
        peer.start()
        nginx.start(wait_for=[("127.0.0.1", port)])
        worker = wait_one_worker(nginx)
        check_bodies(port)
        where = {v: (port, worker) for v in VARIANTS}
        if use_accel:
            anginx.start(wait_for=[("127.0.0.1", aport)])
            where.update({v: (aport, wait_one_worker(anginx)) for v in ACCEL_VARIANTS})
            check_bodies(aport, ACCEL_VARIANTS)
        warm = min(1.0, seconds)
        for variant in chosen:  # starts the runtimes, warms LuaJIT and the pool
            wrk(where[variant][0], f"/{variant.removesuffix('_accel')}", warm)
        c0 = cpu_seconds(worker)
        time.sleep(1.0)
        idle_ms = (cpu_seconds(worker) - c0) * 1e3
        load0 = os.getloadavg()
        for r in range(args.rounds):
            for variant in chosen:
                vport, vworker = where[variant]
                res = measure(vport, vworker, peer.pid, variant, seconds)
                samples[variant].append(res)
                print(
                    f"round {r + 1} {variant:9} {res['rps']:9.0f} req/s  "
                    f"p50 {res['p50_us']:7.0f} us  p99 {res['p99_us']:7.0f} us  "
                    f"cpu {res['cpu_us_per_req']:5.2f} us/req",
                    flush=True,
                )
        final_stats = stats(port)
        accel_stats = stats(aport) if use_accel else {}
        ok = True
    finally:
        nginx.stop(graceful=True, timeout=10.0)
        anginx.stop(graceful=True, timeout=10.0)
        peer.stop()
        bad = bad_log_lines(prefix) + bad_log_lines(aprefix)
        if ok and not args.keep and not bad:
            shutil.rmtree(prefix, ignore_errors=True)
        else:
            print(f"nginx prefix kept: {prefix}", file=sys.stderr)
    if bad:
        print("nginx logged errors:\n" + "\n".join(bad[:20]), file=sys.stderr)
        return 1

    results: dict[str, dict[str, Any]] = {}
    for variant, runs in samples.items():
        keys = [k for k in runs[0] if k not in ("non2xx", "socket_errors")]
        agg: dict[str, Any] = {k: median([run[k] for run in runs]) for k in keys}
        agg["label"] = LABELS[variant]
        agg["runs"] = runs
        results[variant] = agg

    cpu = "cpu_us_per_req"
    rows = []
    for variant in chosen:
        a = results[variant]
        cpu_txt = f"{a[cpu]:.2f}"
        if variant == "cosocket":
            peer_cpu, total = a["peer_cpu_us_per_req"], a["cpu_us_per_req_with_peer"]
            cpu_txt += f" (+{peer_cpu:.2f} peer = {total:.2f})"
        elif variant in ("python", "c", *ACCEL_VARIANTS):
            loop, rt = a["loop_thread_cpu_us_per_req"], a["runtime_threads_cpu_us_per_req"]
            cpu_txt += f" (nginx {loop:.2f} + runtime {rt:.2f})"
        per_wake = f"{a['completions_per_wake']:.1f}" if "completions_per_wake" in a else "-"
        rows.append(
            [
                LABELS[variant],
                f"{a['rps']:,.0f}",
                f"{a['rps'] / results['plain']['rps']:.2f}",
                f"{a['p50_us']:.0f}",
                f"{a['p99_us']:.0f}",
                cpu_txt,
                per_wake,
            ]
        )
    print()
    print_table(
        ["variant", "req/s", "vs plain", "p50 us", "p99 us", "worker CPU us/req", "done/wake"],
        rows,
    )
    print()
    if not of_record:
        print(f"worker CPU while idle: {idle_ms:.1f} ms/s")
        print("(a subset or a patched adapter: benchmarks/results/nginx.json not written)")
        return 0

    def ratio(a: str, b: str, key: str = "rps") -> float:
        return round(results[a][key] / results[b][key], 3)

    ratios = {
        "lua_python_vs_plain": ratio("python", "plain"),
        "lua_python_vs_cosocket": ratio("python", "cosocket"),
        "lua_c_vs_plain": ratio("c", "plain"),
    }
    if have_accel:
        ratios["lua_python_vs_plain_accel"] = ratio("python_accel", "plain")
        ratios["lua_c_vs_plain_accel"] = ratio("c_accel", "plain")
    cpu_ratios = {  # CPU per request relative to plain (lower is better; DESIGN.md §7)
        "python_vs_plain": ratio("python", "plain", cpu),
        "c_vs_plain": ratio("c", "plain", cpu),
        **(
            {
                "python_accel_vs_plain": ratio("python_accel", "plain", cpu),
                "c_accel_vs_plain": ratio("c_accel", "plain", cpu),
            }
            if have_accel
            else {}
        ),
        "cosocket_worker_vs_plain": ratio("cosocket", "plain", cpu),
        "cosocket_with_peer_vs_plain": round(
            results["cosocket"]["cpu_us_per_req_with_peer"] / results["plain"][cpu], 3
        ),
        "python_vs_cosocket_with_peer": round(
            results["python"][cpu] / results["cosocket"]["cpu_us_per_req_with_peer"], 3
        ),
    }

    for k, v in ratios.items():
        print(f"{k}: {v}")
    for k, v in cpu_ratios.items():
        print(f"cpu {k}: {v}")
    print(f"worker CPU while idle: {idle_ms:.1f} ms/s; load average before: {load0[0]:.2f}")
    print(f"aioresty.nginx.stats(): {final_stats}")
    if accel_stats:
        print(f"accelerated aioresty.nginx.stats(): {accel_stats}")
    path = write_result(
        "nginx",
        {
            "benchmark": "nginx",
            "ratios": ratios,
            "cpu_ratios": cpu_ratios,
            "results": results,
            "params": {
                "seconds": seconds,
                "rounds": args.rounds,
                "wrk": f"wrk -t{THREADS} -c{CONNECTIONS} -d{seconds:g}s --latency",
                "payload_bytes": PAYLOAD_SIZE,
                "worker_processes": 1,
                "peer_impl": args.peer_impl,
                "peer_frames": "4-byte big-endian length + payload, setkeepalive(60000, 64)",
                "python_handler": "tests.apps.echoapp:echo (async def)",
                "c_runtime": "ffi_c_echo",
                "cpu": "utime+stime of the nginx worker (all threads) / requests",
                "idle_worker_cpu_ms_per_s": round(idle_ms, 2),
                "accelerator": have_accel,
                "loadavg_before": load0[0],
            },
            "machine": machine(),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
