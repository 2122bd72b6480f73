"""Nothing a client sends reaches the bridge as a call: the runtime is named by a
registry id plus this process's secret, never by a pointer (issue 11, point 1).

The attack of the issue: an ordinary user config whose route takes its cluster
from a request header, merged with `aioresty envoy config --merge`; a client
names the bridge cluster and forges the authority.  Before, `Host: 4096` made
the module post to address 4096 and Envoy died with SIGSEGV.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from aioresty import cli, envoy_config
from tests.netutil import free_port, http_request, terminate, wait_until

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "examples" / "envoy" / "demo.toml"
_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
_ROUTER = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}


def _user_config(port: int, admin: int) -> dict:
    route = {"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}}
    hcm = {
        "@type": _HCM,
        "stat_prefix": "mine",
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": _ROUTER}],
    }
    listener = {
        "name": "mine",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [listener]},
    }


def _aioresty(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioresty.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_forged_bridge_calls_from_clients_are_refused(tmp_path: Path) -> None:
    try:
        envoy = cli.envoy_binary()
    except cli.UsageError:
        pytest.skip("no envoy binary")
    port, admin = free_port(), free_port()
    src = tmp_path / "envoy.json"
    src.write_text(json.dumps(_user_config(port, admin)))
    merged = tmp_path / "merged.json"
    r = _aioresty("envoy", "config", "--merge", str(src), "-o", str(merged))
    assert r.returncode == 0, r.stderr
    assert "takes its cluster from the request header 'x-cluster'" in r.stderr
    assert "'aioresty_bridge'" in r.stderr
    exports = _aioresty("envoy", "env", str(DEMO))
    env = dict(__import__("os").environ)
    for line in exports.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    log = tmp_path / "envoy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [envoy, "-c", str(merged), "--concurrency", "1", "--disable-hot-restart"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_until(lambda: _ready(admin, proc), 30, "envoy /ready")
        cases = [
            ("4096", 400, "bad-request"),  # the old pointer form: address 4096
            ("140000000000000", 400, "bad-request"),
            ("1." + "0" * 32, 403, "forbidden"),  # a guessed secret
            ("1." + "0" * 31, 403, "forbidden"),
            ("x.y", 400, "bad-request"),
            ("", 400, "bad-request"),
            ("99999999999999999999999.abc", 400, "bad-request"),
        ]
        for authority, status, code in cases * 20:
            st, h, _ = http_request(
                port, "POST", "/echo", b"x", {"x-cluster": "aioresty_bridge", "host": authority}
            )
            assert (st, h.get("x-aioresty-error")) == (status, code), (authority, st, h)
        assert proc.poll() is None, "envoy died"
        text = log.read_text(errors="replace")
        refused = [ln for ln in text.splitlines() if "bridge refused" in ln]
        assert 1 <= len(refused) <= 10, refused  # rate-limited: at most one a second
    finally:
        rc = terminate(proc, 15, "envoy")
    assert rc == 0, log.read_text(errors="replace")[-3000:]


def _ready(admin: int, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"envoy exited {proc.returncode}")
    try:
        return http_request(admin, "GET", "/ready", timeout=2)[0] == 200
    except OSError:
        return False


def test_the_lua_adapter_names_runtimes_by_id_and_secret() -> None:
    """envoy_config and the core agree on the form (a smoke check of the ABI)."""
    import ctypes

    from tests.hostlib import CORE

    core = ctypes.CDLL(str(CORE))
    core.ar_bridge_resolve.restype = ctypes.c_void_p
    why = ctypes.c_int(0)
    assert core.ar_bridge_resolve(b"4096", 4, ctypes.byref(why)) is None and why.value == 1
    assert core.ar_bridge_resolve(b"1." + b"a" * 32, 34, ctypes.byref(why)) is None
    assert why.value == 2
    assert envoy_config.BRIDGE_CLUSTER == "aioresty_bridge"
