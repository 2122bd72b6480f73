"""The python mode's filter_config in a real Envoy: JSON, the one format of
every mode, and the old key=value token form, still read for one release
with a warning in Envoy's log naming the JSON to write
(native/envoy/python/config.c)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aioresty import envoy_config, envoy_python_mode
from tests.envoy.python.conftest import APP, FilterEnvoy, Upstream
from tests.netutil import http_request

ROUTES: list[dict[str, Any]] = [
    {"prefix": "/off/", "disabled": True},
    {"prefix": "/t/", "app": APP, "fail_open": True, "timeout": 0.3},
]
AUTH = {"authorization": "Bearer ok"}


def _routes(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes: list[dict[str, Any]] = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _module_disabled(cfg: dict[str, Any]) -> None:
    """The /off/ route in the module's own per-route form ({"disabled": true}),
    instead of Envoy's generic FilterConfig switch the generator writes."""
    off = _routes(cfg)[0]
    assert off["typed_per_filter_config"] == {
        "aioresty.python": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "disabled": True,
        }
    }
    off["typed_per_filter_config"] = envoy_python_mode.python_per_route(APP)
    envoy_python_mode_value = off["typed_per_filter_config"]["aioresty.python"]["filter_config"]
    envoy_python_mode_value["value"] = json.dumps({"disabled": True})


def _filter_configs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every python-mode filter_config StringValue of cfg: the filter's, then the routes'."""
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    out = [hcm["typed_config"]["http_filters"][0]["typed_config"]["filter_config"]]
    for r in _routes(cfg):
        for per_route in r.get("typed_per_filter_config", {}).values():
            if "filter_config" in per_route:
                out.append(per_route["filter_config"])
    return out


def _check_behaviour(e: FilterEnvoy) -> None:
    # the filter runs (no credentials: the app answers 401 itself)
    assert http_request(e.port, "GET", "/echo")[0] == 401
    assert http_request(e.port, "GET", "/echo", headers=AUTH)[0] == 200
    # per route: off, and another binding (fail open: a failing hook lets it through)
    assert http_request(e.port, "GET", "/off/echo")[0] == 200
    assert http_request(e.port, "GET", "/t/boom", headers=AUTH)[0] == 200


def _deprecation_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "key=value filter_config is deprecated" in line]


def test_json_form(upstream: Upstream, tmp_path: Path) -> None:
    e = FilterEnvoy(tmp_path, upstream.port, body_limit=4096, routes=ROUTES)
    cfg = json.loads(e.config_path.read_text())
    _module_disabled(cfg)
    e.config_path.write_text(envoy_config.to_yaml(cfg))
    values = [json.loads(fc["value"]) for fc in _filter_configs(cfg)]
    assert values == [
        {"app": APP, "fail": "closed", "body_limit": 4096},
        {"disabled": True},
        {"app": APP, "fail": "open", "body_limit": 4096, "timeout": 0.3},
    ]
    e.start()
    try:
        _check_behaviour(e)
    finally:
        assert e.stop() == 0
    log = e.log()
    assert f"python filter config '{APP}': " in log
    assert "fail=closed body_limit=4096 timeout_ms=30000" in log  # App()'s own
    assert f"python filter route '{APP}': " in log
    assert "fail=open body_limit=4096 timeout_ms=300" in log
    assert _deprecation_lines(log) == []


def test_json_form_rejects_unknown_keys(upstream: Upstream, tmp_path: Path) -> None:
    e = FilterEnvoy(tmp_path, upstream.port)
    cfg = json.loads(e.config_path.read_text())
    _filter_configs(cfg)[0]["value"] = json.dumps({"app": APP, "fial": "open"})
    e.config_path.write_text(envoy_config.to_yaml(cfg))
    try:
        e.start(timeout=30)
        raise AssertionError("envoy accepted an unknown key")
    except AssertionError as exc:
        assert "envoy exited" in str(exc), exc
    finally:
        e._log.close()
    assert 'unknown key "fial" (known: app, fail, body_limit, timeout)' in e.log()


def test_token_form_still_read_with_a_warning(upstream: Upstream, tmp_path: Path) -> None:
    e = FilterEnvoy(tmp_path, upstream.port, routes=ROUTES)
    cfg = json.loads(e.config_path.read_text())
    _module_disabled(cfg)
    old = [f"{APP} fail=closed body_limit=65536", "disabled", f"app={APP} fail=open timeout=0.3"]
    for fc, value in zip(_filter_configs(cfg), old, strict=True):
        fc["value"] = value
    e.config_path.write_text(envoy_config.to_yaml(cfg))
    e.start()
    try:
        _check_behaviour(e)
    finally:
        assert e.stop() == 0
    lines = _deprecation_lines(e.log())
    assert len(lines) == 3, lines
    assert all(line.startswith("[W] ") for line in lines), lines  # --log-format "[%L] %v"
    want = [
        f"python filter config: the key=value filter_config is deprecated and goes in the next "
        f'release; write {{"app": "{APP}", "fail": "closed", "body_limit": 65536}}',
        "python filter route: the key=value filter_config is deprecated and goes in the next "
        'release; write {"disabled": true}',
        f'write {{"app": "{APP}", "fail": "open", "body_limit": 1048576, "timeout": 0.3}}',
    ]
    for text in want:
        assert sum(text in line for line in lines) == 1, (text, lines)
