"""app.counter / app.gauge / app.histogram (aioresty/metrics.py) and the
core's call metrics, through the in-process AppClient: the same runtime and
core the proxies run, read back with aioresty.metrics.text()."""

from __future__ import annotations

import asyncio

import pytest

from aioresty import App, metrics
from aioresty.testing import AppClient
from tests import promtext


def test_definitions_are_checked() -> None:
    app = App()
    with pytest.raises(ValueError, match="metric name"):
        app.counter("bad name")
    with pytest.raises(ValueError, match="bad label name"):
        app.counter("ok", labels=("bad-label",))
    with pytest.raises(ValueError, match="named twice"):
        app.gauge("ok", labels=("a", "a"))
    with pytest.raises(ValueError, match="increasing"):
        app.histogram("h", buckets=(5, 1))
    with pytest.raises(ValueError, match="increasing"):
        app.histogram("h", buckets=())


def test_recording_checks_labels_and_amounts() -> None:
    app = App()
    c = app.counter("api_checks_total", labels=("kind",))
    with pytest.raises(ValueError, match=r"takes the labels \(kind\)"):
        c.inc()
    with pytest.raises(ValueError, match=r"got \(colour\)"):
        c.inc(kind="a", colour="red")
    with pytest.raises(ValueError, match="int >= 0"):
        c.inc(-1, kind="a")
    with pytest.raises(ValueError, match="refused"):
        c.inc(kind="x" * 300)


def test_handlers_record_and_the_core_counts_calls() -> None:
    app = App()
    sold = app.counter("api_sold", labels=("kind",))
    size = app.histogram("api_size", buckets=(10, 100))
    level = app.gauge("api_level")

    @app.handler
    async def sell(req: bytes) -> bytes:
        sold.inc(kind=req.decode())
        size.observe(len(req) * 20)
        level.inc(2)
        return b"ok"

    @app.handler
    async def api_fail(req: bytes) -> bytes:
        raise RuntimeError("nope")

    async def run() -> str:
        async with AppClient(app) as client:
            for kind in ("a", "a", "bb"):
                assert (await client.call("sell", kind.encode())).rc == 0
            assert (await client.call("api_fail", b"")).rc == 1
            return metrics.text()  # a runtime's call series end with it

    s = promtext.parse(asyncio.run(run()))
    app_series = {"runtime": "", "name": "api_sold"}
    assert promtext.value(s, "aioresty_app_counter_total", labels="kind=a", **app_series) == 2
    assert promtext.value(s, "aioresty_app_counter_total", labels="kind=bb", **app_series) == 1
    hist = {"runtime": "", "name": "api_size", "labels": ""}
    assert promtext.value(s, "aioresty_app_histogram_bucket", le="10", **hist) == 0
    assert promtext.value(s, "aioresty_app_histogram_bucket", le="100", **hist) == 3
    assert promtext.value(s, "aioresty_app_histogram_sum", **hist) == 80
    assert promtext.value(s, "aioresty_app_gauge", runtime="", name="api_level", labels="") == 6
    assert promtext.value(s, "aioresty_answers_total", method="api_fail", rc="1") == 1
    assert promtext.value(s, "aioresty_call_time_us_count", method="api_fail") == 1
    assert promtext.value(s, "aioresty_in_flight", method="api_fail") == 0
    assert metrics.call_bounds()[0] == 50 and len(metrics.call_bounds()) == 19
