"""Build glue: every native library is built by native/Makefile as part of the
Python build and installed inside the package (aioresty/_lib), next to the
aioresty._native extension; the Lua files go to aioresty/_lua, the demo's
files (examples/envoy, examples/python) to aioresty/_examples.

The build is for the interpreter running it (PYTHON=sys.executable): only the
Python loader proper depends on it, built as libaioresty_python<X.Y>-<key>.so
(native/python/build.mk), so editable installs of several interpreters (.venv,
.venv-3.13) share aioresty/_lib, each with its own loader and _native.<abi>.so."""

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class BuildWithNative(build_ext):
    def run(self) -> None:
        if self.inplace:
            pkg = ROOT / "aioresty"
        else:
            pkg = Path(self.build_lib).resolve() / "aioresty"
        out = pkg / "_lib"
        out.mkdir(parents=True, exist_ok=True)
        subprocess.check_call(
            ["make", "-C", str(ROOT / "native"), f"OUT={out}", f"PYTHON={sys.executable}"]
        )
        if not self.inplace:
            lua = pkg / "_lua"
            shutil.rmtree(lua, ignore_errors=True)
            shutil.copytree(ROOT / "lua", lua)
            # what `python -m aioresty.demo` runs, from an installed package
            examples = pkg / "_examples"
            shutil.rmtree(examples, ignore_errors=True)
            for part in ("envoy", "python"):
                shutil.copytree(
                    ROOT / "examples" / part,
                    examples / part,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
        for ext in self.extensions:
            ext.library_dirs.append(str(out))
        super().run()


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
    cmdclass={"build_ext": BuildWithNative},
)
