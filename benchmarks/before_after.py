"""make bench-before-after: the same benchmarks on two revisions, interleaved, so
a change's cost is measured in one run on one machine in one state.

    python benchmarks/before_after.py --base REV [--after REV] [--rounds N]
                                      [--out FILE] [BENCH ...]

BASE (and AFTER, when given; else this working tree, as it is) is checked out
once into a worktree of its own under .cache/before-after/<sha>, with its own
venv (`make venv` in that tree).  Then, ROUNDS times, each bench runs on both
revisions back to back, base first in even rounds and after first in odd ones
(a machine that slows down during a round penalises neither side), each
revision running its own script through its own make target, under the name it
had then (OLD_NAMES).  Results go to .cache/before-after/runs/<time>/r<N>/<side>/
($BENCH_RESULTS_DIR, or copied out of trees that predate it).

For every variant and metric both sides report (CPU per request, req/s), the
figure is the median over rounds of the round's after/before ratio, written
with the medians of each side to benchmarks/results/before_after.json
("ratios": {"<bench>.<variant>.<metric>": after/before}).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "before-after"
OUT = ROOT / "benchmarks" / "results" / "before_after.json"
BENCHES = ["envoy", "lua_mode", "python_mode"]

# bench (today's name) -> (make target, result file stem) in trees from before the
# renames of 5960d6f, whose Makefile has no `bench-<today's name>` target
OLD_NAMES = {"lua_mode": ("bench-luamod", "luamod"), "python_mode": ("bench-filter", "filter")}
# variant names of those trees -> today's
OLD_VARIANTS = {"luamod_python": "lua_mode_python", "luamod_c": "lua_mode_c"}
TOLERANCE = 0.05  # issue 14: CPU per request within 5%
DEFAULT_PYTHON = "/usr/bin/python3"  # the Makefile's: its venv is .venv, any other .venv-X.Y
# the make flags of `make bench-before-after` (BASE=, OUT=, ...) must not reach the trees' makes
MAKE_ENV = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")


@dataclass
class Tree:
    side: str  # "base" or "after"
    rev: str  # as given
    sha: str
    path: Path
    subject: str
    dirty: bool = False

    def git(self, *args: str) -> str:
        out = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"git {' '.join(args)} in {self.path}: {out.stderr.strip()}")
        return out.stdout.strip()

    def target(self, bench: str) -> tuple[str, str]:
        """(make target, result stem) of `bench` in this tree."""
        target = f"bench-{bench.replace('_', '-')}"
        makefile = (self.path / "Makefile").read_text()
        if f"\n{target}:" in makefile:
            return target, bench
        if bench in OLD_NAMES and f"\n{OLD_NAMES[bench][0]}:" in makefile:
            return OLD_NAMES[bench]
        raise SystemExit(f"{self.side} {self.rev}: no make target for bench {bench!r}")

    def venv_python(self, python: str) -> Path:
        """The interpreter of the venv `make venv PYTHON=python` made in this tree
        (the Makefile's VENV rule)."""
        if python == DEFAULT_PYTHON:
            return self.path / ".venv" / "bin" / "python"
        xy = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return self.path / f".venv-{xy}" / "bin" / "python"

    def info(self) -> dict[str, Any]:
        return {"rev": self.rev, "sha": self.sha, "subject": self.subject, "dirty": self.dirty}


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def make_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in MAKE_ENV}


def prepare(side: str, rev: str | None, python: str) -> Tree:
    """The worktree of `rev` under .cache (None: this working tree), venv built."""
    if rev is None:
        sha = git("rev-parse", "HEAD")
        tree = Tree(side, "working tree", sha, ROOT, git("log", "-1", "--format=%s", sha))
        tree.dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    else:
        sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
        path = CACHE / sha[:7]
        if not path.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            git("worktree", "add", "--detach", str(path), sha)
        tree = Tree(side, rev, sha, path, git("log", "-1", "--format=%s", sha))
        if tree.git("rev-parse", "HEAD") != sha:
            raise SystemExit(f"{path} is not at {sha}: remove it (git worktree remove)")
    print(f"== {side}: {tree.rev} {sha[:10]} {tree.subject[:60]} ({tree.path})", flush=True)
    subprocess.run(
        ["make", "--no-print-directory", "-C", str(tree.path), "venv", f"PYTHON={python}"],
        check=True,
        env=make_env(),
    )
    return tree


def run_bench(tree: Tree, bench: str, outdir: Path, python: str) -> dict[str, Any]:
    """One run of `bench` in `tree`; its result file's "results" (today's variant names)."""
    target, stem = tree.target(bench)
    outdir.mkdir(parents=True, exist_ok=True)
    common = (tree.path / "benchmarks" / "common.py").read_text()
    redirect = "BENCH_RESULTS_DIR" in common
    env = make_env()
    env["BENCH_RESULTS_DIR"] = str(outdir)
    print(f"-- {tree.side} {bench}: make {target}", flush=True)
    t0 = time.monotonic()
    subprocess.run(
        ["make", "--no-print-directory", "-C", str(tree.path), target, f"PYTHON={python}"],
        check=True,
        env=env,
    )
    dest = outdir / f"{stem}.json"
    if not redirect:  # a tree from before BENCH_RESULTS_DIR: move its file out, restore the tree
        rel = f"benchmarks/results/{stem}.json"
        (tree.path / rel).replace(dest)
        if tree.git("ls-files", rel):  # committed there: back to the committed file
            tree.git("checkout", "--", rel)
    data = json.loads(dest.read_text())
    print(f"-- {tree.side} {bench}: {time.monotonic() - t0:.0f}s, load {os.getloadavg()[0]:.2f}")
    return {OLD_VARIANTS.get(k, k): v for k, v in data["results"].items()}


def metrics(variant: dict[str, Any]) -> dict[str, float]:
    """The comparable figures of one variant: CPU per request and req/s."""
    return {
        k: float(v)
        for k, v in variant.items()
        if isinstance(v, int | float) and (k == "rps" or "cpu_us" in k)
    }


def is_server_cpu(key: str) -> bool:
    """A process's whole CPU per request (not its per-thread split, not the sidecar's alone)."""
    metric = key.rsplit(".", 1)[-1]
    return "cpu_us" in metric and not any(w in metric for w in ("worker", "runtime", "sidecar"))


def compare(base: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """metric -> medians of both sides and the median of the per-round after/before ratio."""
    out: dict[str, dict[str, Any]] = {}
    for variant in base[0]:
        if variant not in after[0]:
            continue
        for metric in metrics(base[0][variant]).keys() & metrics(after[0][variant]).keys():
            b = [metrics(r[variant])[metric] for r in base]
            a = [metrics(r[variant])[metric] for r in after]
            ratios = [x / y for x, y in zip(a, b, strict=True) if y > 0]
            if not ratios:  # e.g. a runtime thread's CPU that is 0 on both sides
                continue
            out[f"{variant}.{metric}"] = {
                "before": round(statistics.median(b), 3),
                "after": round(statistics.median(a), 3),
                "ratio": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
            }
    return dict(sorted(out.items()))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", required=True, help="revision before the change")
    ap.add_argument("--after", help="revision after it (default: this working tree)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--python", default=DEFAULT_PYTHON, help="the trees' PYTHON=")
    ap.add_argument("benches", nargs="*", default=BENCHES)
    args = ap.parse_args(argv)
    benches = [b for arg in args.benches for b in arg.split()]

    trees = [prepare("base", args.base, args.python), prepare("after", args.after, args.python)]
    for tree in trees:
        for bench in benches:
            tree.target(bench)  # fail now, not after an hour
    rundir = CACHE / "runs" / time.strftime("%Y%m%d-%H%M%S")
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        b: {"base": [], "after": []} for b in benches
    }
    load: list[float] = []
    failures: list[str] = []
    for rnd in range(args.rounds):
        for bench in benches:
            pair = {}
            for tree in trees if rnd % 2 == 0 else trees[::-1]:
                outdir = rundir / f"r{rnd}" / tree.side
                for attempt in (1, 2):  # one retry: a port taken by someone else's test
                    try:
                        pair[tree.side] = run_bench(tree, bench, outdir, args.python)
                        break
                    except subprocess.CalledProcessError as e:
                        failures.append(f"round {rnd} {bench} {tree.side} attempt {attempt}: {e}")
                        print(f"!! {failures[-1]}", flush=True)
                load.append(round(os.getloadavg()[0], 2))
            if len(pair) == 2:  # a pair or nothing: the ratios are per round
                for side, res in pair.items():
                    raw[bench][side].append(res)
    if not all(raw[b]["base"] for b in benches):
        raise SystemExit(f"no complete round for some bench: {failures}")

    figures = {b: compare(raw[b]["base"], raw[b]["after"]) for b in benches}
    ratios = {f"{b}.{k}": v["ratio"] for b in benches for k, v in figures[b].items()}
    outside = [k for k, v in ratios.items() if is_server_cpu(k) and abs(v - 1) > TOLERANCE]
    payload = {
        "benchmark": "before_after",
        "ratios": ratios,
        "cpu_outside_tolerance": outside,
        "failures": failures,
        "tolerance": TOLERANCE,
        "base": trees[0].info(),
        "after": trees[1].info(),
        "figures": figures,
        "params": {
            "benches": benches,
            "rounds": args.rounds,
            "complete_rounds": {b: len(raw[b]["base"]) for b in benches},
            "bench_seconds": os.environ.get("BENCH_SECONDS", "(each bench's default)"),
            "order": "per round and bench: base then after in even rounds, after then base in odd",
            "figure": "median over rounds of after/before; before/after: each side's median",
            "runs": str(rundir.relative_to(ROOT)),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_1min_after_each_run": load,
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")

    print(f"\n{'figure':58} {'before':>10} {'after':>10} {'ratio':>7}  min..max")
    for b in benches:
        for k, v in figures[b].items():
            flag = "  <-- outside 5%" if f"{b}.{k}" in outside else ""
            print(
                f"{b + '.' + k:58} {v['before']:10.1f} {v['after']:10.1f} {v['ratio']:7.3f}"
                f"  {v['ratio_min']:.3f}..{v['ratio_max']:.3f}{flag}"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
