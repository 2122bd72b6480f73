"""Prints the directory of the LuaJIT 2.1 source tree the private LuaJIT of the Envoy
"lua" mode is built from (native/luajit/build.mk), getting it first if needed.  On
failure: one line on stderr saying why, exit status 1.

Where it comes from, first found wins (docs/install.md, "Where LuaJIT comes from"):
  1. $LUAJIT_SRC                          a LuaJIT 2.1 source tree of your choice
  2. <source tree>/third_party/luajit     what an sdist of aioresty carries
  3. the cache, $XDG_CACHE_HOME/aioresty (default ~/.cache/aioresty)/luajit-lupa-<ver>
  4. the PyPI sdist of lupa (MIT; it carries LuaJIT 2.1 under third-party/luajit21),
     fetched with this interpreter's pip (so pip's index and proxy settings apply),
     checked against the sha256 below, its LuaJIT unpacked into the cache.

    python native/luajit/source.py [--quiet]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LUPA_VERSION = "2.8"
LUPA_SHA256 = "d8022641b9ec8ecf2c5ecbe9f47e5a70e0b87c4b5ae921b92cb02a638e0acd08"
LUPA_LUAJIT = "third-party/luajit21"
FETCH_TIMEOUT = 300  # seconds for the whole pip download
ROOT = Path(__file__).resolve().parents[2]


class SourceError(Exception):
    pass


def is_luajit(path: Path) -> bool:
    return (path / "src" / "lj_api.c").is_file() and (path / "src" / "Makefile").is_file()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aioresty" / f"luajit-lupa-{LUPA_VERSION}"


def fetch(dest: Path) -> None:
    """lupa's sdist from PyPI (pip download) -> its LuaJIT tree in dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aioresty-luajit-", dir=dest.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"lupa=={LUPA_VERSION}",
            "--no-binary",
            "lupa",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
        ]
        # lupa's setup.py builds its LuaJITs even to report its metadata; not needed here
        env = dict(os.environ, LUPA_NO_LUAJIT="true")
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=FETCH_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise SourceError(
                f"'pip download lupa=={LUPA_VERSION}' took over {FETCH_TIMEOUT}s"
            ) from None
        tarball = Path(tmp) / f"lupa-{LUPA_VERSION}.tar.gz"
        if proc.returncode != 0 or not tarball.is_file():
            lines = [
                ln
                for ln in (proc.stderr + proc.stdout).splitlines()
                if ln.strip() and not ln.startswith("WARNING: Location")
            ]
            why = next((ln for ln in lines if "rror" in ln), lines[-1] if lines else "?")
            raise SourceError(f"'pip download lupa=={LUPA_VERSION}' failed: {why.strip()}")
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        if digest != LUPA_SHA256:
            raise SourceError(f"{tarball.name} has sha256 {digest}, expected {LUPA_SHA256}")
        prefix = f"lupa-{LUPA_VERSION}/{LUPA_LUAJIT}/"
        unpacked = Path(tmp) / "luajit"
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                if not member.name.startswith(prefix) or not (member.isfile() or member.isdir()):
                    continue
                rel = member.name[len(prefix) :]
                if not rel or rel.startswith("/") or ".." in rel.split("/"):
                    continue
                target = unpacked / rel
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                target.chmod(0o755 if member.mode & 0o111 else 0o644)
        if not is_luajit(unpacked):
            raise SourceError(f"lupa-{LUPA_VERSION}.tar.gz has no LuaJIT under {LUPA_LUAJIT}")
        try:
            unpacked.rename(dest)  # atomic: concurrent builds never see half a tree
        except OSError:
            if not is_luajit(dest):
                raise


def find(quiet: bool = False) -> Path:
    env = os.environ.get("LUAJIT_SRC")
    if env:
        if not is_luajit(Path(env)):
            raise SourceError(f"LUAJIT_SRC={env} is not a LuaJIT source tree (no src/lj_api.c)")
        return Path(env).resolve()
    bundled = ROOT / "third_party" / "luajit"
    if is_luajit(bundled):
        return bundled
    cached = cache_dir()
    if not is_luajit(cached):
        if not quiet:
            print(
                f"fetching LuaJIT 2.1 (from the PyPI sdist of lupa {LUPA_VERSION}) into {cached}",
                file=sys.stderr,
            )
        fetch(cached)
    return cached


def main() -> int:
    try:
        print(find(quiet="--quiet" in sys.argv[1:]))
    except (SourceError, OSError) as e:
        print(
            f"error: cannot get the LuaJIT source of the Envoy 'lua' mode: {e} "
            "(set LUAJIT_SRC to a LuaJIT 2.1 tree, or install from aioresty's sdist, "
            "which carries one)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
