"""make bench-nginx-seq: the latency of one call, one coroutine calling in a loop.

lua-resty-ffi's headline: a sequential call through its queue beats a cosocket to a
unix-socket server.  Here one request's coroutine calls N times in a loop (each answer
compared with what it sent) and the µs per round trip is measured inside nginx
(clock_gettime around the loop), at 16, 512, 4096 and 102400 bytes, for:

  c        Lua -> the C echo runtime (lua-resty-ffi runtime ABI: ffi_c_echo)
  python   Lua -> aioresty -> ``async def echo`` (tests/apps/echoapp.py)
  uds      the peer: one cosocket to benchmarks/cosocket_echo.py on a unix socket
           (4-byte big-endian length + payload, the same ``async def echo``), kept
           connected for the whole loop: the cheapest a cosocket peer gets

The runtimes run on two nginx (Debian's, worker_processes 1) side by side: "stock"
(aioresty's wake socket + timer + semaphore) and "accel" (the same config plus
``load_module ngx_http_aioresty_accel_module.so``, native/nginx/accel).  Everything
runs twice: pinned (every thread of both nginx and of the peer on CPU 0, ``taskset
-a -p``) and unpinned.  Variants are interleaved (every variant and size once per
round, ROUNDS rounds); medians are quoted with the spread (min-max) over the rounds,
and the server CPU per call next to each figure: the nginx worker's utime+stime (all
threads, the runtime's included) over the loop / calls, plus the peer's for uds.

Writes benchmarks/results/nginx_seq.json with "ratios" (our µs / the peer's, pinned,
512 B): c_vs_uds_512, python_vs_uds_512, c_vs_uds_512_accel, python_vs_uds_512_accel.
BENCH_SECONDS (default 0.5) is the length of one loop.  Without the accelerator
module (not built) the accel variants are left out and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aioresty import paths  # noqa: E402
from aioresty.nginx_run import MODULES, RESTY_CORE, Nginx, make_prefix, missing, runtime_env  # noqa: E402
from benchmarks.bench_nginx import CONF, Peer, bad_log_lines, machine, wait_one_worker  # noqa: E402
from benchmarks.common import (  # noqa: E402
    bench_seconds,
    cpu_seconds,
    free_port,
    median,
    print_table,
    write_result,
)

SIZES = (16, 512, 4096, 102400)
VARIANTS = ("c", "python", "uds")
ROUNDS = 5
ACCEL_SO = "ngx_http_aioresty_accel_module.so"

SEQ_LUA = r"""
-- bench-nginx-seq: one coroutine calling in a loop; every object cached in an upvalue
local ffi = require "ffi"
local C = ffi.C
local PEER = "unix:__PEER__"
local tcp = ngx.socket.tcp
local char, byte, floor, rep = string.char, string.byte, math.floor, string.rep
local concat = table.concat
local tonumber = tonumber

ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } ar_seq_timespec;
int clock_gettime(int clk, ar_seq_timespec *ts);
]]
local ts = ffi.new("ar_seq_timespec")
local function now_us()
    C.clock_gettime(1, ts)          -- CLOCK_MONOTONIC (vDSO: no syscall)
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local payloads = {}
local function payload(size)
    local p = payloads[size]
    if not p then
        local chunk = "0123456789abcdefghijklmnopqrstuvwxyz"
        p = rep(chunk, floor(size / #chunk) + 1):sub(1, size)
        payloads[size] = p
    end
    return p
end

local c_rt, py_rt
local function c_call(p)
    if not c_rt then c_rt = assert(ngx.load_ffi("ffi_c_echo")) end
    local ok, res, err = c_rt:echo(p)
    if not ok then return nil, tostring(res) .. " " .. tostring(err) end
    return res
end
local function py_call(p)
    if not py_rt then py_rt = assert(ngx.load_ffi("aioresty", "tests.apps.echoapp")) end
    local ok, res, err = py_rt:echo(p)
    if not ok then return nil, tostring(res) .. " " .. tostring(err) end
    return res
end

local function be32(n)
    return char(floor(n / 16777216) % 256, floor(n / 65536) % 256, floor(n / 256) % 256, n % 256)
end

local _M = {}

function _M.seq()
    local args = ngx.req.get_uri_args()
    local v, size, ms = args.v, tonumber(args.size), tonumber(args.ms)
    local p = payload(size)
    local call, sock
    if v == "c" then
        call = c_call
    elseif v == "python" then
        call = py_call
    elseif v == "uds" then
        sock = tcp()
        sock:settimeouts(1000, 1000, 5000)
        assert(sock:connect(PEER))
        local frame = { be32(#p), p }
        call = function()
            local ok, err = sock:send(frame)
            if not ok then return nil, err end
            local hdr
            hdr, err = sock:receive(4)
            if not hdr then return nil, err end
            local b1, b2, b3, b4 = byte(hdr, 1, 4)
            local n = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
            if n == 0 then return "" end
            return sock:receive(n)
        end
    else
        return ngx.exit(404)
    end
    for _ = 1, 20 do           -- warm (loads the runtime the first time)
        local res, err = call(p)
        if res ~= p then ngx.status = 502 ngx.say("bad answer: ", err) return end
    end
    local n, t0 = 0, now_us()
    local deadline = t0 + ms * 1000
    local t1
    repeat
        local res, err = call(p)
        if res ~= p then ngx.status = 502 ngx.say("bad answer: ", err) return end
        n = n + 1
        t1 = now_us()
    until t1 >= deadline
    if sock then sock:setkeepalive(60000, 4) end
    ngx.say(concat({ '{"n":', n, ',"us":', t1 - t0, '}' }))
end

function _M.stats()
    ngx.say(require("aioresty.nginx").stats())
end

return _M
"""

LOCATIONS = """
        location = /seq   { content_by_lua_block { require("aioresty_seq").seq() } }
        location = /stats { content_by_lua_block { require("aioresty_seq").stats() } }
"""


def get(port: int, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def all_pids(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()]


def set_affinity(pids: list[int], cpus: str) -> None:
    for pid in all_pids(pids):
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cpus, str(pid)],
            check=True,
            capture_output=True,
            timeout=10,
        )


class Server:
    """One nginx of the benchmark (stock or accel) in its own prefix."""

    def __init__(self, name: str, peer_path: Path, accel: bool) -> None:
        self.name = name
        self.prefix = make_prefix()
        (self.prefix / "sock").mkdir(mode=0o1777)
        os.chmod(self.prefix / "sock", 0o1777)  # workers (nobody) make their dirs here
        (self.prefix / "bench").mkdir(mode=0o755)
        self.port = free_port()
        accel_line = f"load_module {paths.lib_dir() / ACCEL_SO};" if accel else ""
        subst = {
            "__MODULES__": str(MODULES),
            "__ACCEL__": accel_line,
            "__LUA__": str(paths.lua_dir()),
            "__PREFIX__": str(self.prefix),
            "__RESTY_CORE__": str(RESTY_CORE),
            "__PORT__": str(self.port),
            "__PEER__": str(peer_path),
            "__LUA_FIRST__": "",
            "__BENCH_MODULE__": "aioresty_seq",
        }
        lua, conf = SEQ_LUA, CONF.replace("__LOCATIONS__", LOCATIONS)
        for k, v in subst.items():
            lua, conf = lua.replace(k, v), conf.replace(k, v)
        (self.prefix / "bench" / "aioresty_seq.lua").write_text(lua)
        (self.prefix / "nginx.conf").write_text(conf)
        self.nginx = Nginx(
            self.prefix / "nginx.conf",
            self.prefix,
            runtime_env([ROOT]),
            output=self.prefix / "logs" / "stdout.log",
        )
        self.worker = 0

    def start(self) -> None:
        self.nginx.start(wait_for=[("127.0.0.1", self.port)])
        self.worker = wait_one_worker(self.nginx)

    def stats(self) -> str:
        status, body = get(self.port, "/stats")
        return body.decode().strip() if status == 200 else f"/stats: {status}"


def measure(srv: Server, peer: Peer, variant: str, size: int, ms: float) -> dict[str, float]:
    w0, p0 = cpu_seconds(srv.worker), cpu_seconds(peer.pid)
    status, body = get(srv.port, f"/seq?v={variant}&size={size}&ms={ms:g}")
    w1, p1 = cpu_seconds(srv.worker), cpu_seconds(peer.pid)
    if status != 200:
        raise RuntimeError(f"{srv.name} {variant} {size}: {status} {body[:300]!r}")
    res = json.loads(body)
    n = max(res["n"], 1)
    out = {"us": res["us"] / n, "calls": float(res["n"]), "cpu_us": (w1 - w0) / n * 1e6}
    if variant == "uds":
        out["peer_cpu_us"] = (p1 - p0) / n * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bench-nginx-seq (see the module docstring)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--keep", action="store_true", help="keep the nginx prefixes")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--modes", default="pinned,unpinned")
    args = parser.parse_args(argv)
    seconds = bench_seconds(0.5)
    ms = seconds * 1000
    sizes = tuple(int(s) for s in args.sizes.split(","))
    modes = tuple(args.modes.split(","))
    of_record = sizes == SIZES and "pinned" in modes

    why = missing() or (None if shutil.which("taskset") else "taskset is not installed")
    if why:
        print(f"bench-nginx-seq: {why}", file=sys.stderr)
        return 2
    have_accel = (paths.lib_dir() / ACCEL_SO).is_file()
    if not have_accel:
        print(
            f"bench-nginx-seq: {paths.lib_dir() / ACCEL_SO} is not built: accel variants left out"
        )
    ncpu = os.cpu_count() or 1
    all_cpus = f"0-{ncpu - 1}"

    peer_dir = make_prefix()
    peer_path = peer_dir / "echo.sock"
    peer = Peer(peer_path, "protocol")
    servers = {"stock": Server("stock", peer_path, accel=False)}
    if have_accel:
        servers["accel"] = Server("accel", peer_path, accel=True)
    runs: list[tuple[str, str]] = [("stock", v) for v in VARIANTS]
    if have_accel:
        runs += [("accel", "c"), ("accel", "python")]

    samples: dict[str, list[dict[str, float]]] = {}
    ok = False
    bad: list[str] = []
    final: dict[str, str] = {}
    try:
        peer.start()
        for srv in servers.values():
            srv.start()
        pids = [peer.pid] + [p for s in servers.values() for p in (s.nginx.pid, s.worker)]
        for srv_name, variant in runs:  # load the runtimes, warm LuaJIT
            measure(servers[srv_name], peer, variant, 512, min(ms, 200))
        load0 = os.getloadavg()
        for mode in modes:
            set_affinity(pids, "0" if mode == "pinned" else all_cpus)
            for r in range(args.rounds):
                for size in sizes:
                    for srv_name, variant in runs:
                        res = measure(servers[srv_name], peer, variant, size, ms)
                        key = f"{mode}/{srv_name}/{variant}/{size}"
                        samples.setdefault(key, []).append(res)
                print(f"{mode} round {r + 1}/{args.rounds} done", flush=True)
        set_affinity(pids, all_cpus)
        final = {name: srv.stats() for name, srv in servers.items()}
        ok = True
    finally:
        for srv in servers.values():
            srv.nginx.stop(graceful=True, timeout=10.0)
            bad += bad_log_lines(srv.prefix)
        peer.stop()
        for d in [s.prefix for s in servers.values()] + [peer_dir]:
            if ok and not args.keep and not bad:
                shutil.rmtree(d, ignore_errors=True)
            else:
                print(f"prefix kept: {d}", file=sys.stderr)
    if bad:
        print("nginx logged errors:\n" + "\n".join(bad[:20]), file=sys.stderr)
        return 1

    results: dict[str, dict[str, Any]] = {}
    for key, rs in samples.items():
        us = [x["us"] for x in rs]
        agg: dict[str, Any] = {
            "us": round(median(us), 2),
            "us_min": round(min(us), 2),
            "us_max": round(max(us), 2),
            "cpu_us": round(median([x["cpu_us"] for x in rs]), 2),
            "calls_per_round": round(median([x["calls"] for x in rs])),
            "rounds_us": [round(u, 2) for u in us],
        }
        if "peer_cpu_us" in rs[0]:
            agg["peer_cpu_us"] = round(median([x["peer_cpu_us"] for x in rs]), 2)
        results[key] = agg

    labels = {"c": "C echo", "python": "Python echo", "uds": "cosocket uds peer"}
    for mode in modes:
        print(
            f"\n{mode} ({'CPU 0 only' if mode == 'pinned' else f'{ncpu} CPUs'}): "
            "µs per round trip, median [min-max], server CPU µs/call"
        )
        rows = []
        for srv_name, variant in runs:
            row = [f"{labels[variant]}{' +accel' if srv_name == 'accel' else ''}"]
            for size in sizes:
                a = results[f"{mode}/{srv_name}/{variant}/{size}"]
                cpu = a["cpu_us"] + a.get("peer_cpu_us", 0.0)
                row.append(f"{a['us']:.1f} [{a['us_min']:.1f}-{a['us_max']:.1f}] cpu {cpu:.1f}")
            rows.append(row)
        print_table(["variant"] + [f"{s} B" for s in sizes], rows)

    if not of_record:
        print("\n(a subset: benchmarks/results/nginx_seq.json not written)")
        return 0

    def ratio(srv: str, variant: str) -> float | None:
        key = f"pinned/{srv}/{variant}/512"
        if key not in results:
            return None
        return round(results[key]["us"] / results["pinned/stock/uds/512"]["us"], 3)

    ratios = {
        "c_vs_uds_512": ratio("stock", "c"),
        "python_vs_uds_512": ratio("stock", "python"),
        "c_vs_uds_512_accel": ratio("accel", "c"),
        "python_vs_uds_512_accel": ratio("accel", "python"),
    }
    print()
    for k, v in ratios.items():
        print(f"{k}: {v}")
    print(f"load average before: {load0[0]:.2f}")
    for name, line in final.items():
        print(f"{name} aioresty.nginx.stats(): {line}")
    path = write_result(
        "nginx_seq",
        {
            "benchmark": "nginx_seq",
            "ratios": ratios,
            "results": results,
            "params": {
                "loop_seconds": seconds,
                "rounds": args.rounds,
                "sizes": list(sizes),
                "modes": list(modes),
                "pinned": "taskset -a -p -c 0: both nginx (master, worker, every thread), the peer",
                "worker_processes": 1,
                "accelerator": have_accel,
                "peer": "benchmarks/cosocket_echo.py --impl protocol, one cosocket per loop",
                "python_handler": "tests.apps.echoapp:echo (async def)",
                "c_runtime": "ffi_c_echo",
                "cpu": "utime+stime of the nginx worker (all threads) / calls (+ peer's for uds)",
                "loadavg_before": load0[0],
            },
            "stats": final,
            "machine": machine(),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
