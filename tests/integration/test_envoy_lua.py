"""tests/apps/storeapp.py:app behind the two Envoy Lua hosts: aioresty's "lua"
filter mode (`script_mode = "lua"`) and the stock envoy.filters.http.lua with
the bridge (`script_mode = "bridge"`), one Envoy (two workers) per mode running
tests/integration/lua/store_envoy.lua unchanged, against real redis,
PostgreSQL and an HTTP upstream."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.envoy.conftest import REPO, Envoy
from tests.integration import cases
from tests.services import Postgres, store_env

SCRIPT = Path(__file__).resolve().parent / "lua" / "store_envoy.lua"


@pytest.fixture(scope="module", params=["lua", "bridge"])
def envoy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    store_config: dict[str, str],
) -> Iterator[Envoy]:
    mode = request.param
    user = {
        "lua": {"store": str(SCRIPT)},
        "routes": [{"prefix": "/", "lua": "store"}],
        "script_mode": mode,
    }
    e = Envoy(
        tmp_path_factory.mktemp(f"envoy-{mode}"),
        user,
        concurrency=2,
        env={"AIORESTY_VENV": sys.prefix, **store_env(store_config)},
        python_path=[str(REPO)],
    )
    e.mode = mode  # type: ignore[attr-defined]
    e.start()
    yield e
    e.stop()  # test_exit_runs_shutdown stopped it already unless a test failed early


def test_concurrent_requests_matched(envoy: Envoy, store_config: dict[str, str]) -> None:
    pids = cases.check_concurrent(envoy, f"envoy_{envoy.mode}", store_config["redis_url"])
    # one runtime for the whole process (both workers): one pool, at most 8 backends
    assert 1 <= len(pids) <= 8, pids
    assert len(cases.startups(envoy)) == 1, cases.startups(envoy)
    stats = envoy.stats()
    if envoy.mode == "bridge":
        # every call went through the bridge cluster, none reached its sink listener
        assert stats["cluster.aioresty_bridge.upstream_rq_total"] >= cases.N_CONCURRENT
        assert stats.get("http.aioresty_bridge_sink.downstream_rq_total", 0) == 0
    else:
        assert "cluster.aioresty_bridge.upstream_rq_total" not in stats


def test_denied(envoy: Envoy) -> None:
    cases.check_denied(envoy)


def test_handler_timeout_cancels_query(envoy: Envoy, postgres_server: Postgres) -> None:
    cases.check_handler_timeout(envoy, postgres_server)


def test_per_call_timeout_cancels_query(envoy: Envoy, postgres_server: Postgres) -> None:
    cases.check_call_timeout(envoy, postgres_server)
    if envoy.mode == "bridge":  # the timeout is httpCall's: Envoy timed the bridge call out
        assert envoy.stats()["cluster.aioresty_bridge.upstream_rq_timeout"] >= 1


def test_client_abort_cancels_query(envoy: Envoy, postgres_server: Postgres) -> None:
    stat = "http.aioresty_main.downstream_cx_destroy_remote_active_rq"
    before = envoy.stats().get(stat, 0)
    cases.check_client_abort(envoy, postgres_server)
    # Envoy saw three clients go away with their request in flight
    assert envoy.stats()[stat] - before == 3


def test_unload_runs_shutdown_then_reloads(envoy: Envoy) -> None:
    cases.check_unload_runs_shutdown(envoy)


def test_log_clean(envoy: Envoy) -> None:
    assert cases.clean_log(envoy.log()) == []
    assert envoy.proc is not None and envoy.proc.poll() is None


def test_exit_runs_shutdown(envoy: Envoy) -> None:
    """SIGTERM: Envoy exits 0 and the live runtime's on_shutdown ran."""
    assert envoy.terminate() == 0
    cases.check_exit_runs_shutdown(envoy.log(), "[storeapp] started", "[storeapp] stopped")
