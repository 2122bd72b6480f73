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
from tests.democheck import run_demo_check
from tests.hostlib import LIB_DIR, ROOT, VENV, Host, host_env


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
    run_demo_check(venv / "bin" / "python", tmp_path, {**env, "ENVOY": envoy_binary()})


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
    path = LIB_DIR / f"libaioresty_python{sys.version_info[0]}.{sys.version_info[1]}.so"
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


def test_loader_links_no_libpython() -> None:
    """The loader names no libpython and no build-time path: the shim loads the venv's own
    at run time (so a wheel is portable; auditwheel has nothing to graft)."""
    out = subprocess.run(
        ["readelf", "-d", str(_loader())], check=True, capture_output=True, text=True
    ).stdout
    assert "libpython" not in out
    assert "RPATH" not in out and "RUNPATH" not in out


def test_libpython_is_the_interpreters_not_ld_library_path(
    tmp_path: Path, testhost_exe: Path
) -> None:
    """Another libpython of the same soname on LD_LIBRARY_PATH is not picked up (the shim
    loads the interpreter's by its path); one already in the process (LD_PRELOAD) makes
    the load fail, saying so."""
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(_libpython(), other / sysconfig.get_config_var("INSTSONAME"))
    info = _embedded(testhost_exe, _embed_env(tmp_path, LD_LIBRARY_PATH=str(other)))
    assert info["libpython"] == [_libpython()]

    copy = other / sysconfig.get_config_var("INSTSONAME")
    h = Host(testhost_exe, env=_embed_env(tmp_path, LD_PRELOAD=str(copy)))
    try:
        assert h.send("load e aioresty embedinfo").startswith("err ")
    finally:
        h.close()
    assert f"the process already has {copy} loaded" in h.stderr, h.stderr
    assert f"not {_libpython()} of the venv '{VENV}'" in h.stderr


def _fake_venv(tmp_path: Path, version: str, home: Path | None = None) -> Path:
    """A venv whose base interpreter lives elsewhere (as a pyenv one would)."""
    if home is None:
        home = tmp_path / "elsewhere" / "bin"
        home.mkdir(parents=True, exist_ok=True)
    venv = tmp_path / f"fake-venv-{version}"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(
        f"home = {home}\ninclude-system-site-packages = false\nversion = {version}\n"
    )
    return venv


def _load_fails(testhost_exe: Path, env: dict[str, str], lib: str = "aioresty") -> str:
    h = Host(testhost_exe, env=env)
    try:
        line = h.send(f"load e {lib} embedinfo")
        assert line.startswith("err "), line
    finally:
        h.close()
    return line + "\n" + h.stderr


def test_venv_of_another_interpreter_fails_clearly(tmp_path: Path, testhost_exe: Path) -> None:
    """Whatever does not fit fails the load with one line saying why, through both shims:
    a Python X.Y aioresty/_lib has no loader for, an interpreter without a shared
    libpython, a libpython of another version than the venv's; the loader proper refuses
    to be loaded without its shim."""
    xy = f"{sys.version_info[0]}.{sys.version_info[1]}"
    version = ".".join(map(str, sys.version_info[:3]))
    old = _fake_venv(tmp_path, "3.9.18")
    for lib in ("aioresty", "resty_ffi_python"):
        err = _load_fails(testhost_exe, _embed_env(tmp_path, AIORESTY_VENV=str(old)), lib)
        assert f"no Python loader in {LIB_DIR} for Python 3.9 (of the venv '{old}')" in err, err
        assert "Install aioresty into that venv" in err

    static = _fake_venv(tmp_path, version)
    home = os.path.realpath(tmp_path / "elsewhere" / "bin")
    err = _load_fails(testhost_exe, _embed_env(tmp_path, AIORESTY_VENV=str(static)))
    assert f"the Python {version} in {home} has no shared libpython (looked for" in err, err
    assert "--enable-shared" in err

    real_home = Path(sys.base_prefix) / "bin"
    other = _fake_venv(tmp_path, f"{xy}.99", home=real_home)
    err = _load_fails(testhost_exe, _embed_env(tmp_path, AIORESTY_VENV=str(other)))
    assert f"{_libpython()} is Python {version}, but the venv '{other}' is of Python {xy}.99" in (
        err
    ), err

    err = _load_fails(testhost_exe, _embed_env(tmp_path), lib=str(_loader()))
    assert "undefined symbol: Py" in err or "loaded directly" in err, err


def test_invalid_venv_is_an_error(tmp_path: Path, testhost_exe: Path) -> None:
    """$AIORESTY_VENV / $VIRTUAL_ENV naming no venv is an error naming it (never a
    silent fallback to another Python)."""
    missing = tmp_path / "no-such-venv"
    err = _load_fails(testhost_exe, _embed_env(tmp_path, AIORESTY_VENV=str(missing)))
    assert f"$AIORESTY_VENV '{missing}' does not exist" in err, err
    plain = tmp_path / "plain-dir"
    plain.mkdir()
    err = _load_fails(testhost_exe, _embed_env(tmp_path, AIORESTY_VENV=str(plain)))
    assert f"$AIORESTY_VENV '{plain}' is not a venv (no pyvenv.cfg in it)" in err, err
    env = _embed_env(tmp_path, VIRTUAL_ENV=str(plain))
    env.pop("AIORESTY_VENV")
    err = _load_fails(testhost_exe, env)
    assert f"$VIRTUAL_ENV '{plain}' is not a venv" in err, err


SWITCH_APP = """
import sys
import aioresty

async def where(req: bytes) -> str:
    return aioresty.__file__ + "|" + sys.prefix
"""


def test_aioresty_venv_switches_fully(tmp_path: Path, testhost_exe: Path) -> None:
    """AIORESTY_VENV=<another venv>: Python runs from that venv, its site-packages first;
    the aioresty it imports is that venv's, not the one holding the loader."""
    other = tmp_path / "other-venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(other)], check=True, timeout=60
    )
    site = next((other / "lib").glob("python3*/site-packages"))
    shutil.copytree(
        ROOT / "aioresty",
        site / "aioresty",
        ignore=shutil.ignore_patterns("_lib", "__pycache__"),
    )
    (site / "aioresty" / "_lib").symlink_to(LIB_DIR)
    # its other packages (msgpack, uvloop, ...): this venv's, after its own site-packages
    (site / "deps.pth").write_text(next((VENV / "lib").glob("python3*/site-packages")).as_posix())
    (tmp_path / "switchapp.py").write_text(SWITCH_APP)
    env = host_env(AIORESTY_VENV=str(other), PYTHONPATH=str(tmp_path))
    h = Host(testhost_exe, env=env)
    try:
        h.ok("load s aioresty switchapp")
        got = h.call("s", "where", "empty").text
    finally:
        last = h.close()
    assert last == "exit tasks=0 queues=0", h.stderr
    pkg, prefix = got.split("|")
    assert pkg == str(site / "aioresty" / "__init__.py"), got
    assert prefix == str(other)
