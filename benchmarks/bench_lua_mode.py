"""make bench-lua-mode: aioresty's Envoy "lua" filter mode (LuaJIT inside the
dynamic module, native ffi-yield) against plain Envoy and the stock-Lua-filter
bridge, on the real Envoy 1.40 binary (concurrency 1).

Variants, one Envoy process each (started once, idle while the others run):
  direct          route direct_response (the baseline)
  stock_respond   stock Lua filter, respond() only
  lua_mode_python   "lua" mode -> Python echo (lib "aioresty", cfg tests.apps.echoapp)
  lua_mode_c        "lua" mode -> C echo runtime (lib "ffi_c_echo")
  bridge_python   stock Lua filter -> httpCall bridge -> Python echo
Load: wrk -t1 -c16, BENCH_SECONDS (default 5) per run, variants interleaved,
3 rounds, medians.  Envoy CPU per request = utime+stime of the Envoy process
(all threads, Python's included) over the run / requests; also split into the
worker thread and aioresty's runtime threads (benchmarks/common.THREAD_GROUPS).
Writes benchmarks/results/lua_mode.json with
"ratios": {"lua_mode_python_vs_direct": req/s ratio,
           "lua_mode_cpu_vs_bridge_cpu": CPU/request of lua_mode_python / bridge_python}.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import bench_seconds, median, print_table, run_wrk, write_result
from tests.envoy.lua.conftest import PY_ENV, PY_PATH, LuaEnvoy, direct_user, lua_mode_filter

ROUNDS = 3
CONNECTIONS = 16

CALL = """
require("resty_ffi")
function envoy_on_request(h)
  local rt = ngx.load_ffi(%s)
  local ok, res = rt:echo("hello", h)
  if not ok then
    h:respond({[":status"] = "502"}, tostring(res))
    return
  end
  h:respond({[":status"] = "200"}, res)
end
"""
RESPOND = """
function envoy_on_request(h)
  h:respond({[":status"] = "200"}, "hello")
end
"""
PY_RT = '"aioresty", "tests.apps.echoapp"'
C_RT = '"ffi_c_echo"'


def variants() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    direct = {"routes": [{"prefix": "/", "status": 200, "body": "hello"}]}

    def stock(code: str) -> dict[str, Any]:
        return {"lua": {"s": {"inline": code}}, "routes": [{"prefix": "/", "lua": "s"}]}

    return {
        "direct": (direct, []),
        "stock_respond": (stock(RESPOND), []),
        "lua_mode_python": (direct_user(), [lua_mode_filter(code=CALL % PY_RT)]),
        "lua_mode_c": (direct_user(), [lua_mode_filter(code=CALL % C_RT)]),
        "bridge_python": (stock(CALL % PY_RT), []),
    }


def wrk(port: int, seconds: float, pid: int | None = None) -> dict[str, float]:
    res = run_wrk(
        f"http://127.0.0.1:{port}/",
        seconds,
        connections=CONNECTIONS,
        pids={"envoy": pid} if pid else None,
    )
    if res["non2xx"] or res["socket_errors"]:
        raise SystemExit(f"wrk saw errors: {res}")
    return res


def main() -> int:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required (make deps)")
    seconds = bench_seconds(5.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-lua-mode-"))
    envs: dict[str, LuaEnvoy] = {}
    samples: dict[str, list[dict[str, float]]] = {}
    try:
        for name, (user, filters) in variants().items():
            d = tmp / name
            d.mkdir()
            e = LuaEnvoy(d, user, filters, env=dict(PY_ENV), python_path=PY_PATH)
            envs[name] = e
            e.start()
            status, _, body = e.request("GET", "/")
            if (status, body) != (200, b"hello"):
                raise SystemExit(f"{name}: bad answer {status} {body[:200]!r}\n{e.log()[-2000:]}")
            wrk(e.port, 1)  # warm-up: runtime start, JIT, connection pools
        for _ in range(ROUNDS):
            for name, e in envs.items():
                assert e.proc is not None
                res = wrk(e.port, seconds, e.proc.pid)
                res["cpu_us_per_req"] = res["envoy_cpu_us"]
                res["worker_cpu_us_per_req"] = res["envoy_worker_cpu_us"]
                res["runtime_cpu_us_per_req"] = res["envoy_runtime_cpu_us"]
                samples.setdefault(name, []).append(res)
    finally:
        for e in envs.values():
            e.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    results = {
        name: {
            k: median([r[k] for r in runs])
            for k in (
                "rps",
                "p50_us",
                "p99_us",
                "cpu_us_per_req",
                "worker_cpu_us_per_req",
                "runtime_cpu_us_per_req",
            )
        }
        for name, runs in samples.items()
    }
    base = results["direct"]
    rows = [
        [
            name,
            f"{r['rps']:,.0f}",
            f"{r['rps'] / base['rps']:.2f}",
            f"{r['p50_us']:.0f}",
            f"{r['p99_us']:.0f}",
            f"{r['cpu_us_per_req']:.1f}",
            f"{r['worker_cpu_us_per_req']:.1f}",
            f"{r['runtime_cpu_us_per_req']:.1f}",
            f"{r['cpu_us_per_req'] / base['cpu_us_per_req']:.2f}",
        ]
        for name, r in results.items()
    ]
    ratios = {
        "lua_mode_python_vs_direct": round(results["lua_mode_python"]["rps"] / base["rps"], 3),
        "lua_mode_cpu_vs_bridge_cpu": round(
            results["lua_mode_python"]["cpu_us_per_req"]
            / results["bridge_python"]["cpu_us_per_req"],
            3,
        ),
    }
    print_table(
        [
            "variant",
            "req/s",
            "vs direct",
            "p50 us",
            "p99 us",
            "cpu us/req",
            "worker",
            "runtime",
            "cpu vs direct",
        ],
        rows,
    )
    print()
    targets = {"lua_mode_python_vs_direct": ">= 0.70", "lua_mode_cpu_vs_bridge_cpu": "<= 0.40"}
    for k, v in ratios.items():
        print(f"{k}: {v}  (target {targets[k]})")
    path = write_result(
        "lua_mode",
        {
            "benchmark": "lua_mode",
            "ratios": ratios,
            "targets": targets,
            "results": results,
            "params": {
                "seconds": seconds,
                "rounds": ROUNDS,
                "wrk": f"-t1 -c{CONNECTIONS}",
                "envoy_concurrency": 1,
                "body": "hello",
            },
            "machine": {"cpus": os.cpu_count()},
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
