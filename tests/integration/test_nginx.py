"""tests/apps/storeapp.py:app behind stock nginx-lua (two workers, each with its
own runtime): handlers called from content_by_lua_block, and an auth decision
in access_by_lua_block followed by a content call, against real redis,
PostgreSQL and an HTTP upstream.  Same routes and checks as the Envoy Lua
hosts (tests/integration/cases.py)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import cases
from tests.netutil import wait_until
from tests.nginx.conftest import Nginx, _missing, free_port
from tests.services import Postgres, store_env

LOAD = 'local rt, lerr = ngx.load_ffi("aioresty", os.getenv("AIORESTY_STORE_CFG"))'

SERVER = """
lua_check_client_abort on;   # a client that goes away cancels its call
access_log logs/access.log status;

location /store/ {
    content_by_lua_block {
        @LOAD@
        if not rt then
            ngx.log(ngx.ERR, "storeapp: ", lerr)
            return ngx.exit(500)
        end
        local method = ngx.var.uri:match("^/store/([%w_]+)$")
        ngx.req.read_body()
        local req = ngx.req.get_body_data() or ""
        local t = tonumber(ngx.var.arg_t)
        local ok, res, err
        if t then
            ok, res, err = require("resty_ffi").call(rt, method, req, nil, t)
        else
            ok, res, err = rt[method](rt, req)
        end
        if not ok then
            ngx.status = 502
            ngx.header["X-Rc"] = tostring(res)
            ngx.print(err or tostring(res))
            return
        end
        ngx.print(res or "")
    }
}

location /gated/ {
    access_by_lua_block {
        @LOAD@
        if not rt then
            ngx.log(ngx.ERR, "storeapp: ", lerr)
            return ngx.exit(500)
        end
        local ok, user, err = rt:authorize(ngx.var.http_x_token or "")
        if not ok then
            ngx.header["X-Rc"] = tostring(user)
            if user == 10 then
                ngx.status = ngx.HTTP_UNAUTHORIZED
                ngx.print("denied: ", err)
                return ngx.exit(ngx.HTTP_OK)
            end
            ngx.log(ngx.ERR, "authorize failed: ", err or user)
            return ngx.exit(502)
        end
        ngx.ctx.user = user
    }
    content_by_lua_block {
        @LOAD@
        local id = ngx.var.uri:match("^/gated/([%w_%-]+)$")
        local ok, doc, err = rt:profile(ngx.ctx.user .. " " .. id)
        if not ok then
            ngx.log(ngx.ERR, "profile failed: ", err or doc)
            return ngx.exit(502)
        end
        ngx.header["Content-Type"] = "application/json"
        ngx.print(doc)
    }
}

location = /unload {
    content_by_lua_block {
        @LOAD@
        rt:__unload()
        ngx.print("unloaded")
    }
}
""".replace("@LOAD@", LOAD)


@pytest.fixture(scope="module")
def nginx(store_config: dict[str, str]) -> Iterator[Nginx]:
    why = _missing()
    if why:
        pytest.skip(why)
    prefix = Path(tempfile.mkdtemp(prefix="aioresty-int-nginx-"))
    os.chmod(prefix, 0o755)  # workers run as nobody when the master is root
    ng = Nginx(prefix, free_port())
    ng.extra_env.update(store_env(store_config))
    ng.write_conf(
        SERVER,
        http="log_format status '$status $request_method $request_uri';",
        main="env AIORESTY_STORE_CFG;",
        workers=2,
    )
    try:
        ng.start()
        yield ng
    finally:
        ng.stop(signal.SIGTERM, timeout=10)
        if getattr(ng, "stdout", None):
            ng.stdout.close()
        if os.environ.get("AIORESTY_KEEP_NGINX"):
            print(f"nginx prefix kept: {prefix}")
        else:
            shutil.rmtree(prefix, ignore_errors=True)


def test_concurrent_requests_matched(nginx: Nginx, store_config: dict[str, str]) -> None:
    pids = cases.check_concurrent(nginx, "nginx", store_config["redis_url"])
    # nginx writes its access log line just after the answer went out
    wait_until(
        lambda: sum(line.startswith("200 ") for line in access_log(nginx)) >= cases.N_CONCURRENT,
        5,
        f"{cases.N_CONCURRENT} '200' lines in access.log",
    )
    # one runtime per worker, each with its own pool of at most 8 backends
    assert 1 <= len(pids) <= 16, pids
    started = cases.startups(nginx)
    assert 1 <= len(started) <= 2, started
    assert len({line.split("pid=")[1].split()[0] for line in started}) == len(started)


def test_denied_in_access_phase(nginx: Nginx) -> None:
    cases.check_denied(nginx)
    wait_until(
        lambda: access_log(nginx).count("401 GET /gated/x1") == 2, 5, "2 x 401 in access.log"
    )


def test_handler_timeout_cancels_query(nginx: Nginx, postgres_server: Postgres) -> None:
    cases.check_handler_timeout(nginx, postgres_server)


def test_per_call_timeout_cancels_query(nginx: Nginx, postgres_server: Postgres) -> None:
    cases.check_call_timeout(nginx, postgres_server)


def access_log(ng: Nginx) -> list[str]:
    return (ng.prefix / "logs" / "access.log").read_text().splitlines()


def test_client_abort_cancels_query(nginx: Nginx, postgres_server: Postgres) -> None:
    before = access_log(nginx).count("499 POST /store/long_sql")
    cases.check_client_abort(nginx, postgres_server)
    # nginx noticed each abort (lua_check_client_abort) and ended the request with 499
    wait_until(
        lambda: access_log(nginx).count("499 POST /store/long_sql") - before == 3,
        5,
        "3 x 499 in access.log",
    )
    assert nginx.log().count("client prematurely closed connection") >= 3


def test_unload_runs_shutdown_then_reloads(nginx: Nginx) -> None:
    cases.check_unload_runs_shutdown(nginx)


def test_log_clean(nginx: Nginx) -> None:
    assert cases.clean_log(nginx.log()) == []
    assert nginx.proc is not None and nginx.proc.poll() is None


def test_exit_runs_shutdown(nginx: Nginx) -> None:
    """SIGQUIT (graceful): nginx exits 0 and every worker's runtime ran on_shutdown."""
    assert nginx.stop(signal.SIGQUIT, timeout=20) == 0
    cases.check_exit_runs_shutdown(nginx.log(), "[storeapp] started", "[storeapp] stopped")
