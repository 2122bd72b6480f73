"""make bench-core: the Python runtime (echo) vs a pure-C responder, same harness.

The C test host (native/testhost) posts from several threads, each keeping a
window of calls in flight, and measures calls/s and round-trip p50/p99; the
host process's CPU time (all threads, Python's included) per call comes from
/proc. Variants run interleaved (A B A B ...) and medians are reported.
Writes benchmarks/results/core.json with "ratios": {"python_vs_c_16b": R, ...}.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    bench_seconds,
    cpu_seconds,
    median,
    print_table,
    write_result,
)
from tests.hostlib import Host, build_testhost

SIZES = {"16b": 16, "4k": 4096, "100k": 102400}
THREADS = 4
WINDOW = 16
ROUNDS = 3


def main() -> int:
    seconds = bench_seconds(3.0)
    exe = build_testhost(Path(tempfile.mkdtemp(prefix="bench-core-")))
    host = Host(exe)
    host.ok("load py aioresty tests.apps.echoapp")
    host.ok("load c ffi_c_echo -")
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    for size_name, size in SIZES.items():
        for _ in range(ROUNDS):
            for variant, rt in (("python", "py"), ("c", "c")):
                cpu0 = cpu_seconds(host.proc.pid)
                line = host.send(
                    f"bench {rt} echo {THREADS} {seconds} {size} {WINDOW}", seconds + 120
                )
                cpu = cpu_seconds(host.proc.pid) - cpu0
                assert line.startswith("bench "), line
                res = json.loads(line[len("bench ") :])
                if res["errors"] or res["mismatch"]:
                    raise SystemExit(f"bench {variant} {size_name}: {res}")
                res["cpu_us_per_call"] = cpu / max(res["calls"], 1) * 1e6
                samples.setdefault((variant, size_name), []).append(res)
    last = host.close()
    if last != "exit tasks=0 queues=0":
        raise SystemExit(f"host leaked: {last}")

    results: dict[str, dict[str, float]] = {}
    rows = []
    for (variant, size_name), runs in samples.items():
        agg = {
            key: median([r[key] for r in runs])
            for key in ("calls_per_s", "p50_us", "p99_us", "cpu_us_per_call")
        }
        results[f"{variant}_{size_name}"] = agg
        rows.append(
            [
                variant,
                size_name,
                f"{agg['calls_per_s']:,.0f}",
                f"{agg['p50_us']:.1f}",
                f"{agg['p99_us']:.1f}",
                f"{agg['cpu_us_per_call']:.2f}",
            ]
        )
    ratios = {
        f"python_vs_c_{s}": round(
            results[f"python_{s}"]["calls_per_s"] / results[f"c_{s}"]["calls_per_s"], 3
        )
        for s in SIZES
    }
    print_table(["runtime", "size", "calls/s", "p50 us", "p99 us", "cpu us/call"], rows)
    print()
    for k, v in ratios.items():
        print(f"{k}: {v}")
    path = write_result(
        "core",
        {
            "benchmark": "core",
            "ratios": ratios,
            "results": results,
            "params": {
                "threads": THREADS,
                "window": WINDOW,
                "seconds": seconds,
                "rounds": ROUNDS,
                "sizes": SIZES,
            },
            "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
