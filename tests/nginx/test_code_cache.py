"""`lua_code_cache off;`, how nginx-lua developers run while they edit
scripts: every request gets a fresh Lua VM, so resty_ffi, aioresty.nginx and
the runtime object load again per request, while the runtime itself stays
loaded in the process.  On the stock path the first VM owns the wake loop and
the others' calls are parked (native/nginx/parked_calls.h); with the
accelerator every VM resumes its own coroutines.  Either way: every call
answered, timeouts and client aborts as with the cache on, no VM kept alive
per request, a clean exit."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import socket

from tests import promtext

from .conftest import wait_until

SERVER = """
location = /echo {
    content_by_lua_block {
        local t = require "ngxtest"
        local rt = t.runtime("aioresty", "tests.apps.echoapp")
        t.reply(rt:echo(ngx.var.arg_v or ""))
    }
}
location = /timeout {
    content_by_lua_block {
        local t = require "ngxtest"
        t.reply(t.call_timeout("aioresty", "tests.apps.echoapp", "sleep", "5", 200))
    }
}
location = /abortable {
    lua_check_client_abort on;
    content_by_lua_block {
        local t = require "ngxtest"
        local rt = t.runtime("aioresty", "tests.apps.echoapp")
        t.reply(rt:sleep("30"))
    }
}
location = /late {
    content_by_lua_block {
        local t = require "ngxtest"
        ngx.log(ngx.NOTICE, "late call sleeps: ", ngx.var.arg_v)
        ngx.sleep(tonumber(ngx.var.arg_s))
        local rt = t.runtime("aioresty", "tests.apps.echoapp")
        local ok, res, err = rt:sleep("0.3")    -- answered while the others wait too
        if not ok then
            return t.reply(ok, res, err)
        end
        t.reply(rt:echo(ngx.var.arg_v))
    }
}
location = /stats {
    content_by_lua_block {
        local t = require "ngxtest"
        local rt = t.runtime("aioresty", "tests.apps.echoapp")
        local ok, res = rt:stats("")
        ngx.say(res)
    }
}
"""


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(pid)


def _sleeps(nginx) -> tuple[int, int]:
    """(started, cancelled) sleep handlers of the app."""
    status, _, body = nginx.request("/stats")
    assert status == 200, body
    started, cancelled = (int(x) for x in body.split())
    return started, cancelled


def test_code_cache_off(nginx) -> None:
    nginx.write_conf(SERVER, http="lua_code_cache off;", workers=1)
    nginx.start()
    for i in range(20):
        status, _, body = nginx.request(f"/echo?v=seq{i}")
        assert (status, body) == (200, f"seq{i}".encode()), body
    with cf.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: nginx.request(f"/echo?v=par{i}"), range(300)))
    assert [(s, b) for s, _, b in got] == [(200, f"par{i}".encode()) for i in range(300)]

    # a call's own timeout: the handler is cancelled, the caller gets "timeout"
    status, headers, body = nginx.request("/timeout")
    assert (status, body) == (502, b"timeout"), (status, headers, body)
    wait_until(lambda: _sleeps(nginx) == (1, 1), 5, "the timed-out handler to be cancelled")

    # a client that goes away: the handler is cancelled
    s = socket.create_connection(("127.0.0.1", nginx.port), timeout=5)
    s.sendall(b"GET /abortable HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: _sleeps(nginx)[0] == 2, 5, "the handler to start")
    s.close()
    wait_until(lambda: _sleeps(nginx) == (2, 2), 5, "the aborted handler to be cancelled")

    # no Lua VM outlives its request: RSS flat over 2,000 more requests
    (worker,) = nginx.workers()
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: nginx.request(f"/echo?v={i}"), range(500)))
    before = _rss_kib(worker)
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: nginx.request(f"/echo?v={i}"), range(2000)))
    assert all(a[0] == 200 for a in answers)
    grown = _rss_kib(worker) - before
    assert grown < 20 * 1024, f"worker RSS grew {grown} KiB over 2,000 requests"

    calls = promtext.value(nginx.scrape(), "aioresty_calls_total", method="echo")
    assert calls >= 2820, calls  # the metrics still publish (once per process)

    assert nginx.stop() == 0, nginx.log()[-3000:]
    assert nginx.bad_log_lines() == [], nginx.log()[-3000:]
    assert "ngx.sleep(0)" not in nginx.log()  # the parked poll never spins


def test_calls_after_the_exit_began_get_their_own_answers(nginx) -> None:
    """A graceful exit: requests nginx had read call, each in its own Lua VM,
    after the worker's wake loop ended (no call was waiting).  Each is answered
    with its own answer: the owner's loop is gone, so each VM's poll collects
    its own answers."""
    nginx.write_conf(SERVER, http="lua_code_cache off;", workers=1)
    nginx.start()
    assert nginx.request("/echo?v=warm")[::2] == (200, b"warm")  # its VM owns the wake loop
    old = nginx.workers()
    with cf.ThreadPoolExecutor(4) as pool:
        late = [pool.submit(nginx.request, f"/late?s=1.5&v=late-{k}") for k in range(4)]
        wait_until(lambda: nginx.log().count("late call sleeps") == 4, 5, "the requests to run")
        nginx.send_signal(signal.SIGHUP)
        answers = [f.result(timeout=20) for f in late]
    assert [(status, body) for status, _, body in answers] == [
        (200, f"late-{k}".encode()) for k in range(4)
    ]
    wait_until(lambda: not set(nginx.workers()) & set(old), 15, "the old worker to exit")
    assert nginx.stop() == 0, nginx.log()[-3000:]
    # the reload logs nginx's own alert again, into the error_log this time
    assert nginx.bad_log_lines(allow=("lua_code_cache is off",)) == [], nginx.log()[-3000:]
