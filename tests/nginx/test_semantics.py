"""Runtime semantics on stock nginx-lua (tests/semantics_cases.py): two workers,
content_by_lua_block, tests/apps/asyncapp.py behind it."""

from __future__ import annotations

import re
from pathlib import Path

from tests import semantics_cases

SEM = """
location = /sem {
    content_by_lua_block {
        local t = require "ngxtest"
        local rt = t.runtime("aioresty", "tests.apps.asyncapp")
        local ok, res, err = rt[ngx.var.arg_m](rt, t.body())
        t.reply(ok, res, err)
    }
}
"""


def _started(nginx):
    nginx.write_conf(SEM, workers=1)
    nginx.start()

    def call(method, body):
        status, h, data = nginx.request(f"/sem?m={method}", body, timeout=60)
        return status, h.get("x-rc"), data

    def log():
        return nginx.log() + (nginx.prefix / "stdout.log").read_text(errors="replace")

    return call, log


def test_broken_answers_lose_nothing_and_quit_is_prompt(nginx):
    call, _ = _started(nginx)
    semantics_cases.broken_answers_lose_nothing(call)
    assert nginx.stop(timeout=10) == 0


def test_failed_calls_and_blocking_are_logged(nginx):
    call, log = _started(nginx)
    semantics_cases.failed_calls_and_blocking_are_logged(call, log)
    # in nginx's own format and level, with the worker's pid
    assert re.search(
        r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[warn\] \d+#\d+: (?:\*\d+ )?\[aioresty\] "
        r"aioresty.runtime \[aioresty:tests.apps.asyncapp\]: call 'no_such_handler' failed: rc=2",
        nginx.log(),
    ), nginx.log()[-2000:]


def test_answers_up_to_the_limit(nginx):
    call, _ = _started(nginx)
    semantics_cases.answers_up_to_the_limit(call)


def test_each_call_is_its_own_task_and_contextvars_do_not_leak(nginx):
    call, _ = _started(nginx)
    semantics_cases.each_call_is_its_own_task(call)
    semantics_cases.contextvars_do_not_leak(call)


def test_background_base_exceptions_keep_serving(nginx):
    call, log = _started(nginx)
    semantics_cases.background_base_exceptions_keep_serving(call, log)


def test_runtime_object_is_lua_resty_ffis(nginx):
    """The same checks as both Envoy Lua modes (tests/envoy/scripts/runtime_object.lua)."""
    script = Path(__file__).resolve().parents[1] / "envoy" / "scripts" / "runtime_object.lua"
    nginx.write_conf(
        f"""
location = /runtime_object {{
    content_by_lua_block {{
        local check = dofile("{script}")
        ngx.print(check(nil))
    }}
}}
""",
        workers=1,
    )
    nginx.start()
    status, _, body = nginx.request("/runtime_object", None, timeout=30)
    assert (status, body) == (200, b"ok"), (status, body)
