"""Where aioresty's native libraries and Lua files are, for proxies to load, and where
the CLI keeps its run state (pid files, generated configs)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def lib_dir() -> Path:
    """Directory of libaioresty_core.so, the loaders and the bundled runtimes."""
    return _PKG / "_lib"


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
