"""The Prometheus endpoint on nginx (issue 12, point 1): every worker's
calls and application metrics, summed, after calls of known outcomes."""

from __future__ import annotations

from tests import promtext
from tests.netutil import wait_until

from .conftest import METRICS_LOCATION

RUNTIME = "aioresty&tests.apps.shopmetrics"

SERVER = """
location = /call {
    content_by_lua_block {
        local rt, err = ngx.load_ffi("aioresty", "tests.apps.shopmetrics")
        if not rt then
            ngx.status = 500
            return ngx.say(err)
        end
        ngx.req.read_body()
        local ok, res = rt[ngx.var.arg_m](rt, ngx.req.get_body_data() or "")
        if not ok then
            ngx.status = 502
        end
        ngx.print(res)
    }
}
"""


def test_counts_of_known_outcomes_summed_over_workers(nginx) -> None:
    nginx.write_conf(SERVER, workers=2, listen="reuseport")
    nginx.start()
    pids = set()
    for i in range(40):  # a new connection each: both workers serve
        status, _, body = nginx.request(
            "/call?m=buy", body=f"{'book' if i % 4 else 'pen'}:{i % 12}".encode()
        )
        assert status == 200, body
        pids.add(int(body))
    for _ in range(3):
        assert nginx.request("/call?m=refund", body=b"x")[0] == 502
        assert nginx.request("/call?m=nope", body=b"x")[0] == 502
    assert len(pids) == 2, pids

    def counted() -> bool:
        s = nginx.scrape()
        return promtext.value(s, "aioresty_calls_total", runtime=RUNTIME, method="buy") == 40

    wait_until(counted, 10, "every worker's calls in the scrape")
    status, headers, _ = nginx.request("/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4"
    s = nginx.scrape()
    calls = "aioresty_calls_total"
    answers = "aioresty_answers_total"
    assert promtext.value(s, calls, runtime=RUNTIME, method="refund") == 3
    assert promtext.value(s, calls, runtime=RUNTIME, method="nope") == 3
    assert promtext.value(s, answers, runtime=RUNTIME, method="buy", rc="0") == 40
    assert promtext.value(s, answers, runtime=RUNTIME, method="refund", rc="1") == 3
    assert promtext.value(s, answers, runtime=RUNTIME, method="nope", rc="2") == 3
    hist = "aioresty_call_time_us"
    assert promtext.value(s, hist + "_count", runtime=RUNTIME, method="buy") == 40
    assert promtext.value(s, hist + "_bucket", runtime=RUNTIME, method="buy", le="+Inf") == 40
    assert promtext.value(s, "aioresty_in_flight", runtime=RUNTIME, method="buy") == 0
    assert promtext.value(s, "aioresty_queue_depth", runtime=RUNTIME) == 0
    assert ("aioresty_loop_lag_us", frozenset({("runtime", RUNTIME)})) in s
    # the application's own metrics, from both workers
    app = {"runtime": RUNTIME, "name": "orders"}
    assert promtext.value(s, "aioresty_app_counter_total", labels="kind=book", **app) == 30
    assert promtext.value(s, "aioresty_app_counter_total", labels="kind=pen", **app) == 10
    basket = {"runtime": RUNTIME, "name": "basket_items", "labels": ""}
    assert promtext.value(s, "aioresty_app_histogram_count", **basket) == 40
    items = [i % 12 for i in range(40)]
    for le in (1, 5, 10):  # cumulative buckets
        n = sum(x <= le for x in items)
        assert promtext.value(s, "aioresty_app_histogram_bucket", le=str(le), **basket) == n
    gauge = {"runtime": RUNTIME, "name": "open_carts", "labels": ""}
    assert promtext.value(s, "aioresty_app_gauge", **gauge) == 6  # 3 per worker
    assert nginx.bad_log_lines(allow=("no refunds", "no handler for method")) == []


def test_without_the_shared_dict_the_endpoint_says_what_is_missing(nginx) -> None:
    nginx.write_conf(
        SERVER + METRICS_LOCATION.replace("/metrics", "/bare"), workers=1, metrics=False
    )
    nginx.start()
    assert nginx.request("/call?m=buy", body=b"book:1")[0] == 200
    status, _, body = nginx.request("/bare")
    assert status == 500 and b"lua_shared_dict aioresty_metrics 1m;" in body, body
