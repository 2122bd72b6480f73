"""Build glue: every native library is built by native/Makefile as part of the
Python build and installed inside the package (aioresty/_lib), next to the
aioresty._native extension; the Lua files go to aioresty/_lua, the demo's
files (examples/envoy, examples/python) to aioresty/_examples.

The build is for the interpreter running it (PYTHON=sys.executable): only the
Python loader proper depends on its X.Y (libaioresty_python<X.Y>.so,
native/python/build.mk; linked to no libpython), so editable installs of
several interpreters (.venv, .venv-3.13) share aioresty/_lib.

A wheel build checks what it needs first and builds the native libraries
before setuptools says anything: a failure is one line, first ("error:
aioresty: ..."), then the tail of the make log.  An sdist carries the LuaJIT
source (third_party/luajit, native/luajit/source.py) so that installing it
needs no network.  The Go runtimes are never built here (make -C native go)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
PY_XY = f"{sys.version_info[0]}.{sys.version_info[1]}"
# the native build's own output, copied into the package's _lib (make is incremental here)
STAGE = ROOT / "native" / "build" / f"out-py{PY_XY}"
LOG = ROOT / "native" / "build" / f"native-py{PY_XY}.log"
BUILD_COMMANDS = {"bdist_wheel", "build", "build_ext", "editable_wheel", "develop", "install"}


def fail(msg: str) -> None:
    """One line, first, then exit (pip shows it as the build's output)."""
    print(f"error: aioresty: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def luajit_source() -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "native" / "luajit" / "source.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["native/luajit/source.py failed"]
        fail(lines[-1].removeprefix("error: "))
    return proc.stdout.strip()


def preflight() -> str:
    """What the native build needs, each missing piece one line; the LuaJIT source dir."""
    cc = os.environ.get("CC", "cc").split()[0]
    if not shutil.which(cc):
        fail(f"no C compiler '{cc}' (Debian: apt-get install build-essential)")
    if not shutil.which("make"):
        fail("no 'make' (Debian: apt-get install build-essential)")
    inc = sysconfig.get_paths()["include"]
    if not (Path(inc) / "Python.h").is_file():
        fail(f"no {inc}/Python.h: install the headers of {sys.executable} (Debian: python3-dev)")
    return luajit_source()


_built = False


def build_native() -> None:
    """native/Makefile -> STAGE (once per run); on failure the cause first, in one line."""
    global _built
    if _built:
        return
    luajit = preflight()
    STAGE.mkdir(parents=True, exist_ok=True)
    cmd = [
        "make",
        "-C",
        str(ROOT / "native"),
        f"-j{min(os.cpu_count() or 1, 4)}",
        f"OUT={STAGE}",
        f"PYTHON={sys.executable}",
        f"LUAJIT_SRC={luajit}",
    ]
    with open(LOG, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        lines = LOG.read_text(errors="replace").splitlines()
        cause = next(
            (ln for ln in lines if "error:" in ln or "Error " in ln or "not found" in ln),
            lines[-1] if lines else f"make exited {rc}",
        )
        tail = "\n".join(lines[-25:])
        print(f"error: aioresty: native build failed: {cause.strip()}", file=sys.stderr)
        print(f"(full log: {LOG}; its last lines:)\n{tail}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    _built = True


class BuildPy(build_py):
    """Never the checkout's own build products (aioresty/_lib of an editable install,
    its Go runtimes, other interpreters' loaders): the wheel gets this build's."""

    def find_data_files(self, package: str, src_dir: str) -> list[str]:
        files = super().find_data_files(package, src_dir)
        skip = (os.path.join(src_dir, "_lib") + os.sep, os.path.join(src_dir, "_native"))
        return [f for f in files if not f.startswith(skip)]


class BuildWithNative(build_ext):
    def run(self) -> None:
        build_native()
        if self.inplace:
            pkg = ROOT / "aioresty"
        else:
            pkg = Path(self.build_lib).resolve() / "aioresty"
        out = pkg / "_lib"
        out.mkdir(parents=True, exist_ok=True)
        for so in STAGE.glob("*.so"):
            if so.resolve() != (out / so.name).resolve():
                shutil.copy2(so, out / so.name)
        if not self.inplace:
            lua = pkg / "_lua"
            shutil.rmtree(lua, ignore_errors=True)
            shutil.copytree(ROOT / "lua", lua)
            # what `python -m aioresty.demo` runs, from an installed package
            examples = pkg / "_examples"
            shutil.rmtree(examples, ignore_errors=True)
            for part in ("envoy", "python", "nginx"):
                shutil.copytree(
                    ROOT / "examples" / part,
                    examples / part,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
        for ext in self.extensions:
            ext.library_dirs.append(str(out))
        super().run()


class SdistWithLuaJIT(sdist):
    """The sdist carries the LuaJIT source (third_party/luajit): no fetch when installing it."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        dest = Path(base_dir) / "third_party" / "luajit"
        if not dest.exists():
            shutil.copytree(luajit_source(), dest, ignore=shutil.ignore_patterns("*.o", "*.a"))


# before setuptools prints anything: a missing compiler, header or LuaJIT, or a failed
# native build, is the first line of the output
if BUILD_COMMANDS & set(sys.argv[1:]):
    build_native()

setup(
    ext_modules=[
        Extension(
            "aioresty._native",
            sources=["aioresty/_native.c"],
            include_dirs=["native/core"],
            libraries=["aioresty_core"],
            runtime_library_dirs=["$ORIGIN/_lib"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror", "-std=gnu11"],
        )
    ],
    cmdclass={"build_py": BuildPy, "build_ext": BuildWithNative, "sdist": SdistWithLuaJIT},
)
