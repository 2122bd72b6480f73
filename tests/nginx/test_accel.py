"""The optional accelerator module (native/nginx/accel): used when loaded, stock
otherwise, and refusing a lua module of another version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# the one source of the accelerator's ABI number (the module and libaioresty_nginx both
# compile it in; accelerated() reports it)
HEADER = Path(__file__).resolve().parents[2] / "native" / "nginx" / "aioresty_nginx.h"
ABI = int(re.search(r"#define ARN_ACCEL_ABI (\d+)", HEADER.read_text()).group(1))

PY = '"aioresty", "tests.apps.echoapp"'

WHICH = """
location = /which {
    content_by_lua_block {
        local rt = assert(ngx.load_ffi(__PY__))
        local ok, res = rt:echo("x")
        local accel, desc = require("aioresty.nginx").accelerated()
        ngx.say(tostring(ok), " ", res, " ", tostring(accel), " ", tostring(desc), " | ",
                require("aioresty.nginx").stats())
    }
}
""".replace("__PY__", PY)


def test_the_path_in_use_is_the_one_loaded(nginx) -> None:
    nginx.write_conf(WHICH, workers=1)
    nginx.start()
    for _ in range(3):
        status, _, body = nginx.request("/which")
        assert status == 200, body
    ok, echoed, accel, desc = body.decode().split(" | ")[0].split(" ", 3)
    assert (ok, echoed) == ("true", "x")
    stats = body.decode().split(" | ")[1]
    if nginx.accel:
        assert accel == "true"
        assert "ngx_lua=10023" in desc and f"abi={ABI}" in desc
        assert int(re.search(r"accel_calls=(\d+)", stats).group(1)) >= 3
        assert "accelerator attached" in nginx.log()
    else:
        assert (accel, desc) == ("false", "nil")
        assert "accel=1" not in stats
    nginx.stop()
    assert nginx.bad_log_lines() == []


@pytest.mark.parametrize("nginx", ["accel"], indirect=True)
def test_refuses_another_lua_module_version(nginx) -> None:
    # the module reads the loaded lua module's ngx.config.ngx_lua_version after the
    # configuration ran: pretend it is another one
    nginx.write_conf(WHICH, init="ngx.config.ngx_lua_version = 10099", workers=1)
    with pytest.raises(RuntimeError, match="nginx exited"):
        nginx.start()
    log = nginx.log() + nginx.output()
    assert "[emerg]" in log
    assert "aioresty accelerator: built for the lua module 10023" in log
    assert "the loaded one is 10099" in log


BURST = """
location = /burst {
    content_by_lua_block {
        local rt = assert(ngx.load_ffi("ffi_c_echo"))
        assert(rt:echo("warm"))
        local function count(key)
            return tonumber(require("aioresty.nginx").stats():match(key .. "=(%d+)"))
        end
        local calls0, flushes0 = count("accel_calls"), count("accel_flushes")
        local threads = {}
        for i = 1, 8 do     -- each thread posts its call, then yields: one iteration
            threads[i] = ngx.thread.spawn(function() return rt:echo("x" .. i) end)
        end
        local got = {}
        for i = 1, 8 do
            local ok, called, res = ngx.thread.wait(threads[i])
            got[#got + 1] = tostring(ok and called) .. ":" .. tostring(res)
        end
        ngx.say(table.concat(got, ","), " ", count("accel_calls") - calls0, " ",
                count("accel_flushes") - flushes0)
    }
}
"""


@pytest.mark.parametrize("nginx", ["accel"], indirect=True)
def test_calls_posted_in_one_iteration_wake_the_runtime_once(nginx) -> None:
    nginx.write_conf(BURST, workers=1)
    nginx.start()
    status, _, body = nginx.request("/burst")
    assert status == 200, body
    answers, calls, flushes = body.decode().split()
    assert answers == ",".join(f"true:x{i}" for i in range(1, 9))
    assert (calls, flushes) == ("8", "1")
    nginx.stop()
    assert nginx.bad_log_lines() == []
