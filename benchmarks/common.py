"""Shared helpers for the benchmarks: CPU accounting, medians, result files."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
from pathlib import Path
from typing import Any

from tests.netutil import free_port, wait_until  # noqa: F401 (re-exported)

RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def bench_seconds(default: float) -> float:
    """Seconds per measured run; $BENCH_SECONDS shortens (or lengthens) it."""
    value = os.environ.get("BENCH_SECONDS")
    return float(value) if value else default


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# Thread groups of a proxy process, by OS thread name: Envoy names its workers
# "wrk:worker_N", aioresty names runtime threads "ar-<name>" (the Python runtime
# and the C echo runtime).
THREAD_GROUPS = {"worker": "wrk:worker", "runtime": "ar-"}


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """utime + stime per thread group (THREAD_GROUPS) of a live process."""
    out = dict.fromkeys(THREAD_GROUPS, 0.0)
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        for group, prefix in THREAD_GROUPS.items():
            if name.startswith(prefix):
                out[group] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def results_dir() -> Path:
    """benchmarks/results, or $BENCH_RESULTS_DIR (benchmarks/before_after.py runs
    each revision's benches into a directory of its own)."""
    value = os.environ.get("BENCH_RESULTS_DIR")
    return Path(value) if value else RESULTS


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """<results_dir()>/<name>.json, with the machine's load averages at the
    end of the run (other work on a 2-core machine moves every figure)."""
    machine = payload.get("machine", {})
    if not isinstance(machine, dict):
        machine = {"description": str(machine)}
    machine.setdefault("loadavg_1_5_15", [round(x, 2) for x in os.getloadavg()])
    payload["machine"] = machine
    results = results_dir()
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


# ---------------------------------------------------------------- processes


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            return proc.wait(timeout=5)
    return proc.returncode


# ---------------------------------------------------------------------- wrk

_UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"bad wrk time {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """rps, requests, p50_us, p99_us, non2xx, socket_errors of `wrk --latency` output."""
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if not m or not n:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    res = {"rps": float(m.group(1)), "requests": float(n.group(1))}
    for pct in ("50", "99"):
        p = re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", out, re.M)
        if not p:
            raise RuntimeError(f"no p{pct} in wrk output:\n{out}")
        res[f"p{pct}_us"] = _us(p.group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = float(bad.group(1)) if bad else 0.0
    err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = float(sum(int(x) for x in err.groups())) if err else 0.0
    return res


def run_wrk(
    url: str,
    seconds: float,
    *,
    connections: int = 16,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    pids: dict[str, int] | None = None,
) -> dict[str, float]:
    """One wrk run; with `pids`, adds "<name>_cpu_us": that process's CPU per
    request, and "<name>_<group>_cpu_us" per thread group (THREAD_GROUPS)."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    pids = pids or {}
    cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
    groups0 = {k: thread_cpu_seconds(pid) for k, pid in pids.items()}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
    for k, pid in pids.items():
        for group, sec in thread_cpu_seconds(pid).items():
            cpu[f"{k}_{group}"] = sec - groups0[k][group]
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    res = parse_wrk(proc.stdout)
    n = max(res["requests"], 1.0)
    for k, sec in cpu.items():
        res[f"{k}_cpu_us"] = sec / n * 1e6
    return res
