"""Envoy configuration pieces for aioresty's bridge (see docs/envoy.md).

A stock Envoy Lua filter reaches a runtime with ``httpCall`` to the
``aioresty_bridge`` cluster.  That cluster's *upstream* HTTP filter is the
dynamic module ``libaioresty_envoy.so``: it posts the call to the runtime's
task queue and answers with a local reply, so no request ever leaves Envoy.
Envoy still opens one pooled connection per worker when a request is routed
to a cluster, so the cluster points at an *internal listener* (in-process,
no socket) that never receives a request.

Functions here return plain dicts (JSON-serialisable; JSON is valid YAML, so
``to_yaml`` needs no YAML library) and the environment Envoy must run with.
``build_config`` turns a short user config into a whole Envoy config::

    {
      "listen": "127.0.0.1:8000",          # where Envoy listens
      "admin": "127.0.0.1:9901",           # optional admin interface
      "lua": {"seed": "path/to/seed.lua"}, # named Lua scripts (files or {"inline": "..."},
                                           #   {"file": ..., "on_error": ...})
      "routes": [                          # first match wins
        {"prefix": "/httpbin/", "lua": "seed", "upstream": "httpbin", "prefix_rewrite": "/"},
        {"prefix": "/app/", "lua": "app"}  # no upstream: the script must respond()
      ],
      "upstreams": {"httpbin": "127.0.0.1:8080"},
      "max_request_bytes": 67108864,       # optional: largest call body (default 64 MiB)
      "on_error": "fail_closed",           # a script error: 500 (default) or "continue"
      "script_mode": "bridge"              # which module mode runs the scripts (SCRIPT_MODES)
    }

``script_mode`` "bridge" (default): Envoy's ``envoy.filters.http.lua`` with one
``LuaPerRoute`` script per route, calls through the bridge cluster (the
module's ``bridge`` mode).  "lua": the module's ``lua`` mode, aioresty's own
LuaJIT filter (DynamicModuleFilter, filter_name "lua", docs/lua-mode.md): one
filter per script, named ``aioresty.lua.<name>``,
*disabled by default* in the chain and enabled only on the routes naming
that script (``typed_per_filter_config`` with an empty
``envoy.config.route.v3.FilterConfig``: Envoy's generic per-route switch, so
the module needs no per-route config).  A request matching no route, or a
route without ``lua``, runs no script, as with the stock filter.  No bridge
cluster is generated in that mode (the scripts' calls yield natively).
The key's old spelling, ``lua_mode = "stock" | "module"``, is read for one
more release with a ``FutureWarning`` naming the new one (``script_mode``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from . import paths

# The module modes route scripts can run through (short config "script_mode")
SCRIPT_MODES = {
    "bridge": "envoy.filters.http.lua + the aioresty_bridge cluster (docs/envoy.md)",
    "lua": "aioresty's LuaJIT filter inside the dynamic module (docs/lua-mode.md)",
}
# The key's old spelling and values, read for one more release
_OLD_LUA_MODES = {"stock": "bridge", "module": "lua"}
# What a Lua script error does (short config "on_error", per script or for all)
ON_ERRORS = {
    "fail_closed": "the request is answered 500 (default)",
    "continue": "logged, and the request goes on (Envoy's Lua filter's own behaviour)",
}
# Envoy's stock Lua filter has no such option: fail_closed scripts get this
# wrapper appended (LuaJIT's pcall lets httpCall yield through it).
_FAIL_CLOSED_LUA = """

-- added by aioresty (on_error = "fail_closed"): a script error answers 500
do
    local pcall, tostring, on_request = pcall, tostring, envoy_on_request
    if on_request then
        envoy_on_request = function(h)
            local ok, err = pcall(on_request, h)
            if not ok then
                h:logErr("aioresty: Lua script error in " .. CHUNK .. ": " .. tostring(err))
                pcall(h.respond, h, {[":status"] = "500", ["content-type"] = "text/plain"},
                      "lua script error\\n")  -- the lua mode's words
            end
        end
    end
end
"""


def _lua_string(text: str) -> str:
    """A Lua 5.1 string literal of ``text`` (bytes other than safe ASCII as \\ddd)."""
    safe = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ./_-")
    return '"' + "".join(chr(b) if b in safe else f"\\{b:03d}" for b in text.encode()) + '"'


def fail_closed_lua(chunk_name: str) -> str:
    """What the bridge mode appends to a script with on_error = "fail_closed":
    its errors answer 500 and are logged naming ``chunk_name``."""
    return _FAIL_CLOSED_LUA.replace("CHUNK", _lua_string(chunk_name), 1)


NO_ANSWER = "aioresty: the route's Lua script did not answer\n"
LUA_MODE_FILTER_PREFIX = "aioresty.lua."
BRIDGE_CLUSTER = "aioresty_bridge"
BRIDGE_SINK = "aioresty_bridge_sink"
MODULE_NAME = "aioresty_envoy"
METRICS_FILTER = "aioresty.metrics"
# Envoy prefixes the module's stats with it: aioresty.<family> (docs/operations.md, Metrics)
METRICS_NAMESPACE = "aioresty"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_UNLIMITED = 2**32 - 1  # circuit-breaker thresholds are uint32

_T = "type.googleapis.com/"
_HCM = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"}


def _addr(hostport: str) -> dict[str, Any]:
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {hostport!r}")
    return {"socket_address": {"address": host, "port_value": int(port)}}


ROUTER = {"name": "envoy.filters.http.router", "typed_config": _ROUTER}


def http_listener(
    name: str,
    routes: list[dict[str, Any]],
    http_filters: list[dict[str, Any]] | None = None,
    address: str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A listener with one HTTP connection manager - the one builder of every
    listener aioresty generates (CLI, demo, tests, benchmarks): stat prefix
    `name`, one virtual host for every domain with `routes`, `http_filters`
    then the router.  address: "host:port" (or an Envoy address object);
    None makes it an internal listener."""
    listener: dict[str, Any] = {"name": name}
    if address is None:
        listener["internal_listener"] = {}
    else:
        listener["address"] = _addr(address) if isinstance(address, str) else address
    listener["filter_chains"] = [
        {
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": _HCM,
                        "stat_prefix": name,
                        "route_config": {
                            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]
                        },
                        "http_filters": [*(http_filters or []), ROUTER],
                    },
                }
            ]
        }
    ]
    return listener


def module_config() -> dict[str, Any]:
    """The ``dynamic_module_config`` of every aioresty filter: runtimes own
    threads, so the module is never dlclose'd; its stats are ``aioresty.*``."""
    return {"name": MODULE_NAME, "do_not_close": True, "metrics_namespace": METRICS_NAMESPACE}


def bootstrap_extensions() -> list[dict[str, Any]]:
    """The internal-listener extension the bridge's sink listener needs."""
    return [
        {
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {
                "@type": _T + "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
            },
        }
    ]


def bridge_sink_listener(name: str = BRIDGE_SINK) -> dict[str, Any]:
    """Internal listener the bridge cluster's connection pool connects to.

    No request reaches it (the module answers first); if one ever did, it
    gets a 502 with a clear body and shows in the ``http.<name>`` stats.
    """
    sink = {
        "match": {"prefix": "/"},
        "direct_response": {
            "status": 502,
            "body": {
                "inline_string": "aioresty bridge sink reached: the bridge module did not answer\n"
            },
        },
    }
    return http_listener(name, [sink])


def bridge_cluster(
    name: str = BRIDGE_CLUSTER,
    sink: str = BRIDGE_SINK,
    max_request_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """The cluster Lua's httpCall targets; its upstream filter is the module."""
    return {
        "name": name,
        "connect_timeout": "5s",
        "type": "STATIC",
        # the largest call body the upstream filter may buffer
        "per_connection_buffer_limit_bytes": max_request_bytes,
        # Envoy's default thresholds (1024 requests/pending/connections for the
        # whole cluster, all workers together) would answer the 1025th call in
        # flight 503 "overflow"; the runtime's queue (max_queue) is the limit
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": _UNLIMITED,
                    "max_pending_requests": _UNLIMITED,
                    "max_requests": _UNLIMITED,
                    "max_retries": _UNLIMITED,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "envoy_internal_address": {"server_listener_name": sink}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
                "http_filters": [
                    {
                        "name": "aioresty_bridge",
                        "typed_config": {
                            "@type": _T + "envoy.extensions.filters.http.dynamic_modules.v3."
                            "DynamicModuleFilter",
                            "dynamic_module_config": module_config(),
                            "filter_name": "bridge",
                            "filter_config": {
                                "@type": _T + "google.protobuf.StringValue",
                                "value": "bridge",
                            },
                        },
                    },
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {
                            "@type": _T + "envoy.extensions.filters.http.upstream_codec.v3."
                            "UpstreamCodec"
                        },
                    },
                ],
            }
        },
    }


def lua_filter(
    source_codes: dict[str, str] | None = None, default: str | None = None
) -> dict[str, Any]:
    """An ``envoy.filters.http.lua`` filter with named scripts (inline text)."""
    cfg: dict[str, Any] = {"@type": _T + "envoy.extensions.filters.http.lua.v3.Lua"}
    if default is not None:
        cfg["default_source_code"] = {"inline_string": default}
    if source_codes:
        cfg["source_codes"] = {k: {"inline_string": v} for k, v in source_codes.items()}
    return {"name": "envoy.filters.http.lua", "typed_config": cfg}


def lua_per_route(name: str) -> dict[str, Any]:
    return {
        "envoy.filters.http.lua": {
            "@type": _T + "envoy.extensions.filters.http.lua.v3.LuaPerRoute",
            "name": name,
        }
    }


def lua_mode_filter(
    name: str,
    code: str | None = None,
    *,
    filename: str | os.PathLike[str] | None = None,
    chunk_name: str | None = None,
    on_error: str | None = None,
    metadata_namespace: str | None = None,
    disabled: bool = False,
) -> dict[str, Any]:
    """An http_filters entry ``aioresty.lua.<name>`` of the module's "lua" mode
    running ``code`` (inline, its error messages say ``chunk_name:LINE:``) or the
    script at ``filename`` (docs/lua-mode.md lists the filter_config keys)."""
    cfg: dict[str, str] = {}
    if code is not None:
        cfg["inline_code"] = code
    if chunk_name is not None:
        cfg["chunk_name"] = chunk_name
    if filename is not None:
        cfg["filename"] = os.fspath(filename)
    if on_error is not None:
        cfg["on_error"] = on_error
    if metadata_namespace is not None:
        cfg["metadata_namespace"] = metadata_namespace
    entry: dict[str, Any] = {
        "name": LUA_MODE_FILTER_PREFIX + name,
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": module_config(),
            "filter_name": "lua",
            "filter_config": {
                "@type": _T + "google.protobuf.StringValue",
                # raw UTF-8: the module's JSON reader decodes \uXXXX escapes in the BMP only
                "value": json.dumps(cfg, ensure_ascii=False),
            },
        },
    }
    if disabled:
        entry["disabled"] = True
    return entry


def metrics_filter() -> dict[str, Any]:
    """The module's no-op "metrics" filter, disabled: only its config matters,
    a downstream config that exports aioresty's metrics as clean Envoy stats
    (``aioresty.*``; the bridge's own config is scoped under its cluster).
    docs/operations.md, Metrics."""
    return {
        "name": METRICS_FILTER,
        "disabled": True,
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": module_config(),
            "filter_name": "metrics",
            "filter_config": {"@type": _T + "google.protobuf.StringValue", "value": ""},
        },
    }


def stats_config() -> dict[str, Any]:
    """Bootstrap ``stats_config``: ``aioresty.call_time_us`` gets the core's
    bucket bounds (microseconds) instead of Envoy's defaults."""
    from .metrics import call_bounds

    return {
        "histogram_bucket_settings": [
            {
                "match": {"contains": "aioresty.call_time_us"},
                "buckets": [float(b) for b in call_bounds()],
            }
        ]
    }


def add_metrics(config: dict[str, Any]) -> dict[str, Any]:
    """Adds ``metrics_filter()`` before the router of every HTTP connection
    manager that runs Envoy's Lua filter, and ``stats_config()`` unless the
    config has its own (in place; also returned).  Idempotent."""
    if "stats_config" not in config:
        config["stats_config"] = stats_config()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            filters = node.get("http_filters")
            if isinstance(filters, list) and uses_stock_lua(filters):
                if not any(
                    isinstance(f, dict) and f.get("name") == METRICS_FILTER for f in filters
                ):
                    at = next(
                        (
                            i
                            for i, f in enumerate(filters)
                            if isinstance(f, dict) and f.get("name") == "envoy.filters.http.router"
                        ),
                        len(filters),
                    )
                    filters.insert(at, metrics_filter())
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config.get("static_resources"))
    return config


def lua_mode_enable_per_route(name: str) -> dict[str, Any]:
    """typed_per_filter_config entry enabling the (disabled by default) filter
    of script ``name`` on one route: an empty FilterConfig.config."""
    return {
        LUA_MODE_FILTER_PREFIX + name: {
            "@type": _T + "envoy.config.route.v3.FilterConfig",
            "config": {},
        }
    }


def environment(
    lib_dir: str | os.PathLike[str] | None = None,
    lua_dir: str | os.PathLike[str] | None = None,
    python_path: list[str] | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment Envoy must run with (module search path, Lua path, ...).

    lib_dir (default $AIORESTY_LIB_DIR, else the package's) holds
    libaioresty_envoy.so, libaioresty_core.so and the runtimes aioresty
    bundles; the Lua filter's LuaJIT reads LUA_PATH; core.lua reads
    AIORESTY_LIB_DIR.  $AIORESTY_LIB_PATH is left as the user set it: the core
    looks a runtime name up there, then through the dynamic linker, and only
    then next to itself (the bundled runtimes), so a user's copy always wins.
    """
    env = dict(os.environ if base is None else base)
    lib = str(Path(lib_dir) if lib_dir else paths.lib_dir())
    lua = str(Path(lua_dir) if lua_dir else paths.lua_dir())
    env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = lib
    env["AIORESTY_LIB_DIR"] = lib
    env["LUA_PATH"] = f"{lua}/?.lua;{lua}/?/init.lua;" + env.get("LUA_PATH", ";")
    if python_path:
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = ":".join([*python_path, *([old] if old else [])])
    return env


def uses_stock_lua(config: Any) -> bool:
    """Whether an Envoy config runs Envoy's own Lua filter anywhere: only then
    does it need the bridge pieces (merge_bridge)."""
    text = json.dumps(config)
    return "envoy.extensions.filters.http.lua.v3.Lua" in text or "envoy.filters.http.lua" in text


def cluster_header_routes(config: Any) -> list[str]:
    """The header names of routes that take their cluster from a request header
    (``route.cluster_header``), anywhere in an Envoy config: a client can then
    name the bridge cluster (the module refuses such calls: 400/403/404)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ch = node.get("cluster_header")
            if isinstance(ch, str):
                found.append(ch)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found


def merge_bridge(
    config: dict[str, Any], max_request_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, Any]:
    """Adds the bridge cluster, its sink listener and the bootstrap extension
    to an existing Envoy config dict, and the metrics pieces (add_metrics), in
    place; also returned.  Idempotent."""
    exts = config.setdefault("bootstrap_extensions", [])
    if not any(e.get("name") == "envoy.bootstrap.internal_listener" for e in exts):
        exts.extend(bootstrap_extensions())
    sr = config.setdefault("static_resources", {})
    listeners = sr.setdefault("listeners", [])
    if not any(x.get("name") == BRIDGE_SINK for x in listeners):
        listeners.append(bridge_sink_listener())
    clusters = sr.setdefault("clusters", [])
    if not any(c.get("name") == BRIDGE_CLUSTER for c in clusters):
        clusters.append(bridge_cluster(max_request_bytes=max_request_bytes))
    return add_metrics(config)


def script_mode(user: dict[str, Any]) -> str:
    """The short config's ``script_mode`` (SCRIPT_MODES; default "bridge").
    The old ``lua_mode`` key ("stock" -> "bridge", "module" -> "lua") is read
    with a FutureWarning; both keys at once, or an unknown value, is a
    ValueError."""
    if "lua_mode" in user:
        old = user["lua_mode"]
        if "script_mode" in user:
            raise ValueError("lua_mode is script_mode's old name: give script_mode only")
        if old not in _OLD_LUA_MODES:
            raise ValueError(
                f"lua_mode (old name of script_mode) must be one of "
                f"{', '.join(repr(m) for m in _OLD_LUA_MODES)}, got {old!r}"
            )
        new = _OLD_LUA_MODES[old]
        warnings.warn(
            f"lua_mode = {old!r} is read for one more release: write script_mode = {new!r}",
            FutureWarning,
            stacklevel=2,
        )
        return new
    mode = user.get("script_mode", "bridge")
    if mode not in SCRIPT_MODES:
        raise ValueError(
            f"script_mode must be one of {', '.join(repr(m) for m in SCRIPT_MODES)}, got {mode!r}"
        )
    return str(mode)


_DURATION = re.compile(r"\d+(\.\d{1,9})?s")


def _duration(route: dict[str, Any], value: Any) -> str:
    """A route's timeout as Envoy's duration text: "30s", "0.5s", or seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return f"{value:g}s"
    if isinstance(value, str) and _DURATION.fullmatch(value):
        return value
    raise ValueError(
        f"route {route.get('prefix', '/')!r}: timeout must be seconds, a number or a duration "
        f'such as "30s" or "0.5s", got {value!r}'
    )


def _read_lua(name: str, spec: Any, base: Path) -> tuple[str, str]:
    """The script's source and the name its errors give: the file as the config
    says it, or lua.<name> for inline code."""
    if isinstance(spec, dict):
        if "inline" in spec:
            return str(spec["inline"]), f"lua.{name}"
        spec = spec["file"]
    p = Path(spec)
    if not p.is_absolute():
        p = base / p
    return p.read_text(), str(spec)


def build_config(user: dict[str, Any], base_dir: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """A whole Envoy config from the short user config (module docstring)."""
    base = Path(base_dir)
    mode = script_mode(user)
    default_on_error = user.get("on_error", "fail_closed")
    scripts: dict[str, str] = {}
    chunk_names: dict[str, str] = {}
    on_error: dict[str, str] = {}
    for name, spec in (user.get("lua") or {}).items():
        scripts[name], chunk_names[name] = _read_lua(name, spec, base)
        oe = spec.get("on_error", default_on_error) if isinstance(spec, dict) else default_on_error
        if oe not in ON_ERRORS:
            raise ValueError(f"lua.{name}: on_error must be one of {', '.join(ON_ERRORS)}")
        on_error[name] = oe
    upstreams: dict[str, str] = dict(user.get("upstreams") or {})
    routes = []
    for r in user.get("routes") or []:
        route: dict[str, Any] = {"match": {"prefix": r.get("prefix", "/")}}
        if r.get("upstream"):
            if r["upstream"] not in upstreams:
                raise ValueError(f"route {r!r}: unknown upstream {r['upstream']!r}")
            act: dict[str, Any] = {"cluster": r["upstream"]}
            act["timeout"] = _duration(r, r.get("timeout", "30s"))
            if "prefix_rewrite" in r:
                act["prefix_rewrite"] = r["prefix_rewrite"]
            route["route"] = act
        else:
            # the script answers with respond(); this is only reached if it did not,
            # which is a bug of the script: 500 unless the route says otherwise
            unanswered = (500, NO_ANSWER) if r.get("lua") else (200, "")
            route["direct_response"] = {
                "status": int(r.get("status", unanswered[0])),
                "body": {"inline_string": r.get("body", unanswered[1])},
            }
        if r.get("lua"):
            if r["lua"] not in scripts:
                raise ValueError(f"route {r!r}: unknown lua script {r['lua']!r}")
            route["typed_per_filter_config"] = (
                lua_mode_enable_per_route(r["lua"]) if mode == "lua" else lua_per_route(r["lua"])
            )
        routes.append(route)
    http_filters: list[dict[str, Any]] = []
    if scripts and mode == "lua":
        used = {r["lua"] for r in user.get("routes") or [] if r.get("lua")}
        http_filters.extend(
            lua_mode_filter(
                name, code, chunk_name=chunk_names[name], on_error=on_error[name], disabled=True
            )
            for name, code in scripts.items()
            if name in used
        )
    elif scripts:
        http_filters.append(
            lua_filter(
                {
                    name: code
                    + (
                        fail_closed_lua(chunk_names[name])
                        if on_error[name] == "fail_closed"
                        else ""
                    )
                    for name, code in scripts.items()
                }
            )
        )
    listener = http_listener(
        "aioresty_main", routes, http_filters, user.get("listen", "127.0.0.1:8000")
    )
    clusters = []
    for name, hostport in upstreams.items():
        clusters.append(
            {
                "name": name,
                "connect_timeout": "2s",
                "type": "STATIC",
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(hostport)}}]}],
                },
            }
        )
    config: dict[str, Any] = {"static_resources": {"listeners": [listener], "clusters": clusters}}
    if user.get("admin"):
        config["admin"] = {"address": _addr(user["admin"])}
    if mode == "lua":
        config["stats_config"] = stats_config()
        return config  # calls yield inside the module: no bridge
    return merge_bridge(config, int(user.get("max_request_bytes", DEFAULT_MAX_BYTES)))


def to_yaml(config: dict[str, Any]) -> str:
    """Serialises a config for ``envoy -c`` (JSON, which Envoy's YAML loader reads)."""
    return json.dumps(config, indent=2) + "\n"


def load_user_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a short user config: .toml or .json."""
    p = Path(path)
    if p.suffix == ".toml":
        import tomllib

        return tomllib.loads(p.read_text())
    return json.loads(p.read_text())
