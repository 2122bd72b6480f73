"""The native core and the Python runtime, driven through the C test host."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgpack
import pytest

from aioresty import RC_BAD_RESULT
from tests import semantics_cases
from tests.hostlib import CORE, Host, crc, parse_answer
from tests.netutil import wait_until

APP = "tests.apps.echoapp"


@pytest.fixture
def py(host: Host) -> Host:
    host.ok(f"load p aioresty {APP}")
    return host


def test_c_runtime_echo_uses_only_the_lua_resty_ffi_abi(host: Host) -> None:
    host.ok("load c ffi_c_echo -")
    a = host.call("c", "anything", "text:hello")
    assert (a.rc, a.data) == (0, b"hello")
    assert host.send("stress c echo 4 4000 64 8") == "stress ok=16000 mismatch=0 errors=0"


def test_c_runtime_rc_is_passed_through(host: Host) -> None:
    host.ok("load c ffi_c_echo rc=7")
    a = host.call("c", "x", "text:why")
    assert (a.rc, a.data) == (7, b"why")


def test_limits_are_one_table_read_by_every_side() -> None:
    """aioresty_core.h's limits, as C, Lua (resty_ffi reads ar_limits) and the
    Python cases see them: one source, checked rather than commented."""
    core = ctypes.CDLL(str(CORE))
    lim = (ctypes.c_int * 5)()
    core.ar_limits(lim)
    assert list(lim) == [127, semantics_cases.ANSWER_MAX, RC_BAD_RESULT, 65536, 60000]


def test_answers_over_the_limit_are_an_error_for_any_runtime(host: Host) -> None:
    """The core enforces the answer limit, so a lua-resty-ffi runtime in C gets the
    same rule as aioresty's Python runtime (tests/semantics_cases.py)."""
    limit = semantics_cases.ANSWER_MAX
    host.ok("load c ffi_c_echo -")
    a = host.call("c", "big", f"rep:61:{limit}", 30000)
    assert (a.rc, a.length, a.crc) == (0, limit, crc(b"a" * limit))
    a = host.call("c", "big", f"rep:61:{limit + 1}", 30000)
    want = f"aioresty: the answer to 'big' is {limit + 1} bytes, over the limit of {limit}"
    assert (a.rc, a.text) == (5, want)
    assert host.call("c", "x", "text:after").data == b"after"


def test_python_echo(py: Host) -> None:
    a = py.call("p", "echo", "text:hello")
    assert (a.rc, a.nil, a.data) == (0, False, b"hello")


def test_method_dispatch(py: Host) -> None:
    assert py.call("p", "upper", "text:abc").data == b"ABC"
    assert py.call("p", "echo", "text:abc").data == b"abc"
    a = py.call("p", "no_such_method", "text:x")
    assert a.rc == 2
    assert "no handler for method 'no_such_method'" in a.text
    assert "echo" in a.text  # lists what exists


def test_none_answers_empty_string(py: Host) -> None:
    a = py.call("p", "nothing", "text:x")
    assert (a.rc, a.nil, a.length) == (0, False, 0)


def test_msgpack_codec(py: Host) -> None:
    payload = msgpack.packb({"a": 2, "b": 40, "s": "héllo"})
    a = py.call("p", "add", "hex:" + payload.hex())
    assert a.rc == 0
    assert msgpack.unpackb(a.data) == {"sum": 42, "echo": {"a": 2, "b": 40, "s": "héllo"}}
    bad = py.call("p", "add", "text:\xc1notmsgpack")
    assert bad.rc == 4 and "expects a msgpack payload" in bad.text


@pytest.mark.parametrize("method", ["echo", "suspend_echo"])
def test_payload_sizes(py: Host, method: str) -> None:
    empty = py.call("p", method, "empty")
    assert (empty.rc, empty.nil, empty.length) == (0, False, 0)
    nul = bytes([0, 1, 0, 255, 0]) * 20
    a = py.call("p", method, "hex:" + nul.hex())
    assert (a.rc, a.data) == (0, nul)
    mib = py.call("p", method, "rep:00:1048576")
    assert (mib.rc, mib.length, mib.crc) == (0, 1 << 20, crc(bytes(1 << 20)))
    rnd = py.call("p", method, "rand:1048576")
    assert (rnd.rc, rnd.length) == (0, 1 << 20)


def test_exceptions_answer_rc_and_runtime_keeps_serving(py: Host) -> None:
    a = py.call("p", "fail", "text:boom")
    assert a.rc == 1
    assert a.text == "aioresty: handler 'fail' raised ValueError: bad input 'boom'"
    b = py.call("p", "fail_later", "empty")
    assert b.rc == 1 and "KeyError" in b.text
    c = py.call("p", "refuse", "empty")
    assert (c.rc, c.text) == (42, "custom refusal")
    d = py.call("p", "wrong_type", "empty")
    assert d.rc == 5 and "returned int" in d.text
    assert py.call("p", "echo", "text:still-alive").data == b"still-alive"
    # one line per failed call in the host's log (the core's stderr default here):
    # method, rc, duration, message, and the traceback when the handler raised
    line = (
        "[aioresty] [warning] aioresty.runtime [aioresty:tests.apps.echoapp]: "
        "call 'fail' failed: rc=1 after "
    )
    wait_until(lambda: "refuse' failed: rc=42" in py.stderr, 5, "the failed-call lines")
    assert line in py.stderr, py.stderr
    assert "Traceback (most recent call last)" in py.stderr
    assert "ValueError: bad input 'boom'" in py.stderr
    assert py.stderr.count("failed: rc=") == 4


def test_timeouts(py: Host) -> None:
    a = py.call("p", "short_timeout", "empty")
    assert a.rc == 3 and a.text == "aioresty: handler 'short_timeout' timed out after 0.2s"
    b = py.call("p", "sleep", "text:3")  # app default timeout is 2s
    assert b.rc == 3 and "timed out after 2.0s" in b.text
    assert py.call("p", "echo", "text:ok").rc == 0


def _sleeps_started(py: Host, n: int) -> None:
    """Until n calls of echoapp's `sleep` run (and wait in asyncio.sleep)."""
    wait_until(lambda: py.call("p", "stats", "empty").text.split()[0] == str(n), 5, f"{n} sleep(s)")


def test_abort_cancels_the_handler(py: Host) -> None:
    py.ok("post p s1 sleep text:30")
    _sleeps_started(py, 1)
    py.ok("abort s1")
    wait_until(lambda: py.call("p", "stats", "empty").text == "1 1", 5, "the cancel")


def test_asyncio_timeout_on_the_first_line(py: Host) -> None:
    answer = py.call("p", "timeout_first", "text:t")
    assert (answer.rc, answer.data) == (0, b"t"), answer.text


def test_aiohttp_call_as_the_first_await(py: Host) -> None:
    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/"
        answer = py.call("p", "fetch", f"text:{url}")
        assert (answer.rc, answer.data) == (0, b"hello"), answer.text
    finally:
        srv.shutdown()
        srv.server_close()


def test_max_queue_overflow_is_immediate(host: Host, tmp_path) -> None:
    # A legacy runtime that starts polling only once `go` exists: tasks stay queued.
    gate = tmp_path / "go"
    (tmp_path / "stall.py").write_text(
        "import os, threading, time\n"
        "from cffi import FFI\n"
        "ffi = FFI()\n"
        "ffi.cdef('void *ngx_http_lua_ffi_task_poll(void *);"
        " void ngx_http_lua_ffi_respond(void *, int, char *, int); char *strdup(const char *);"
        " char *ngx_http_lua_ffi_get_req(void *, int *);')\n"
        "C = ffi.dlopen(None)\n"
        "def serve(tq):\n"
        f"    while not os.path.exists({str(gate)!r}):\n"
        "        time.sleep(0.01)\n"
        "    while True:\n"
        "        t = C.ngx_http_lua_ffi_task_poll(ffi.cast('void *', tq))\n"
        "        if t == ffi.NULL:\n"
        "            return\n"
        "        req = C.ngx_http_lua_ffi_get_req(t, ffi.NULL)\n"
        "        C.ngx_http_lua_ffi_respond(t, 0, C.strdup(req), 0)\n"
        "def init(cfg, tq):\n"
        "    threading.Thread(target=serve, args=(tq,), daemon=True).start()\n"
        "    return 0\n"
    )
    host.ok(f"load s resty_ffi_python {tmp_path}/stall,init 2")
    host.ok("post s a x text:1")
    host.ok("post s b x text:2")
    t0 = time.monotonic()
    assert host.send("post s c x text:3") == "err post -1"  # AR_EFULL
    assert time.monotonic() - t0 < 1.0
    assert host.send("pending s") == "pending 2"
    gate.touch()
    assert parse_answer(host.send("wait a 5000")).data == b"1"
    assert parse_answer(host.send("wait b 5000")).data == b"2"
    assert host.call("s", "x", "text:room-again").data == b"room-again"


def test_unload_serves_pending_then_refuses(py: Host) -> None:
    for i in range(3):
        py.ok(f"post p w{i} sleep text:0.3")
    py.ok("post p long sleep text:30")  # longer than the 1s unload grace
    _sleeps_started(py, 4)
    py.ok("unload p")
    for i in range(3):
        a = parse_answer(py.send(f"wait w{i} 5000"))
        assert (a.rc, a.data) == (0, b"slept")
    long = parse_answer(py.send("wait long 5000"))
    assert long.rc == 6 and "shutting down" in long.text
    assert py.send("call p echo text:x 1000") == "err post -4"  # the name is gone
    wait_until(lambda: "runtime 'tests.apps.echoapp' stopped" in py.stderr, 5, "the stop line")


def test_unload_then_post_on_kept_queue_is_closed(host: Host) -> None:
    host.ok("load c ffi_c_echo -")
    host.ok("load c2 ffi_c_echo -")  # same key: the same runtime, a second reference
    host.ok("unload c")
    assert host.send("call c2 echo text:x 1000") == "err post -2"  # AR_ECLOSED


def test_registry_shares_one_runtime_per_key(host: Host) -> None:
    host.ok(f"load a aioresty {APP}")
    host.ok(f"load b aioresty {APP}")
    host.ok(f"load c aioresty {APP}:app")
    wait_until(lambda: f"runtime '{APP}:app' serving" in host.stderr, 5, "the second runtime")
    assert host.stderr.count(f"runtime '{APP}' serving") == 1
    assert host.stderr.count(f"runtime '{APP}:app' serving") == 1


def test_a_second_load_with_other_options_warns_once(host: Host) -> None:
    """Two hosts (Lua VMs) of one process load one key with other options: the
    registry keeps the first and says so once (the per-VM check is in Lua)."""
    host.ok("load a ffi_c_echo opt 5")
    host.ok("load b ffi_c_echo opt 0 4")  # no max_queue preference, flags given: the same
    host.ok("load c ffi_c_echo opt 7")
    host.ok("load d ffi_c_echo opt 9 5")
    warning = (
        "[aioresty] [warning] runtime 'ffi_c_echo&opt' is already loaded with max_queue=5 "
        "is_global=0 unpin=0; a load asking for max_queue=7 is_global=0 unpin=0 gets it as it is"
    )
    wait_until(lambda: warning in host.stderr, 5, "the option warning")
    assert host.stderr.count("already loaded") == 1, host.stderr
    assert "runtime 'ffi_c_echo&opt' loaded from " in host.stderr


def test_legacy_runtime(host: Host) -> None:
    host.ok("load l resty_ffi_python ffi.echo?,init")
    assert host.call("l", "echo", "text:hello").data == b"hello"
    nul = b"a\x00b\x00"
    assert host.call("l", "echo", "hex:" + nul.hex()).data == nul
    assert host.send("stress l echo 2 500 32 4") == "stress ok=1000 mismatch=0 errors=0"


def test_hot_reload_with_question_mark(host: Host, tmp_path) -> None:
    src = (
        "import threading\n"
        "from cffi import FFI\n"
        "ffi = FFI()\n"
        "ffi.cdef('void *ngx_http_lua_ffi_task_poll(void *);"
        " void ngx_http_lua_ffi_respond(void *, int, char *, int); char *strdup(const char *);')\n"
        "C = ffi.dlopen(None)\n"
        "GEN = {gen}\n"
        "def serve(tq):\n"
        "    while True:\n"
        "        t = C.ngx_http_lua_ffi_task_poll(ffi.cast('void *', tq))\n"
        "        if t == ffi.NULL:\n"
        "            return\n"
        "        C.ngx_http_lua_ffi_respond(t, 0, C.strdup(b'gen%d' % GEN), 0)\n"
        "def init(cfg, tq):\n"
        "    threading.Thread(target=serve, args=(tq,), daemon=True).start()\n"
        "    return 0\n"
    )
    mod = tmp_path / "genrt.py"
    mod.write_text(src.format(gen=1))
    for name, cfg in (("r", f"{tmp_path}/genrt?,init"), ("n", f"{tmp_path}/genrt,init")):
        host.ok(f"load {name} resty_ffi_python {cfg}")
        assert host.call(name, "x", "empty").data == b"gen1"
    host.ok("unload r")
    host.ok("unload n")
    mod.write_text(src.format(gen=2) + "# changed\n")
    os.utime(mod, (time.time() + 5, time.time() + 5))
    host.ok(f"load n2 resty_ffi_python {tmp_path}/genrt,init")
    assert host.call("n2", "x", "empty").data == b"gen1"  # no '?': module kept
    host.ok(f"load r2 resty_ffi_python {tmp_path}/genrt?,init")
    assert host.call("r2", "x", "empty").data == b"gen2"  # '?': reloaded


@pytest.mark.parametrize(
    ("lib", "cfg", "expect_err", "expect_log"),
    [
        ("no_such_lib", "-", "cannot load runtime library 'no_such_lib'", None),
        (
            "aioresty",
            "tests.apps.missing_mod",
            "libffi_init of 'aioresty'",
            "ModuleNotFoundError: No module named 'tests.apps.missing_mod'",
        ),
        ("aioresty", "tests.apps.broken", "failed: rc=1", "ZeroDivisionError"),
        ("aioresty", "tests.apps.echoapp:nope", "failed: rc=1", "has no attribute 'nope'"),
        ("aioresty", "not-a-module!", "failed: rc=1", "bad app spec"),
        ("resty_ffi_python", "ffi.echo,no_func", "failed: rc=1", "has no function 'no_func'"),
        ("resty_ffi_python", "nope_mod,init", "failed: rc=1", "cannot import runtime module"),
        ("aioresty", "-", "failed: rc=1", "empty cfg"),
    ],
)
def test_bad_cfg_fails_load_and_logs_why(
    host: Host, lib: str, cfg: str, expect_err: str, expect_log: str | None
) -> None:
    line = host.send(f"load x {lib} {cfg}")
    assert line.startswith("err ") and expect_err in line, line
    if expect_log:
        wait_until(lambda: expect_log in host.stderr, 5, repr(expect_log))
    host.ok(f"load ok aioresty {APP}")  # the process still loads good runtimes
    assert host.call("ok", "echo", "text:fine").data == b"fine"


def test_host_signal_handlers_are_left_alone(host: Host) -> None:
    # INT and HUP as the host inherited them (ignored under nohup or `cmd &`)
    inherited = {
        sig: "ign" if signal.getsignal(sig) == signal.SIG_IGN else "dfl"
        for sig in (signal.SIGINT, signal.SIGHUP)
    }
    before = host.send("signals")
    assert before == (
        f"signals 2={inherited[signal.SIGINT]} 15=host 1={inherited[signal.SIGHUP]} 13=ign"
    )
    host.ok(f"load p aioresty {APP}")
    assert host.call("p", "echo", "text:x").rc == 0
    assert host.send("signals") == before


def test_many_host_threads(py: Host) -> None:
    assert py.send("stress p echo 8 2000 100 16", 120) == "stress ok=16000 mismatch=0 errors=0"
    assert py.send("stress p suspend_echo 4 500 10 32", 120) == "stress ok=2000 mismatch=0 errors=0"


@pytest.mark.parametrize("rt", ["p", "c", "l"])
def test_batched_posts_one_wake_per_round(host: Host, rt: str) -> None:
    # ar_task_post_nowake + one ar_queue_wake per round (the Envoy module's
    # end-of-iteration wake): eventfd (Python), task_poll on a condition
    # variable (C), and the legacy Python poller thread.  A lost wake hangs.
    host.ok(f"load p aioresty {APP}")
    host.ok("load c ffi_c_echo -")
    host.ok("load l resty_ffi_python ffi.echo?,init")
    assert host.send(f"bstress {rt} echo 4 1500 24 8", 120) == "stress ok=6000 mismatch=0 errors=0"


def test_runtime_threads_are_named(host: Host) -> None:
    # top -H / perf / the benchmarks' per-thread CPU tell runtime threads from
    # the proxy's (they would inherit the posting thread's name)
    host.ok(f"load p aioresty {APP}")
    host.ok("load c ffi_c_echo -")
    assert host.call("p", "echo", "text:x").data == b"x"
    task_dir = Path(f"/proc/{host.proc.pid}/task")

    def names() -> set[str]:
        out = set()
        for t in task_dir.iterdir():
            try:
                out.add((t / "comm").read_text().strip())
            except OSError:  # a thread that just ended
                pass
        return out

    want = {f"ar-{APP}"[:15], "ar-c-echo", "ar-watchdog"}
    wait_until(lambda: want <= names(), 5, f"threads named {want}")


def test_two_runtimes_side_by_side(host: Host) -> None:
    host.ok(f"load p aioresty {APP}")
    host.ok("load l resty_ffi_python ffi.echo?,init")
    host.ok("load c ffi_c_echo -")
    assert host.call("p", "upper", "text:a").data == b"A"
    assert host.call("l", "echo", "text:b").data == b"b"
    assert host.call("c", "echo", "text:c").data == b"c"


def test_python_shutdown_drains_then_cancels_and_joins(py: Host) -> None:
    py.ok("post p quick sleep text:0.2")
    py.ok("post p stuck sleep text:30")
    _sleeps_started(py, 2)
    t0 = time.monotonic()
    assert py.send("pyshutdown", 20) == "pyshutdown 0"  # returns once the thread is joined
    assert time.monotonic() - t0 < 5
    quick = parse_answer(py.send("wait quick 1000"))
    assert (quick.rc, quick.data) == (0, b"slept")
    stuck = parse_answer(py.send("wait stuck 1000"))
    assert stuck.rc == 6 and "shutting down" in stuck.text
    assert "runtime 'tests.apps.echoapp' stopped" in py.stderr


def test_no_runtime_in_a_forked_child(host: Host) -> None:
    host.ok("load c ffi_c_echo -")
    line = host.send("forkload ffi_c_echo rc=1")
    assert line.startswith("forkload runtimes were started in process"), line
    assert "load runtimes after fork, in the worker process" in line
    assert host.call("c", "x", "text:parent-still-fine").rc == 0


def test_unload_right_after_an_abort_still_stops_the_runtime(py: Host) -> None:
    py.ok("post p a sleep text:30")
    _sleeps_started(py, 1)
    py.ok("abort a")
    py.ok("unload p")
    wait_until(lambda: "runtime 'tests.apps.echoapp' stopped" in py.stderr, 3, "the stop line")
    assert py.send("alive") == "alive tasks=0 queues=0"


def test_a_failing_startup_hook_fails_the_load_with_its_last_line(host: Host) -> None:
    line = host.send("load b aioresty tests.apps.badstart")  # (the host's cfg has no blanks)
    assert line.startswith("err libffi_init of 'aioresty'"), line
    assert line.endswith(
        "rc=1: cannot start app 'tests.apps.badstart': "
        "ConnectionRefusedError: redis at ? refused the connection"
    ), line
    typo = host.send("load t aioresty tests.apps.no_such_module")
    assert typo.endswith("ModuleNotFoundError: No module named 'tests.apps.no_such_module'"), typo
