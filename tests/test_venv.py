"""Venvs and interpreters.

Venv discovery: aioresty and the user's app pip-installed in a fresh venv just
work.  No AIORESTY_VENV, VIRTUAL_ENV or PYTHONPATH: the loader finds the venv it
is installed in (a pyvenv.cfg above libaioresty.so) and runs the app from there.

The Python a proxy embeds is always the venv's own interpreter (its libpython,
its stdlib): aioresty/_lib holds one loader per interpreter built there
(native/python/build.mk), the shim picks the venv's, and a mismatch fails the
load with a clear message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from aioresty.cli import envoy_binary
from tests.democheck import check_demo_output
from tests.hostlib import LIB_DIR, ROOT, Host, host_env
from tests.netutil import free_port


def test_fresh_venv_with_aioresty_installed(tmp_path: Path, testhost_exe: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # this project's pip, installing into the new venv (non-editable, native build included)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run(
        [*pip, str(ROOT), str(ROOT / "tests" / "apps" / "venvapp")], check=True, timeout=600
    )
    site = next((venv / "lib").glob("python3*/site-packages"))
    core = site / "aioresty" / "_lib" / "libaioresty_core.so"
    assert core.is_file()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "AIORESTY_VENV", "PYTHONPATH", "PYTHONHOME")
    }
    h = Host(testhost_exe, core=core, env=env)
    try:
        h.ok("load v aioresty venvapp_handlers")
        assert h.call("v", "where", "empty").text == str(venv)
        # a lua-resty-ffi style runtime loads with no aioresty-specific environment
        # either: the loader finds its own venv (issue 11, point 5)
        legacy = ROOT / "examples" / "python" / "ffi" / "echo"
        h.ok(f"load l resty_ffi_python {legacy},init")
        assert h.call("l", "echo", "text:hi").text == "hi"
    finally:
        last = h.close()
    assert last == "exit tasks=0 queues=0", h.stderr
    # the Envoy demo runs from the installed package, outside the repository
    # (issue 12, point 5); Envoy itself from $ENVOY, as a user may point it
    demo = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "aioresty.demo",
            "--check",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin",
            f"127.0.0.1:{free_port()}",
        ],
        cwd=tmp_path,
        env={**env, "ENVOY": envoy_binary()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    check_demo_output(demo.stdout)


# -- the embedded interpreter is the venv's own ---------------------------------------------

EMBED_INFO = """
import json, os, sys

async def info(req: bytes) -> str:
    with open("/proc/self/maps") as f:
        libpython = sorted({line.split()[-1] for line in f if "/libpython" in line})
    return json.dumps({
        "version": sys.version,
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
        "executable": sys.executable,
        "os": os.__file__,
        "libpython": libpython,
    })
"""


def _libpython() -> str:
    """The libpython of the interpreter running the tests."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    return os.path.realpath(os.path.join(libdir, soname))


def _loader() -> Path:
    """This interpreter's Python loader in aioresty/_lib (native/python/build.mk)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "native" / "python" / "pyinfo.py")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    path = LIB_DIR / f"libaioresty_python{out[0]}-{out[1]}.so"
    assert path.is_file(), f"{path} not built"
    return path


def _embed_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "embedinfo.py").write_text(EMBED_INFO)
    return host_env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), **extra)


def _embedded(testhost_exe: Path, env: dict[str, str], lib: str = "aioresty") -> dict[str, Any]:
    h = Host(testhost_exe, env=env)
    try:
        h.ok(f"load e {lib} embedinfo")
        a = h.call("e", "info", "empty")
        assert a.rc == 0, a.text + h.stderr
        info: dict[str, Any] = json.loads(a.text)
    finally:
        last = h.close()
    assert last == "exit tasks=0 queues=0", h.stderr
    return info


def test_embedded_python_is_the_venvs(tmp_path: Path, testhost_exe: Path) -> None:
    """The proxy's Python (through the shim hosts load, libaioresty.so) is the one running
    the tests, whatever venv that is (.venv, .venv-3.13): same version, prefixes, stdlib
    and libpython."""
    assert sys.prefix != sys.base_prefix, "run the tests in a venv (make test)"
    info = _embedded(testhost_exe, _embed_env(tmp_path))
    assert info["version"] == sys.version
    assert info["prefix"] == sys.prefix
    assert info["base_prefix"] == sys.base_prefix
    assert Path(info["executable"]).parent == Path(sys.prefix) / "bin"
    assert os.path.realpath(info["os"]) == os.path.realpath(os.__file__)
    assert info["libpython"] == [_libpython()]


def test_libpython_comes_from_rpath_not_ld_library_path(tmp_path: Path, testhost_exe: Path) -> None:
    """Another libpython of the same soname on LD_LIBRARY_PATH is not picked up (DT_RPATH);
    one already in the process (LD_PRELOAD) makes the load fail, saying so."""
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(_libpython(), other / sysconfig.get_config_var("INSTSONAME"))
    info = _embedded(testhost_exe, _embed_env(tmp_path, LD_LIBRARY_PATH=str(other)))
    assert info["libpython"] == [_libpython()]

    env = _embed_env(tmp_path, LD_PRELOAD=str(other / sysconfig.get_config_var("INSTSONAME")))
    h = Host(testhost_exe, env=env)
    try:
        assert h.send("load e aioresty embedinfo").startswith("err ")
    finally:
        h.close()
    assert f"this Python loader is linked to {_libpython()}, but the process uses" in h.stderr


def _fake_venv(tmp_path: Path, version: str) -> Path:
    """A venv whose base interpreter lives elsewhere (as a pyenv one would)."""
    home = tmp_path / "elsewhere" / "bin"
    home.mkdir(parents=True)
    venv = tmp_path / "fake-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(
        f"home = {home}\ninclude-system-site-packages = false\nversion = {version}\n"
    )
    return venv


def test_venv_of_another_interpreter_fails_clearly(tmp_path: Path, testhost_exe: Path) -> None:
    """A venv of an interpreter aioresty/_lib has no loader for: the shim says which one is
    missing; this interpreter's loader, loaded by its path, refuses the venv (it would run
    this libpython with the other interpreter's stdlib)."""
    version = ".".join(map(str, sys.version_info[:3]))
    venv = _fake_venv(tmp_path, version)
    home = os.path.realpath(venv.parent / "elsewhere" / "bin")
    xy = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for lib in ("aioresty", "resty_ffi_python"):
        h = Host(testhost_exe, env=_embed_env(tmp_path, AIORESTY_VENV=str(venv)))
        try:
            assert h.send(f"load e {lib} embedinfo").startswith("err ")
        finally:
            h.close()
        assert f"no Python loader in {LIB_DIR}" in h.stderr, h.stderr
        assert f"for the interpreter of venv '{venv}' (Python {xy} in {home})" in h.stderr
        assert "Install aioresty into that venv" in h.stderr

    h = Host(testhost_exe, env=_embed_env(tmp_path, AIORESTY_VENV=str(venv)))
    try:
        assert h.send(f"load e {_loader()} embedinfo").startswith("err ")
    finally:
        h.close()
    assert "this Python loader is built for Python" in h.stderr, h.stderr
    assert f"but the venv '{venv}' is of Python {xy} in {home}" in h.stderr
