"""Where aioresty's native libraries and Lua files are, for proxies to load."""

from __future__ import annotations

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
