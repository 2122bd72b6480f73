"""Envoy configuration for aioresty's Python HTTP filter (docs/python-mode.md).

The filter is the dynamic module ``libaioresty_envoy.so`` in its ``python``
mode; its ``filter_config`` is JSON (as the ``lua`` mode's) naming the App
and the options::

    {"app": "pkg.module:app", "fail": "closed", "body_limit": 1048576, "timeout": 2.5}

(``timeout``: seconds a phase's hooks may run; absent or 0, the App's
``App(timeout=)``.)

Per route (``typed_per_filter_config``), ``{"disabled": true}`` turns it off
and ``{"app": "pkg.other:app", ...}`` runs another App (or the same one with
other options).  The old ``"app=pkg.module:app fail=closed ..."`` token form
is still read for one release; Envoy's log then warns with the JSON to write.

Functions here return plain dicts (JSON, which Envoy's YAML loader reads);
``envoy_config.environment()`` gives the environment Envoy needs (module
search path, AIORESTY_LIB_PATH, PYTHONPATH).
"""

from __future__ import annotations

import json
from typing import Any

from . import envoy_config
from .envoy_config import _addr, module_config, stats_config

FILTER_NAME = "aioresty.python"
DEFAULT_BODY_LIMIT = 1024 * 1024

_T = "type.googleapis.com/"
_DM = _T + "envoy.extensions.filters.http.dynamic_modules.v3."


def filter_config_string(
    app: str | None,
    *,
    fail_open: bool = False,
    body_limit: int | None = None,
    timeout: float | None = None,
    disabled: bool = False,
) -> str:
    """The module's filter_config text (JSON) for an App spec and options."""
    if disabled:
        return json.dumps({"disabled": True})
    if not app or any(c.isspace() or c == ";" for c in app):
        raise ValueError(f"bad app spec {app!r}: expected 'pkg.module:app'")
    config: dict[str, Any] = {"app": app, "fail": "open" if fail_open else "closed"}
    if body_limit is not None:
        if body_limit < 0:
            raise ValueError("body_limit must be >= 0")
        config["body_limit"] = int(body_limit)
    if timeout is not None:
        if timeout < 0:
            raise ValueError("timeout must be >= 0 seconds (0: the App's timeout)")
        config["timeout"] = timeout
    return json.dumps(config)


def python_filter(
    app: str,
    *,
    fail_open: bool = False,
    body_limit: int | None = None,
    timeout: float | None = None,
    name: str = FILTER_NAME,
) -> dict[str, Any]:
    """The ``http_filters`` entry running ``app``'s on_request/on_response hooks."""
    return {
        "name": name,
        "typed_config": {
            "@type": _DM + "DynamicModuleFilter",
            "dynamic_module_config": module_config(),
            "filter_name": "python",
            "filter_config": {
                "@type": _T + "google.protobuf.StringValue",
                "value": filter_config_string(
                    app, fail_open=fail_open, body_limit=body_limit, timeout=timeout
                ),
            },
        },
    }


def python_per_route(
    app: str | None = None,
    *,
    disabled: bool = False,
    fail_open: bool = False,
    body_limit: int | None = None,
    timeout: float | None = None,
    name: str = FILTER_NAME,
) -> dict[str, Any]:
    """A route's ``typed_per_filter_config``: disable the filter, or another App/options.

    Disabling is Envoy's generic per-route switch (``FilterConfig.disabled``: the
    filter is skipped, the module is not even asked), never the deprecated
    ``per_route_config_name``, which only another App or options need."""
    if disabled:
        return {name: {"@type": _T + "envoy.config.route.v3.FilterConfig", "disabled": True}}
    return {
        name: {
            "@type": _DM + "DynamicModuleFilterPerRoute",
            "dynamic_module_config": module_config(),
            "per_route_config_name": "python",
            "filter_config": {
                "@type": _T + "google.protobuf.StringValue",
                "value": filter_config_string(
                    app,
                    fail_open=fail_open,
                    body_limit=body_limit,
                    timeout=timeout,
                    disabled=disabled,
                ),
            },
        }
    }


def build_filter_config(
    app: str,
    *,
    listen: str = "127.0.0.1:8000",
    upstream: str = "127.0.0.1:8080",
    admin: str | None = None,
    fail_open: bool = False,
    body_limit: int | None = None,
    timeout: float | None = None,
    routes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A whole Envoy config: ``listen`` -> the Python filter -> router -> ``upstream``.

    ``routes`` (optional, first match wins, a catch-all "/" is appended):
    ``{"prefix": "/health", "disabled": True}`` or
    ``{"prefix": "/admin/", "app": "pkg.admin:app", "fail_open": False, ...}``.
    """
    route_list: list[dict[str, Any]] = []
    for r in routes or []:
        route: dict[str, Any] = {
            "match": {"prefix": r.get("prefix", "/")},
            "route": {"cluster": "upstream", "timeout": r.get("route_timeout", "30s")},
        }
        if r.get("disabled") or r.get("app"):
            route["typed_per_filter_config"] = python_per_route(
                r.get("app"),
                disabled=bool(r.get("disabled")),
                fail_open=bool(r.get("fail_open", fail_open)),
                body_limit=r.get("body_limit", body_limit),
                timeout=r.get("timeout", timeout),
            )
        route_list.append(route)
    route_list.append(
        {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "30s"}}
    )
    listener = envoy_config.http_listener(
        "aioresty_filter",
        route_list,
        [python_filter(app, fail_open=fail_open, body_limit=body_limit, timeout=timeout)],
        listen,
    )
    cluster = {
        "name": "upstream",
        "connect_timeout": "2s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(upstream)}}]}],
        },
    }
    config: dict[str, Any] = {
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
        "stats_config": stats_config(),
    }
    if admin:
        config["admin"] = {"address": _addr(admin)}
    return config


def add_cli(esub: Any) -> None:
    """Registers ``aioresty envoy filter-config`` on the ``envoy`` subparsers."""
    p = esub.add_parser(
        "filter-config",
        help="print the Envoy http_filters entry (or, with --listen/--upstream, a whole "
        "config) running an App's on_request/on_response hooks",
    )
    p.add_argument("app", help="the App: pkg.module:app")
    p.add_argument(
        "--fail-open",
        action="store_true",
        help="on a hook exception/timeout let the request through (default: 500)",
    )
    p.add_argument(
        "--body-limit",
        type=int,
        metavar="N",
        help=f"largest buffered body in bytes (default {DEFAULT_BODY_LIMIT})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds a phase's hooks may run (default: the App's timeout, App(timeout=))",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="emit a whole Envoy config listening here (with --upstream)",
    )
    p.add_argument("--upstream", metavar="HOST:PORT", help="the upstream of the whole config")
    p.add_argument("--admin", metavar="HOST:PORT", help="admin address of the whole config")
    p.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a route prefix where the filter is off (repeatable; whole config)",
    )
    p.set_defaults(func=_cmd_filter_config)


def _cmd_filter_config(args: Any) -> int:
    import json
    import sys

    opts = {"fail_open": args.fail_open, "body_limit": args.body_limit, "timeout": args.timeout}
    if args.listen or args.upstream:
        if not (args.listen and args.upstream):
            print("aioresty: --listen and --upstream go together", file=sys.stderr)
            return 2
        routes = [{"prefix": p, "disabled": True} for p in args.disable]
        out: Any = build_filter_config(
            args.app,
            listen=args.listen,
            upstream=args.upstream,
            admin=args.admin,
            routes=routes,
            **opts,
        )
    else:
        out = python_filter(args.app, **opts)
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0
