"""aioresty's metrics as real Envoy stats (native/envoy/metrics.c) in every
mode: calls of known outcomes, then Envoy's own /stats/prometheus must show
exact counts by method and rc, the call histogram as many observations as
answers, and the bucket counts the core itself has."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aioresty import envoy_config
from tests import promtext
from tests.envoy.conftest import REPO, Envoy
from tests.envoy.python.conftest import FilterEnvoy, Upstream
from tests.netutil import http_request, wait_until

SHOP = "tests.apps.shopmetrics"
RUNTIME = "aioresty&" + SHOP
PY_PATH = [str(REPO), str(REPO / "examples" / "python")]
PY_ENV = {"AIORESTY_VENV": sys.prefix}
CALLS = "envoy_aioresty_calls_total"
ANSWERS = "envoy_aioresty_answers_total"
HIST = "envoy_aioresty_call_time_us"
# Envoy merges histograms at its stats flush: 1 s here (default 5 s)
FAST_FLUSH = {"stats_flush_interval": "1s"}
_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


def scrape(admin_port: int) -> dict:
    status, _, body = http_request(admin_port, "GET", "/stats/prometheus", timeout=5)
    assert status == 200
    return promtext.parse(body.decode())


@pytest.fixture
def envoys(tmp_path: Path) -> Iterator[Callable[..., Envoy]]:
    started: list[Envoy] = []

    def make(user: dict[str, Any], **kw: Any) -> Envoy:
        e = Envoy(tmp_path, user, env=dict(PY_ENV), python_path=PY_PATH, **kw)
        e.config.update(FAST_FLUSH)
        e.config_path.write_text(envoy_config.to_yaml(e.config))
        started.append(e)
        return e.start()

    yield make
    for e in started:
        assert e.terminate() == 0, e.log()[-3000:]  # detach and handover at exit: clean


def shop_calls(request: Callable[[str, bytes], int], prefix: str = "") -> None:
    """12 buys (rc 0), 3 refunds (the handler raises: rc 1), 2 calls of an
    unknown method (rc 2), each checked at the client."""
    for i in range(12):
        assert request(f"{prefix}/py/buy?cfg={SHOP}", f"book:{i % 7}".encode()) == 200
    for _ in range(3):
        assert request(f"{prefix}/py/refund?cfg={SHOP}", b"x") == 502
    for _ in range(2):
        assert request(f"{prefix}/py/nope?cfg={SHOP}", b"x") == 502


def assert_shop_counts(admin_port: int, k: int = 1, hist_k: int | None = None) -> dict:
    """Envoy's stats after k rounds of shop_calls (the histograms after hist_k,
    default k): exact."""
    hk = k if hist_k is None else hist_k

    def counted() -> dict | None:
        s = scrape(admin_port)
        done = promtext.value(s, HIST + "_count", runtime=RUNTIME, method="nope") == 2 * hk
        bought = promtext.value(s, CALLS, runtime=RUNTIME, method="buy")
        return s if done and bought == 12 * k else None

    s = wait_until(counted, 20, "the shop's calls in Envoy's stats")
    rt = {"runtime": RUNTIME}
    assert promtext.value(s, CALLS, method="refund", **rt) == 3 * k
    assert promtext.value(s, CALLS, method="nope", **rt) == 2 * k
    assert promtext.value(s, ANSWERS, method="buy", rc="0", **rt) == 12 * k
    assert promtext.value(s, ANSWERS, method="refund", rc="1", **rt) == 3 * k
    assert promtext.value(s, ANSWERS, method="nope", rc="2", **rt) == 2 * k
    for m, n in (("buy", 12), ("refund", 3), ("nope", 2)):
        assert promtext.value(s, HIST + "_count", method=m, **rt) == n * hk
        assert promtext.value(s, HIST + "_bucket", method=m, le="+Inf", **rt) == n * hk
        assert promtext.value(s, "envoy_aioresty_in_flight", method=m, **rt) == 0
    assert ("envoy_aioresty_queue_depth", frozenset(rt.items())) in s
    # the application's own metrics come the same way
    app = {"runtime": RUNTIME, "name": "orders", "labels": "kind=book"}
    assert promtext.value(s, "envoy_aioresty_app_counter_total", **app) == 12 * k
    basket = {"runtime": RUNTIME, "name": "basket_items", "labels": ""}
    assert promtext.value(s, "envoy_aioresty_app_histogram_count", **basket) == 12 * hk
    assert promtext.value(s, "envoy_aioresty_app_gauge", name="open_carts") == 3
    return s


def post(env: Envoy) -> Callable[[str, bytes], int]:
    return lambda path, body: env.request("POST", path, body=body)[0]


def test_stock_bridge_exports_exact_counts(envoys) -> None:
    env = envoys(
        {"lua": {"app": "scripts/app_calls.lua"}, "routes": [{"prefix": "/", "lua": "app"}]}
    )
    shop_calls(post(env))
    assert_shop_counts(env.admin_port)
    # the /stats names (metrics_namespace "aioresty"), counters exact there too
    names = env.stats()  # /stats?format=json, counters and gauges
    assert names[f"aioresty.calls_total.runtime.{RUNTIME}.method.buy"] == 12
    # exported by the downstream "metrics" config, not under the bridge cluster
    assert not [n for n in names if n.startswith("cluster.aioresty_bridge.aioresty.")]


def test_stock_bridge_buckets_are_the_cores(envoys) -> None:
    """Each bucket Envoy shows holds what the core's own table holds (the
    probe script reads it with ar_metrics_prometheus)."""
    env = envoys(
        {"lua": {"probe": "scripts/bridge_probe.lua"}, "routes": [{"prefix": "/", "lua": "probe"}]}
    )
    for _ in range(60):
        assert env.request("POST", "/call?lib=ffi_c_echo&method=echo", body=b"x")[0] == 200
    rt = {"runtime": "ffi_c_echo", "method": "echo"}
    wait_until(
        lambda: promtext.value(scrape(env.admin_port), HIST + "_count", **rt) == 60,
        20,
        "60 observations",
    )
    core = promtext.parse(env.request("GET", "/coremetrics")[2].decode())
    ours = scrape(env.admin_port)
    buckets = [
        (dict(ls)["le"], v)
        for (n, ls), v in core.items()
        if n == "aioresty_call_time_us_bucket" and rt.items() <= ls
    ]
    assert len(buckets) == 20
    for le, v in buckets:
        assert promtext.value(ours, HIST + "_bucket", le=le, **rt) == v, le


def test_lua_mode_two_filters_count_once(envoys) -> None:
    """Two "lua" filters are two configs: one exports, nothing counts twice."""
    user = {
        "script_mode": "lua",
        "lua": {"buy": "scripts/app_calls.lua", "rest": "scripts/app_calls.lua"},
        "routes": [{"prefix": "/py/buy", "lua": "buy"}, {"prefix": "/", "lua": "rest"}],
    }
    env = envoys(user)
    shop_calls(post(env))
    assert_shop_counts(env.admin_port)


def test_listener_update_hands_the_export_over(tmp_path: Path) -> None:
    """The exporting config goes in a listener update (LDS from a file); the
    new listener's config exports from then on: the counters continue under
    the same names, nothing lost, nothing counted twice."""
    user = {"script_mode": "lua", "lua": {"app": "scripts/app_calls.lua"}}
    user["routes"] = [{"prefix": "/", "lua": "app"}]
    env = Envoy(tmp_path, user, env=dict(PY_ENV), python_path=PY_PATH)
    listener = env.config["static_resources"].pop("listeners")[0]
    lds_dir = tmp_path / "lds"
    lds_dir.mkdir()
    lds = lds_dir / "listeners.json"

    def publish(script_tag: str) -> None:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        (lua,) = [f for f in hcm["http_filters"] if f["name"] == "aioresty.lua.app"]
        cfg = json.loads(lua["typed_config"]["filter_config"]["value"])
        cfg["inline_code"] = cfg["inline_code"].split("\n-- tag ")[0] + "\n-- tag " + script_tag
        lua["typed_config"]["filter_config"]["value"] = json.dumps(cfg)
        tmp = lds_dir / ".next.json"
        tmp.write_text(json.dumps({"resources": [{"@type": _LISTENER, **listener}]}))
        tmp.replace(lds)  # atomic: Envoy's watch sees one complete file

    publish("one")
    env.config.update(FAST_FLUSH, node={"id": "test", "cluster": "test"})  # LDS wants both
    env.config["dynamic_resources"] = {
        "lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(lds), "watched_directory": {"path": str(lds_dir)}},
        }
    }
    env.config_path.write_text(envoy_config.to_yaml(env.config))
    env.args = ["--drain-time-s", "1"]  # the old listener goes 1 s after the update
    env.start()
    try:
        wait_until(lambda: env.stats().get("listener_manager.total_listeners_active") == 1, 10)
        shop_calls(post(env))
        assert_shop_counts(env.admin_port)

        publish("two")
        wait_until(lambda: env.stats().get("listener_manager.listener_modified") == 1, 10)
        wait_until(  # the old listener drained and its filter configs destroyed
            lambda: env.stats().get("listener_manager.total_listeners_draining") == 0, 20
        )
        shop_calls(post(env))
        # counters and gauges continue (docs/operations.md, Metrics: "One exporter")
        s = wait_until(
            lambda: (lambda s: s if promtext.value(s, CALLS, method="nope") == 4 else None)(
                scrape(env.admin_port)
            ),
            20,
            "the second round in calls_total",
        )
        rt = {"runtime": RUNTIME}
        for m, n in (("buy", 12), ("refund", 3), ("nope", 2)):
            assert promtext.value(s, CALLS, method=m, **rt) == 2 * n
            assert promtext.value(s, "envoy_aioresty_in_flight", method=m, **rt) == 0
        assert promtext.value(s, ANSWERS, method="buy", rc="0", **rt) == 24
        app = {"runtime": RUNTIME, "name": "orders", "labels": "kind=book"}
        assert promtext.value(s, "envoy_aioresty_app_counter_total", **app) == 24
        assert promtext.value(s, "envoy_aioresty_app_gauge", name="open_carts") == 3

        # histograms continue too, but the observations of the first seconds
        # after a handover can be lost (measured: 0 or 2 rounds of 12)
        def hist_count() -> float:
            s = scrape(env.admin_port)
            return promtext.value(s, HIST + "_count", method="buy", **rt) or 0.0

        calls, counts = 24, []
        for _ in range(3):  # settling rounds
            shop_calls(post(env))
            calls += 12
            time.sleep(3)  # three flushes
            counts.append(hist_count())
        for r in (1, 2):  # from then on every call is counted, once
            shop_calls(post(env))
            calls += 12
            want = counts[-1] + 12
            wait_until(lambda w=want: hist_count() == w, 20, f"round {r} in the histogram")
            counts.append(want)
        assert counts == sorted(counts), counts
        assert calls - 36 <= counts[-1] <= calls, (calls, counts)
        assert not [ln for ln in env.log().splitlines() if ln.startswith(("[error]", "[critical]"))]
    finally:
        assert env.terminate() == 0, env.log()[-3000:]


def test_python_filter_counts_hooks(tmp_path: Path) -> None:
    up = Upstream()
    env = FilterEnvoy(tmp_path, up.port)
    cfg = json.loads(env.config_path.read_text())
    cfg.update(FAST_FLUSH)
    env.config_path.write_text(envoy_config.to_yaml(cfg))
    try:
        env.start()
        for i in range(7):
            ok = {"authorization": "Bearer ok"}
            assert http_request(env.port, "GET", f"/ok/{i}", headers=ok)[0] == 200
        for _ in range(2):
            assert http_request(env.port, "GET", "/boom")[0] == 500
        runtime = "aioresty&tests.envoy.python.filterapp:app"
        rt = {"runtime": runtime, "method": "__filter_request"}

        def counted() -> dict | None:
            s = scrape(env.admin_port)
            return s if promtext.value(s, HIST + "_count", **rt) == 9 else None

        s = wait_until(counted, 20, "the filter's hook calls in Envoy's stats")
        assert promtext.value(s, CALLS, **rt) == 9
        assert promtext.value(s, ANSWERS, rc="0", **rt) == 7
        assert promtext.value(s, ANSWERS, rc="1", **rt) == 2
        assert promtext.value(s, "envoy_aioresty_in_flight", **rt) == 0
        # the response hook ran for the 7 requests that reached the upstream
        resp = {"runtime": runtime, "method": "__filter_response"}
        wait_until(
            lambda: promtext.value(scrape(env.admin_port), ANSWERS, rc="0", **resp) == 7,
            20,
            "the response hooks",
        )
    finally:
        assert env.stop() == 0, env.log()[-3000:]
        up.stop()
