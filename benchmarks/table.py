"""make bench-table: the one table of benchmark figures, generated from
benchmarks/results/*.json (what each `make bench-<name>` wrote), into
docs/benchmarks.md and between the markers of README.md's "Benchmarks", so the
two cannot disagree.  The targets live here, once.

    python benchmarks/table.py           # rewrite both
    python benchmarks/table.py --check   # exit 1 when either is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"

# bench -> ratio -> (comparison, target): the project's targets (docs/benchmarks.md)
TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    "core": {"python_vs_c_16b": (">=", 0.30)},
    "envoy": {"lua_python_vs_direct": (">=", 0.35), "lua_python_vs_sidecar": (">=", 2.0)},
    "nginx": {
        "lua_python_vs_plain": (">=", 0.50),
        "lua_python_vs_cosocket": (">=", 1.5),
        "lua_python_vs_plain_accel": (">=", 0.80),
    },
    "nginx_seq": {  # our us per sequential call / a unix-socket cosocket peer's (pinned)
        "c_vs_uds_512_accel": ("<=", 0.5),
        "python_vs_uds_512_accel": ("<=", 0.7),
    },
    "python_mode": {
        "passthrough_vs_plain": (">=", 0.70),
        "auth_vs_extproc_rps": (">=", 5.0),
        "extproc_vs_auth_p50": (">=", 10.0),
    },
    "lua_mode": {
        "lua_mode_python_vs_direct": (">=", 0.70),
        "lua_mode_cpu_vs_bridge_cpu": ("<=", 0.40),
    },
}
ORDER = ["core", "envoy", "nginx", "nginx_seq", "python_mode", "lua_mode"]
BEFORE_AFTER = "before_after"  # make bench-before-after: a comparison of two revisions, no bench
INSTRUCTIONS = "instructions"  # make bench-instructions: counts, shown with their revisions


def load() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem in (BEFORE_AFTER, INSTRUCTIONS):
            continue
        data = json.loads(path.read_text())
        out[path.stem] = data  # results/<name>.json: make bench-<name>
    return out


def _short(subject: str, n: int = 50) -> str:
    return subject if len(subject) <= n else subject[: n - 1].rstrip() + "…"


def _comparison(name: str) -> dict[str, Any] | None:
    """results/<name>.json of a comparison (not a bench), if there is one."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _rev(r: dict[str, Any]) -> str:
    """A revision of a comparison: its short sha and subject."""
    dirty = " (uncommitted changes)" if r["dirty"] else ""
    return f"`{r['sha'][:7]}` ({_short(r['subject'])}){dirty}"


def before_after() -> str:
    """docs/benchmarks.md's "Before/after a change", figures from results/before_after.json."""
    out = [
        "## Before/after a change",
        "",
        "`make bench-before-after BASE=<rev> [AFTER=<rev>] [ROUNDS=5] [OUT=file]",
        '[BENCHES="envoy lua_mode python_mode"]` (benchmarks/before_after.py) runs the benches',
        "of two revisions on this machine in one run: BASE (and AFTER; by default this working",
        "tree as it is) is checked out once into `.cache/before-after/<sha>` with its own venv,",
        "then each bench runs on both revisions back to back, ROUNDS times (base first in even",
        "rounds, after first in odd ones), each revision with its own script under the name it",
        "had then (bench-luamod and bench-filter before 5960d6f). `BENCH_SECONDS` shortens each",
        "run; each run's result file is kept under `.cache/before-after/runs/`. For every",
        "variant's CPU per request and req/s it writes the median over rounds of each round's",
        "after/before ratio to `benchmarks/results/before_after.json` (`ratios`, both sides'",
        "medians in `figures`) and names the CPU figures outside 5% (`cpu_outside_tolerance`).",
        "Interleaving and medians matter on a 2-core machine that other work shares: the load",
        "after each run is in the file. The variants that run no aioresty code (envoy `direct`,",
        "lua_mode `direct`, python_mode `plain`) are the run's control: their ratios show the",
        "noise of that run.",
    ]
    data = _comparison(BEFORE_AFTER)
    if data is None:
        return "\n".join(out)
    base, after, params = data["base"], data["after"], data["params"]
    load = data["machine"]["load_1min_after_each_run"]
    out += [
        "",
        f"Last run: base {_rev(base)}, after {_rev(after)}; rounds {params['rounds']}, "
        f"BENCH_SECONDS {params['bench_seconds']}, 1-minute load after the runs "
        f"{min(load):g}..{max(load):g} (median {sorted(load)[len(load) // 2]:g}). "
        "Server CPU µs per request (the proxy process; `total_` adds the sidecar or ext_proc "
        "peer), req/s:",
        "",
        "| bench | variant | figure | before | after | after/before | min..max of rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    for bench, figures in data["figures"].items():
        for key, fig in figures.items():
            variant, metric = key.split(".")
            # the per-thread split stays in the file; total_ shows only where it adds a peer
            if any(w in metric for w in ("worker", "runtime", "sidecar")):
                continue
            if metric.startswith("total_") and any(
                figures.get(f"{variant}.{m}", {}).get("before") == fig["before"]
                for m in ("envoy_cpu_us_per_req", "envoy_cpu_us")
            ):
                continue
            flag = " **outside 5%**" if f"{bench}.{key}" in data["cpu_outside_tolerance"] else ""
            out.append(
                f"| {bench} | {variant} | `{metric}` | {_num(fig['before'])} "
                f"| {_num(fig['after'])} | {fig['ratio']:.3f}{flag} "
                f"| {fig['ratio_min']:.3f}..{fig['ratio_max']:.3f} |"
            )
    return "\n".join(out)


def instructions() -> str:
    """docs/benchmarks.md's "Instructions per request", from results/instructions.json."""
    out = [
        "## Instructions per request",
        "",
        "`make bench-instructions [BASE=<rev>] [AFTER=<rev>] [ROUNDS=3]`",
        "(benchmarks/instructions.py) counts, with callgrind, every instruction Envoy's",
        "threads run per request (the worker, the main thread, aioresty's runtime thread and",
        "its Python), for each Envoy mode's echo call and the Python filter's pass-through,",
        "sequential requests on one connection, idle instructions subtracted. Unlike CPU",
        "seconds, the count does not move with what else the machine runs: the rounds of one",
        "revision agree to about 0.5%, so a change's cost shows below the 5% that CPU seconds",
        "resolve on a shared 2-CPU host. Each revision runs with its own venv, native",
        "libraries, Lua files and config builders (worktrees as for `bench-before-after`).",
        "The `direct` variants run no aioresty code: their ratio is the method's control.",
    ]
    data = _comparison(INSTRUCTIONS)
    if data is None:
        return "\n".join(out)
    revs, params = data["revisions"], data["params"]
    out += [
        "",
        "Last run: "
        + ", ".join(f"{side} {_rev(r)}" for side, r in revs.items())
        + f"; {params['rounds']} rounds of {params['requests']} requests per variant:",
        "",
    ]
    if data.get("figures"):
        out += [
            "| mode.variant | base | after | after/base | min..max of rounds |",
            "|---|---|---|---|---|",
        ]
        for key, fig in data["figures"].items():
            flag = " **outside 5%**" if key in data["outside_tolerance"] else ""
            out.append(
                f"| {key} | {fig['base']:,} | {fig['after']:,} | {fig['ratio']:.4f}{flag} "
                f"| {fig['ratio_min']:.4f}..{fig['ratio_max']:.4f} |"
            )
    else:
        ((_side, counts),) = data["instructions_per_request"].items()
        out += ["| mode.variant | instructions per request |", "|---|---|"]
        out += [f"| {k} | {v:,} |" for k, v in counts.items() if not k.endswith("idle_per_s")]
    return "\n".join(out)


def _order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _verdict(bench: str, ratio: str, value: float) -> tuple[str, str]:
    target = TARGETS.get(bench, {}).get(ratio)
    if target is None:
        return "", ""
    op, bound = target
    met = value >= bound if op == ">=" else value <= bound
    return f"{op} {bound:g}", "met" if met else "**missed**"


def summary(results: dict[str, dict[str, Any]]) -> str:
    """README's table: each ratio with a target."""
    rows = ["| bench | ratio | measured | target | |", "|---|---|---|---|---|"]
    for bench in _order(list(results)):
        data = results[bench]
        ratios = {**data.get("ratios", {}), **data.get("cpu_per_request_ratios", {})}
        for ratio, value in ratios.items():
            target, verdict = _verdict(bench, ratio, value)
            if target:
                rows.append(f"| {bench} | `{ratio}` | {value:g} | {target} | {verdict} |")
    return "\n".join(rows)


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def page(results: dict[str, dict[str, Any]]) -> str:
    out = [
        "# Benchmark figures",
        "",
        "Generated by `make bench-table` from `benchmarks/results/*.json`, the files each",
        "`make bench-<name>` writes (variants interleaved, medians over rounds, on loopback; the",
        "machine and the run's parameters are in each file). The targets are the project's. What",
        "each bench measures and what its figures mean: the docs of each part (docs/core.md,",
        "docs/envoy.md, docs/nginx.md, docs/python-mode.md, docs/lua-mode.md).",
        "",
        summary(results),
    ]
    for bench in _order(list(results)):
        data = results[bench]
        out += ["", f"## {bench}", ""]
        machine = data.get("machine") or {}
        if not isinstance(machine, dict):
            machine = {"machine": machine}
        params = data.get("params") or {}
        if machine or params:
            out += [
                "Run: "
                + ", ".join(f"{k} {v}" for k, v in {**machine, **params}.items() if k != "sizes"),
                "",
            ]
        for key in ("ratios", "cpu_per_request_ratios", "ratios_of_median_rps"):
            if data.get(key):
                out += [f"`{key}`:", "", "| ratio | value | target | |", "|---|---|---|---|"]
                for ratio, value in data[key].items():
                    target, verdict = _verdict(bench, ratio, value)
                    out.append(f"| `{ratio}` | {value:g} | {target} | {verdict} |")
                out.append("")
        res = data.get("results") or {}
        if isinstance(res, dict) and res and all(isinstance(v, dict) for v in res.values()):
            cols = sorted(
                {k for v in res.values() for k, x in v.items() if not isinstance(x, dict)}
            )
            out += ["| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            for name, v in res.items():
                out.append(f"| {name} | " + " | ".join(_num(v.get(c, "")) for c in cols) + " |")
            out.append("")
    out += ["", before_after(), "", instructions()]
    return "\n".join(out).rstrip() + "\n"


def readme_with(text: str, table: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    results = load()
    new_page = page(results)
    new_readme = readme_with(README.read_text(), summary(results))
    if "--check" in argv:
        stale = [
            p.name
            for p, new in ((DOC, new_page), (README, new_readme))
            if not p.exists() or p.read_text() != new
        ]
        if stale:
            print(f"stale: {', '.join(stale)} (run make bench-table)", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new_page)
    README.write_text(new_readme)
    print(f"wrote {DOC.relative_to(ROOT)} and README.md's table from {len(results)} result(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
