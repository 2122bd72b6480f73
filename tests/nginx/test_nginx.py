"""aioresty on stock nginx-lua: real nginx, real sockets, a real HTTP client.

Runtimes: the C echo runtime (libffi_c_echo.so, lua-resty-ffi's ABI only) and
aioresty's Python runtime (libaioresty.so) serving tests/apps/echoapp.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import msgpack

from tests import promtext

from .conftest import lib_dir, proc_user, wait_until

PY = '"aioresty", "tests.apps.echoapp"'

# /call?m=<method>[&t=<timeout ms>]: body -> rt:<method>(body) through the Python app
CALL = """
location = /call {
    content_by_lua_block {
        local t = require "ngxtest"
        local rt = t.runtime("aioresty", "tests.apps.echoapp")
        local body = t.body()
        local m = ngx.var.arg_m or "echo"
        local tmo = tonumber(ngx.var.arg_t)
        local ok, res, err
        if tmo then
            ok, res, err = t.call_timeout("aioresty", "tests.apps.echoapp", m, body, tmo)
        else
            ok, res, err = rt[m](rt, body)
        end
        t.reply(ok, res, err)
    }
}
location = /stats {
    content_by_lua_block {
        local t = require "ngxtest"
        local rt = t.runtime("aioresty", "tests.apps.echoapp")
        local ok, res = rt:stats("")
        ngx.say(res, " | ", require("aioresty.nginx").stats())
    }
}
"""


def py_stats(ng) -> tuple[int, int, str]:
    """(started sleeps, cancelled sleeps, adapter stats) of the worker answering."""
    status, _, body = ng.request("/stats")
    assert status == 200, body
    app, _, adapter = body.decode().partition(" | ")
    slow, cancelled = (int(x) for x in app.split())
    return slow, cancelled, adapter


# --------------------------------------------------------------------------
# lua-resty-ffi's own example, with a C runtime that knows only its ABI


def test_resty_ffi_demo_c_runtime(nginx):
    nginx.write_conf(
        """
        location = /demo {
            content_by_lua_block {
                local demo = ngx.load_ffi("ffi_c_echo")
                local ok, res = demo:echo("hello")
                ngx.say(tostring(ok), " ", tostring(res))
                demo:__unload()
                local ok2, res2 = demo:echo("hello")
                ngx.say(tostring(ok2), " ", tostring(res2))
            }
        }
        location = /bad {
            content_by_lua_block {
                local rt, err = ngx.load_ffi("no_such_runtime_lib")
                ngx.say(tostring(rt), " ", tostring(err))
            }
        }
        """,
        workers=1,
    )
    nginx.start()
    status, _, body = nginx.request("/demo")
    assert status == 200, body
    first, second = body.decode().splitlines()
    assert first == "true hello"
    # the error log names the file each runtime was loaded from (docs/core.md)
    loaded = f"runtime 'ffi_c_echo' loaded from {(lib_dir() / 'libffi_c_echo.so').resolve()}"
    wait_until(lambda: loaded in nginx.log(), 5, "the 'loaded from' line")
    ok2, _, err2 = second.partition(" ")
    assert ok2 == "false" and err2 and err2 != "nil", second
    # loads afresh after the unload
    status, _, body = nginx.request("/demo")
    assert body.decode().splitlines()[0] == "true hello"
    # a load error is nil, err
    status, _, body = nginx.request("/bad")
    rt, _, err = body.decode().strip().partition(" ")
    assert rt == "nil" and "no_such_runtime_lib" in err, body
    nginx.stop()
    assert nginx.bad_log_lines() == []


# --------------------------------------------------------------------------
# aioresty Python handlers


def test_python_handlers(nginx):
    nginx.write_conf(CALL, workers=1)
    nginx.start()
    req = nginx.request

    status, _, body = req("/call?m=echo", b"hello")
    assert (status, body) == (200, b"hello")
    status, _, body = req("/call?m=upper", b"abc")
    assert (status, body) == (200, b"ABC")

    # exception in the handler: ok == false, rc, message
    status, h, body = req("/call?m=fail", b"xyz")
    assert status == 502 and h["x-rc"] == "1" and b"bad input" in body, (h, body)
    # unknown method
    status, h, body = req("/call?m=nope", b"")
    assert status == 502 and h["x-rc"] == "2" and b"no handler" in body, (h, body)
    # handler's own timeout (App side)
    status, h, body = req("/call?m=short_timeout", b"")
    assert status == 502 and h["x-rc"] == "3", (h, body)
    # None -> "" (aioresty's rule, same as on Envoy)
    status, h, body = req("/call?m=nothing", b"")
    assert status == 200 and h.get("x-nil") is None and body == b""

    # msgpack codec
    status, _, body = req("/call?m=add", msgpack.packb({"a": 2, "b": 40}))
    assert status == 200
    assert msgpack.unpackb(body) == {"sum": 42, "echo": {"a": 2, "b": 40}}

    # binary, every byte value
    blob = bytes(range(256)) * 4
    status, _, body = req("/call?m=echo", blob)
    assert (status, body) == (200, blob)

    # 1 MiB
    big = random.Random(7).randbytes(1 << 20)
    status, _, body = req("/call?m=echo", big, timeout=30)
    assert status == 200 and len(body) == len(big) and body == big

    # empty request
    status, h, body = req("/call?m=echo", b"")
    assert status == 200 and body == b""

    nginx.stop()
    assert nginx.bad_log_lines() == []


def test_call_timeout_cancels_handler(nginx):
    nginx.write_conf(CALL, workers=1)
    nginx.start()
    assert nginx.request("/call?m=echo", b"warm")[2] == b"warm"  # the runtime's start is not timed
    t0 = time.monotonic()
    status, h, body = nginx.request("/call?m=sleep&t=300", b"5")
    elapsed = time.monotonic() - t0
    assert status == 502 and body == b"timeout", (h, body)
    assert elapsed < 3
    # the runtime saw the abort: the Python handler was cancelled
    wait_until(lambda: py_stats(nginx)[1] == 1, 5, what="the handler to be cancelled")
    # the worker still serves
    assert nginx.request("/call?m=echo", b"after")[2] == b"after"
    nginx.stop()
    assert nginx.bad_log_lines() == []


# --------------------------------------------------------------------------
# phases: rewrite, access (auth decision), content, ngx.timer


def test_phases(nginx):
    nginx.write_conf(
        """
        location = /rewrite {
            rewrite_by_lua_block {
                local t = require "ngxtest"
                local rt = t.runtime("aioresty", "tests.apps.echoapp")
                local ok, res = rt:upper(ngx.var.arg_v or "")
                ngx.req.set_header("X-Upper", res)
            }
            content_by_lua_block { ngx.say(ngx.req.get_headers()["X-Upper"]) }
        }
        location = /access {
            access_by_lua_block {
                local t = require "ngxtest"
                local rt = t.runtime("ffi_c_echo")
                local ok, res = rt:echo(ngx.var.http_x_token or "")
                if not ok or res ~= "letmein" then
                    return ngx.exit(403)
                end
            }
            content_by_lua_block { ngx.say("welcome") }
        }
        location = /timer {
            content_by_lua_block {
                local key = ngx.var.arg_k
                local ok, err = ngx.timer.at(0, function(premature)
                    if premature then return end
                    local rt = ngx.load_ffi("aioresty", "tests.apps.echoapp")
                    local ok, res = rt:upper(key)
                    ngx.shared.results:set(key, tostring(ok) .. " " .. tostring(res))
                end)
                ngx.say(tostring(ok ~= nil), " ", tostring(err))
            }
        }
        location = /result {
            content_by_lua_block { ngx.say(ngx.shared.results:get(ngx.var.arg_k)) }
        }
        """,
        workers=1,
    )
    nginx.start()
    status, _, body = nginx.request("/rewrite?v=abc")
    assert (status, body) == (200, b"ABC\n")
    assert nginx.request("/access", headers={"X-Token": "nope"})[0] == 403
    status, _, body = nginx.request("/access", headers={"X-Token": "letmein"})
    assert (status, body) == (200, b"welcome\n")
    assert nginx.request("/timer?k=tmr")[2] == b"true nil\n"
    wait_until(
        lambda: nginx.request("/result?k=tmr")[2] == b"true TMR\n", 5, what="the timer's call"
    )
    nginx.stop()
    assert nginx.bad_log_lines() == []


# --------------------------------------------------------------------------
# processes: two workers, 200 concurrent clients, HUP, QUIT, socket files


def test_200_concurrent_clients_two_workers(nginx):
    nginx.write_conf(CALL, workers=2)
    # reuseport: the kernel spreads the connections over both workers
    nginx.conf.write_text(
        nginx.conf.read_text().replace(
            f"listen 127.0.0.1:{nginx.port};", f"listen 127.0.0.1:{nginx.port} reuseport;"
        )
    )
    nginx.start()
    workers = nginx.workers()
    assert len(workers) == 2
    if os.geteuid() == 0:
        assert all(proc_user(w) != 0 for w in workers), "workers should not run as root"

    def one(i: int):
        payload = f"client-{i}-".encode() + os.urandom(16).hex().encode()
        method = "echo" if i % 2 else "suspend_echo"
        status, h, body = nginx.request(f"/call?m={method}", payload, timeout=30)
        return payload, status, body, int(h["x-worker"])

    with cf.ThreadPoolExecutor(200) as ex:
        results = list(ex.map(one, range(400)))
    seen = set()
    for payload, status, body, worker in results:
        assert status == 200 and body == payload
        seen.add(worker)
    assert seen == set(workers), (seen, workers)
    # no socket file left behind, every worker's directory removed after connect
    assert list(nginx.sock_dir.iterdir()) == []
    nginx.stop()
    assert nginx.bad_log_lines() == []
    assert list(nginx.sock_dir.iterdir()) == []


def _load(nginx, stop: threading.Event, results: list, method: str, payload_of):
    i = 0
    while not stop.is_set():
        i += 1
        payload = payload_of(i)
        try:
            status, _, body = nginx.request(f"/call?m={method}", payload, timeout=20)
            results.append(
                (
                    status == 200 and body == (b"slept" if method == "sleep" else payload),
                    status,
                    body,
                )
            )
        except OSError as e:  # pragma: no cover - reported by the assertion
            results.append((False, 0, repr(e).encode()))


LATE_CALL = """
location = /late {
    content_by_lua_block {
        local t = require "ngxtest"
        local rt = t.runtime("aioresty", "tests.apps.echoapp")
        rt:echo("warm")             -- the worker's first call starts its wake loop
        ngx.sleep(tonumber(ngx.var.arg_s))
        local ok, res, err = rt:echo(t.body())
        t.reply(ok, res, err)
    }
}
"""


def test_call_after_the_exit_began_is_answered(nginx):
    """nginx keeps serving the requests it has read when a reload starts; a
    call such a request makes after the worker's wake loop ended (no call was
    waiting) is answered, not refused."""
    nginx.write_conf(LATE_CALL, workers=1)
    nginx.start()
    old = nginx.workers()
    with cf.ThreadPoolExecutor(4) as pool:
        late = [pool.submit(nginx.request, "/late?s=3", f"late-{k}".encode()) for k in range(3)]
        # every request made its warm call and sleeps (the worker's figures are up to a
        # second old; the sleep leaves two more before the late calls)
        wait_until(
            lambda: promtext.value(nginx.scrape(), "aioresty_calls_total", method="echo") == 3,
            10,
            what="3 warm calls answered",
        )
        nginx.send_signal(signal.SIGHUP)
        answers = [f.result(timeout=20) for f in late]
    assert [(status, body) for status, _, body in answers] == [
        (200, f"late-{k}".encode()) for k in range(3)
    ]
    wait_until(lambda: not set(nginx.workers()) & set(old), 15, what="the old worker to exit")
    nginx.stop()
    assert nginx.bad_log_lines() == []


def test_hup_reload_under_load(nginx):
    nginx.write_conf(CALL, workers=2)
    nginx.start()
    old = nginx.workers()
    stop = threading.Event()
    results: list = []
    threads = [
        threading.Thread(
            target=_load,
            args=(nginx, stop, results, "suspend_echo", lambda i, k=k: f"{k}-{i}".encode()),
        )
        for k in range(8)
    ]
    threads += [
        threading.Thread(target=_load, args=(nginx, stop, results, "sleep", lambda i: b"0.3"))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) >= 20, 15, what="calls under load before the HUP")
        nginx.send_signal(signal.SIGHUP)
        wait_until(
            lambda: not (set(nginx.workers()) & set(old)) and len(nginx.workers()) == 2,
            15,
            what="old workers to exit after HUP",
        )
        served = len(results)
        wait_until(lambda: len(results) >= served + 20, 15, what="the new workers serving")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert results, "no request ran"
    failed = [r for r in results if not r[0]]
    assert failed == [], failed[:5]
    assert len(results) > 50
    nginx.stop()
    assert nginx.bad_log_lines() == []
    assert list(nginx.sock_dir.iterdir()) == []


def test_quit_with_calls_in_flight(nginx):
    nginx.write_conf(CALL, workers=2)
    nginx.start()

    def slow(_):
        return nginx.request("/call?m=sleep", b"1.5", timeout=20)

    with cf.ThreadPoolExecutor(20) as ex:
        futs = [ex.submit(slow, i) for i in range(20)]
        # all 20 posted (the workers' figures are up to a second old; each call takes 1.5 s)
        wait_until(
            lambda: promtext.value(nginx.scrape(), "aioresty_calls_total", method="sleep") == 20,
            10,
            what="20 calls posted",
        )
        t0 = time.monotonic()
        nginx.send_signal(signal.SIGQUIT)
        results = [f.result(30) for f in futs]
    for status, _, body in results:
        assert (status, body) == (200, b"slept")
    assert nginx.proc.wait(15) == 0
    # the worker left soon after its last call, not after an idle read timeout
    assert time.monotonic() - t0 < 5
    assert nginx.bad_log_lines() == []
    assert list(nginx.sock_dir.iterdir()) == []


def test_idle_worker_exits_promptly(nginx):
    """An idle wake loop (blocked in its read) does not hold up a graceful exit."""
    nginx.write_conf(CALL, workers=2)
    nginx.start()
    for _ in range(4):
        assert nginx.request("/call?m=echo", b"x")[2] == b"x"
    time.sleep(0.2)
    t0 = time.monotonic()
    nginx.send_signal(signal.SIGQUIT)
    assert nginx.proc.wait(15) == 0
    assert time.monotonic() - t0 < 3
    assert nginx.bad_log_lines() == []
    assert list(nginx.sock_dir.iterdir()) == []


def test_socket_dir_is_private():
    """The waker's socket lives in a 0700 directory of its own, gone once accepted."""
    lib = ctypes.CDLL(str(lib_dir() / "libaioresty_nginx.so"))
    import tempfile

    base = tempfile.mkdtemp(prefix="aioresty-sock-")
    try:
        buf = ctypes.create_string_buffer(108)
        assert lib.arn_listen(base.encode(), buf, 108) == 0
        path = buf.value.decode()
        d = os.path.dirname(path)
        st = os.stat(d)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        assert lib.arn_accept() == 0
        assert not os.path.exists(path) and not os.path.exists(d)
        assert os.listdir(base) == []
        # the forced wake byte after accept
        s.settimeout(2)
        assert s.recv(16) == b"!"
        s.close()
        lib.arn_disconnect()
    finally:
        os.rmdir(base)


_LOG_WAKE = r"""
import ctypes, os, socket, sys, tempfile
lib = ctypes.CDLL(sys.argv[1])
core = ctypes.CDLL(sys.argv[2])
lib.arn_take_logs.restype = ctypes.c_size_t
base = tempfile.mkdtemp()
buf = ctypes.create_string_buffer(108)
assert lib.arn_listen(base.encode(), buf, 108) == 0
s = socket.socket(socket.AF_UNIX)
s.connect(buf.value.decode())
assert lib.arn_accept() == 0
s.settimeout(2)
assert s.recv(16) == b"!"               # the wake after accept
lib.arn_drain(ctypes.byref(ctypes.c_void_p()))
lib.arn_set_log_level(8)                # debug: every line kept


def take():
    out, dropped = ctypes.c_char_p(), ctypes.c_ulong()
    n = lib.arn_take_logs(ctypes.byref(out), ctypes.byref(dropped))
    return ctypes.string_at(out, n)[5:] if n else b""


core.ar_log(2, b"first")
assert s.recv(16)                       # the wake a handler reads, then:
assert take() == b"first"               # it takes the logs,
core.ar_log(2, b"second")               # (a line queued now)
lib.arn_drain(ctypes.byref(ctypes.c_void_p()))  # and drains
s.settimeout(1)
try:
    woke = s.recv(16) != b""
except TimeoutError:
    woke = False
print("woken" if woke else "no wake", take().decode())
lib.arn_disconnect()
os.rmdir(base)
"""


def test_a_log_line_queued_during_a_wake_gets_its_own():
    """A wake's handler takes the logs, then drains (which clears the flag
    that coalesces wakes): a line queued in between wakes the worker again,
    instead of waiting for the next call's answer (test_semantics waited 5 s
    for a background task's SystemExit line on a loaded CI machine)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOG_WAKE,
            str(lib_dir() / "libaioresty_nginx.so"),
            str(lib_dir() / "libaioresty_core.so"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "woken second"), out.stderr


# --------------------------------------------------------------------------
# errors: client abort, queue full, master guard


def test_client_abort_cancels_handler(nginx):
    nginx.write_conf(
        CALL
        + """
        location = /abortable {
            lua_check_client_abort on;
            content_by_lua_block {
                local t = require "ngxtest"
                local rt = t.runtime("aioresty", "tests.apps.echoapp")
                local ok, res, err = rt:sleep("30")
                t.reply(ok, res, err)
            }
        }
        """,
        workers=1,
    )
    nginx.start()
    for n in (1, 2):
        s = socket.create_connection(("127.0.0.1", nginx.port), timeout=5)
        s.sendall(b"GET /abortable HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda n=n: py_stats(nginx)[0] == n, 5, what="the handler to start")
        s.close()
        wait_until(lambda n=n: py_stats(nginx)[1] == n, 5, what="the handler to be cancelled")
    adapter = py_stats(nginx)[2]
    assert "aborts=2" in adapter and "waiters=0" in adapter, adapter
    nginx.stop()
    assert nginx.bad_log_lines() == []


def test_abort_watch_touches_ngx_ctx_only_when_on(nginx):
    # off: a call leaves ngx.ctx without aioresty's key (ngx.ctx is costly per call);
    # on: calls share one in-flight table per request, emptied as each call ends
    body = """
            content_by_lua_block {
                local t = require "ngxtest"
                local rt = t.runtime("aioresty", "tests.apps.echoapp")
                local a = select(2, rt:echo("a"))
                local b = select(2, rt:echo("b"))
                local inflight = rawget(ngx.ctx, "__aioresty_inflight")
                ngx.say(a, b, " ", type(inflight), " ",
                        inflight and tostring(next(inflight)) or "-", " ",
                        require("aioresty.nginx").abort_request("x"))
            }
    """
    nginx.write_conf(
        CALL
        + "location = /off { lua_check_client_abort off; "
        + body
        + "}\n"
        + "location = /on { lua_check_client_abort on; "
        + body
        + "}\n",
        workers=1,
    )
    nginx.start()
    assert nginx.request("/off")[2] == b"ab nil - 0\n"
    assert nginx.request("/on")[2] == b"ab table nil 0\n"
    nginx.stop()
    assert nginx.bad_log_lines() == []


def test_application_on_abort_handler_can_abort_calls(nginx):
    # the application registered ngx.on_abort first (ours sees "duplicate call"):
    # its handler's abort_request() still reaches the call in flight
    nginx.write_conf(
        CALL
        + """
        location = /own {
            lua_check_client_abort on;
            content_by_lua_block {
                local t = require "ngxtest"
                local rt = t.runtime("aioresty", "tests.apps.echoapp")
                assert(ngx.on_abort(function()
                    require("aioresty.nginx").abort_request("client went away")
                    return ngx.exit(499)
                end))
                local ok, res, err = rt:sleep("30")
                t.reply(ok, res, err)
            }
        }
        """,
        workers=1,
    )
    nginx.start()
    s = socket.create_connection(("127.0.0.1", nginx.port), timeout=5)
    s.sendall(b"GET /own HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: py_stats(nginx)[0] == 1, 5, what="the handler to start")
    s.close()
    wait_until(lambda: py_stats(nginx)[1] == 1, 5, what="the handler to be cancelled")
    adapter = py_stats(nginx)[2]
    assert "aborts=1" in adapter and "waiters=0" in adapter, adapter
    nginx.stop()
    assert nginx.bad_log_lines() == []


def test_queue_full_is_immediate(nginx):
    nginx.write_conf(
        """
        location = /q {
            content_by_lua_block {
                local t = require "ngxtest"
                local rt = t.runtime("aioresty", "tests.nginx.blockapp", { max_queue = 2 })
                local ok, res, err = rt[ngx.var.arg_m](rt, t.body())
                t.reply(ok, res, err)
            }
        }
        """,
        workers=1,
    )
    nginx.start()
    assert nginx.request("/q?m=echo", b"warm")[2] == b"warm"
    with cf.ThreadPoolExecutor(5) as ex:
        blocker = ex.submit(nginx.request, "/q?m=block", b"1.0")
        wait_until(  # the loop is now blocked inside `block` (the watchdog reports it)
            lambda: promtext.value(nginx.scrape(), "aioresty_loop_lag_us") > 0, 5, "the block"
        )

        def timed(i):
            t0 = time.monotonic()
            r = nginx.request("/q?m=echo", f"m{i}".encode())
            return r, time.monotonic() - t0

        futs = [ex.submit(timed, i) for i in range(4)]
        done = [f.result(20) for f in futs]
        assert blocker.result(20)[2] == b"blocked"
    full = [(r, dt) for r, dt in done if r[0] == 502]
    ok = [(r, dt) for r, dt in done if r[0] == 200]
    assert len(full) == 2 and len(ok) == 2, done
    for (_status, _, body), dt in full:
        assert body == b"post failed, queue full" and dt < 0.5
    nginx.stop()
    assert nginx.bad_log_lines() == []


def test_master_refuses_runtimes(nginx):
    nginx.write_conf(
        """
        location = /guard {
            content_by_lua_block { ngx.say(ngx.shared.results:get("guard")) }
        }
        """,
        init="""
        local rt, err = ngx.load_ffi("ffi_c_echo")
        ngx.shared.results:set("guard", tostring(rt) .. " " .. tostring(err))
        """,
        workers=1,
    )
    nginx.start()
    body = nginx.request("/guard")[2].decode()
    assert body.startswith("nil ") and "master" in body, body
    # no runtime thread was started in the master
    with open(f"/proc/{nginx.proc.pid}/status") as f:
        threads = next(line for line in f if line.startswith("Threads:"))
    assert threads.split()[1] == "1", threads
    nginx.stop()
