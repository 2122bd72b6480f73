"""The ``aioresty`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__, paths


def _cmd_paths(args: argparse.Namespace) -> int:
    info = {
        "lib_dir": str(paths.lib_dir()),
        "lua_dir": str(paths.lua_dir()),
        "core": str(paths.lib_dir() / "libaioresty_core.so"),
        "python_loader": str(paths.lib_dir() / "libaioresty.so"),
        "python": sys.executable,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:14} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aioresty", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aioresty {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("paths", help="print where the native libraries and Lua files are")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_paths)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
