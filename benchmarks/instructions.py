"""make bench-instructions [BASE=rev] [AFTER=rev] [ROUNDS=3]: instructions per
request of the Envoy modes, counted by callgrind, on one revision or two.

    python benchmarks/instructions.py [--base REV] [--after REV] [--rounds N]
                                      [--requests N] [--keep DIR]

CPU seconds per request move by about 5 % between runs on a shared 2-CPU host
(benchmarks/results/before_after.json: its controls); an instruction count does
not depend on what else the machine runs.  For each revision (BASE and AFTER in
worktrees of their own, prepared as `make bench-before-after` prepares them;
AFTER defaults to this working tree; without BASE, only this tree) and each
Envoy mode -- bridge (the stock Lua filter), lua (aioresty's LuaJIT filter),
python (the Python HTTP filter) -- this runs Envoy (--concurrency 1) under
`valgrind --tool=callgrind`, with that revision's own aioresty: its venv,
native libraries, Lua files and config builders (TREE_SIDE, run by the
revision's interpreter, uses only functions every revision since 5034d3c has).

Per mode: WARMUP requests of each variant (the runtimes loaded and warm), then
per variant `callgrind_control --zero`, REQUESTS requests one after another on
one keep-alive connection, `callgrind_control --dump`.  The dump's total is
every instruction of every Envoy thread in that window: the worker, the main
thread (metrics flushes), aioresty's runtime thread and its Python.  Idle
instructions (Envoy's timers, the Python runtime's heartbeat and watchdog) are
counted the same way over a window with no request, after the warm-up; the
per-request figure subtracts them for the window's length (under callgrind a
request takes about 1 ms, so a cost per second would otherwise count as a
cost per call).  Each window ends SETTLE_S after its last request: Envoy's
main thread records the calls into Envoy's histograms at the next metrics
flush (every second), and that belongs to the window's calls.  Rounds
alternate the revisions' order; figures are medians, ratios the median of
each round's after/base.  BENCH_SECONDS sets REQUESTS (400 a second).

Not counted: the kernel's work (a syscall is one instruction here), cache misses
and waiting; those are in CPU seconds (make bench-before-after), not here.

Variants: direct (a direct_response route in the same listener: no aioresty
code; its ratio is the method's control), python and c (the echo handler of an
async Python app, the C echo runtime) in the bridge and lua modes, and
python.passthrough (a filter hook that returns None).  Writes
benchmarks/results/instructions.json: "ratios" (after/base per variant), both
sides' medians and every round; with --keep, each variant's dump of the last
round, for callgrind_annotate.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import before_after
from benchmarks.bench_lua_mode import C_RT, CALL
from benchmarks.common import bench_seconds, free_port, stop_process, wait_until, write_result

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.05  # issue 14: CPU per request within 5 %
PAYLOAD = "hello"  # what bench_lua_mode.CALL sends and checks
# the route scripts: bench-lua-mode's, the Python one calling APP's echo
SCRIPTS = {"python": CALL % '"aioresty", "instr_app"', "c": CALL % C_RT}
# sequential requests a second under callgrind (the Python variants; C and direct are faster):
# BENCH_SECONDS sets the requests per variant through it
REQUESTS_PER_SECOND = 400
# Envoy's main thread records a window's calls into Envoy's histograms at the module's next
# metrics flush (every second, native/envoy/metrics.h AR_METRICS_FLUSH_MS): each window waits
# this long after its last request, so that its own calls' flush falls inside it
SETTLE_S = 2.5

# The app both revisions load, written the way a user writes one (the public API
# has not changed since 5034d3c).
APP = """
from aioresty import App

app = App()


@app.handler
async def echo(req: bytes) -> bytes:
    return req


passthrough = App()


@passthrough.on_request
async def nothing(req: object) -> None:
    return None
"""

# Run by each revision's own interpreter in its tree: its config builders, environment
# and Envoy binary, through the functions both revisions have (envoy_config.build_config,
# cli.envoy_env, cli.envoy_binary, the Python filter builder under its old or new name).
TREE_SIDE = r"""
import json, sys
from pathlib import Path
from aioresty import cli, envoy_config
try:
    from aioresty import envoy_python_mode as python_mode
except ImportError:
    from aioresty import envoy_filters as python_mode

spec = json.load(sys.stdin)
direct = {"prefix": "/direct", "status": 200, "body": spec["payload"]}
out = {}
# the key that picks where scripts run: script_mode since 6089d9f, lua_mode before it
new_names = hasattr(envoy_config, "SCRIPT_MODES")
for mode, old_name in (("bridge", "stock"), ("lua", "module")):
    user = {
        "listen": "127.0.0.1:%d" % spec["ports"][mode],
        "admin": "127.0.0.1:%d" % spec["admins"][mode],
        "script_mode" if new_names else "lua_mode": mode if new_names else old_name,
        "lua": {k: {"inline": code} for k, code in spec["scripts"].items()},
        "routes": [direct, {"prefix": "/python", "lua": "python"}, {"prefix": "/c", "lua": "c"}],
    }
    out[mode] = envoy_config.build_config(user, spec["dir"])
# the python mode: the same listener, the filter in front of direct_response routes
user = {
    "listen": "127.0.0.1:%d" % spec["ports"]["python"],
    "admin": "127.0.0.1:%d" % spec["admins"]["python"],
    "routes": [dict(direct, prefix="/")],
}
config = envoy_config.build_config(user, spec["dir"])
hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
filters = hcm["typed_config"]["http_filters"]
filters.insert(len(filters) - 1, python_mode.python_filter("instr_app:passthrough"))
out["python"] = config
env = cli.envoy_env({"pythonpath": [spec["dir"]]}, Path(spec["dir"]))
print(json.dumps({"configs": out, "env": env, "envoy": cli.envoy_binary()}))
"""

VARIANTS = {
    "bridge": ["direct", "python", "c"],
    "lua": ["direct", "python", "c"],
    "python": ["passthrough"],
}
PATHS = {"direct": "/direct", "python": "/python", "c": "/c", "passthrough": "/"}


class Counted:
    """Envoy of one tree and mode under callgrind."""

    def __init__(self, tree: before_after.Tree, mode: str, work: Path) -> None:
        self.tree, self.mode, self.dir = tree, mode, work / f"{tree.side}-{mode}"
        self.dir.mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, envoy: str, config: dict[str, Any], env: dict[str, str], admin: int) -> None:
        cfg = self.dir / "envoy.json"
        cfg.write_text(json.dumps(config))
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.dir}/cg.%p",
            "--dump-line=no",
            "--compress-strings=no",
            "--compress-pos=no",
            envoy,
            "-c",
            str(cfg),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ]
        self.log = open(self.dir / "envoy.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=self.dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.tree.side} {self.mode}: envoy exited:\n{self.tail()}")
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
            try:
                c.request("GET", "/ready")
                return c.getresponse().status == 200
            except OSError:
                return False
            finally:
                c.close()

        wait_until(ready, 300, f"{self.tree.side} {self.mode}: Envoy /ready under valgrind")

    def tail(self) -> str:
        log = self.dir / "envoy.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"

    def control(self, flag: str) -> None:
        assert self.proc is not None
        subprocess.run(
            ["callgrind_control", flag, str(self.proc.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def window(
        self,
        requests: int,
        path: str,
        conn: http.client.HTTPConnection,
        keep: Path | None = None,
    ) -> tuple[int, float]:
        """(instructions, seconds) of `requests` sequential requests and SETTLE_S
        after them (0 requests: idle); the dump is moved to `keep`
        (callgrind_annotate reads it), else deleted."""
        self.control("--zero")
        t0 = time.monotonic()
        want = PAYLOAD.encode()
        for _ in range(requests):
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or body != want:
                raise RuntimeError(f"{self.mode} {path}: {r.status} {body[:200]!r}")
        time.sleep(SETTLE_S)
        seconds = time.monotonic() - t0
        before = set(self.dir.glob("cg.*"))
        self.control("--dump")  # returns once the dump is written
        new = set(self.dir.glob("cg.*")) - before
        if len(new) != 1:  # one file: --separate-threads=no sums every thread
            raise RuntimeError(f"{self.mode}: callgrind wrote {sorted(new)}")
        f = new.pop()
        m = re.search(r"^totals:\s+(\d+)", f.read_text(errors="replace"), re.M)
        if not m:
            raise RuntimeError(f"{f}: no totals line")
        if keep:
            keep.parent.mkdir(parents=True, exist_ok=True)
            f.replace(keep)
        else:
            f.unlink()
        return int(m.group(1)), seconds

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=120)
            self.log.close()


def count(
    tree: before_after.Tree,
    interpreter: str,
    work: Path,
    requests: int,
    warmup: int,
    keep: Path | None,
) -> dict[str, Any]:
    """One round on one revision: {"<mode>.<variant>": instructions per request,
    "<mode>.idle_per_s": idle instructions a second}."""
    venv_python = tree.venv_python(interpreter)
    app_dir = work / f"{tree.side}-app"
    app_dir.mkdir(parents=True)
    (app_dir / "instr_app.py").write_text(APP)
    ports = {m: free_port() for m in VARIANTS}
    admins = {m: free_port() for m in VARIANTS}
    spec = {
        "ports": ports,
        "admins": admins,
        "dir": str(app_dir),
        "payload": PAYLOAD,
        "scripts": SCRIPTS,
    }
    made = subprocess.run(
        [str(venv_python), "-c", TREE_SIDE],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=tree.path,
        env=dict(before_after.make_env(), PYTHONPATH=str(tree.path)),
    )
    if made.returncode != 0:
        raise SystemExit(f"{tree.side}: config: {made.stderr[-2000:]}")
    built = json.loads(made.stdout)
    out: dict[str, Any] = {}
    for mode, variants in VARIANTS.items():
        e = Counted(tree, mode, work)
        try:
            e.start(built["envoy"], built["configs"][mode], built["env"], admins[mode])
            conn = http.client.HTTPConnection("127.0.0.1", ports[mode], timeout=120)
            for v in variants:  # every runtime loaded and warm before the idle window
                e.window(warmup, PATHS[v], conn)
            # idle: Envoy's timers and the loaded runtimes' own (the Python runtime's
            # heartbeat and watchdog, 20 a second each): a cost per second, not per call
            idle, idle_s = e.window(0, "/", conn)
            out[f"{mode}.idle_per_s"] = round(idle / idle_s)
            for v in variants:
                dump = keep / f"{tree.side}.{mode}.{v}.callgrind" if keep else None
                total, seconds = e.window(requests, PATHS[v], conn, dump)
                per = (total - idle / idle_s * seconds) / requests
                out[f"{mode}.{v}"] = round(per)
                print(
                    f"{tree.side} {mode}.{v}: {per:,.0f} instructions/request "
                    f"({seconds:.1f} s for {requests})",
                    flush=True,
                )
            conn.close()
        except Exception:
            print(e.tail(), file=sys.stderr)
            raise
        finally:
            e.stop()
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", help="revision before the change (default: none, this tree only)")
    ap.add_argument("--after", help="revision after it (default: this working tree)")
    ap.add_argument(
        "--requests",
        type=int,
        default=round(REQUESTS_PER_SECOND * bench_seconds(5.0)),
        help="per variant and round (default: BENCH_SECONDS' worth, 2000 for 5 s)",
    )
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--keep",
        type=Path,
        help="keep each variant's dump of the last round here (<side>.<mode>.<variant>.callgrind)",
    )
    ap.add_argument("--python", default=before_after.DEFAULT_PYTHON, help="the trees' PYTHON=")
    args = ap.parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is required (apt install valgrind)")
    trees = [before_after.prepare("after", args.after, args.python)]
    if args.base:
        trees.insert(0, before_after.prepare("base", args.base, args.python))
    rounds: dict[str, list[dict[str, int]]] = {t.side: [] for t in trees}
    work = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    try:
        for rnd in range(args.rounds):  # base first in even rounds, after first in odd ones
            for tree in trees if rnd % 2 == 0 else trees[::-1]:
                rounds[tree.side].append(
                    count(
                        tree, args.python, work / f"r{rnd}", args.requests, args.warmup, args.keep
                    )
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = list(rounds[trees[-1].side][0])
    medians = {
        side: {k: round(statistics.median(r[k] for r in runs)) for k in keys}
        for side, runs in rounds.items()
    }
    figures: dict[str, dict[str, Any]] = {}
    if args.base:
        for k in keys:
            if k.endswith("idle_per_s"):
                continue
            per_round = [a[k] / b[k] for b, a in zip(rounds["base"], rounds["after"], strict=True)]
            figures[k] = {
                "base": medians["base"][k],
                "after": medians["after"][k],
                "ratio": round(statistics.median(per_round), 4),
                "ratio_min": round(min(per_round), 4),
                "ratio_max": round(max(per_round), 4),
            }
    ratios = {k: v["ratio"] for k, v in figures.items()}
    outside = [k for k, v in ratios.items() if abs(v - 1) > TOLERANCE]
    payload = {
        "benchmark": "instructions",
        "ratios": ratios,
        "outside_tolerance": outside,
        "tolerance": TOLERANCE,
        "figures": figures,
        "instructions_per_request": medians,
        "rounds": rounds,
        "revisions": {t.side: t.info() for t in trees},
        "params": {
            "requests": args.requests,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "payload": PAYLOAD,
            "envoy": "--concurrency 1, under valgrind --tool=callgrind",
            "figure": "median over rounds of after/base; base/after: each side's median",
        },
    }
    path = write_result("instructions", payload)
    for k, v in figures.items():
        print(
            f"{k:22} {v['base']:>10,} {v['after']:>10,} {v['ratio']:7.4f}"
            f"  {v['ratio_min']:.4f}..{v['ratio_max']:.4f}"
            + ("  <-- outside 5%" if k in outside else "")
        )
    if not figures:
        for k, n in medians[trees[0].side].items():
            print(f"{k:22} {n:>10,}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
