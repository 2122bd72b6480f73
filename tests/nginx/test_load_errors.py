"""Load failures name their cause and are not retried on every request
(issue 12, point 3), through stock nginx with workers running as nobody."""

from __future__ import annotations

import os
import time

from tests.netutil import wait_until

LOAD = """
location = /load {
    content_by_lua_block {
        local rt, err = ngx.load_ffi("aioresty", ngx.var.arg_app)
        if not rt then
            ngx.status = 500
            ngx.print(err)
            return
        end
        local ok, res = rt:echo("loaded")
        ngx.print(res)
    }
}
"""


def test_a_failed_load_is_cached_with_backoff(nginx) -> None:
    nginx.write_conf(LOAD, workers=1)
    nginx.start()
    app = "tests.apps.no_such_app"
    first = nginx.request(f"/load?app={app}")
    assert first[0] == 500
    assert (
        first[2]
        .decode()
        .endswith(f"cannot load app '{app}': ModuleNotFoundError: No module named '{app}'")
    ), first[2]
    t0 = time.monotonic()
    for _ in range(5):  # within the backoff: the same error, no new import
        status, _, body = nginx.request(f"/load?app={app}")
        assert status == 500 and b"No module named" in body and b"next attempt in" in body, body
    assert time.monotonic() - t0 < 1.0
    assert nginx.log().count("Traceback (most recent call last)") == 1
    time.sleep(max(0.0, 1.1 - (time.monotonic() - t0)))  # past the first backoff: retried
    status, _, body = nginx.request(f"/load?app={app}")
    assert status == 500 and b"next attempt" not in body, body
    again = f"cannot load app '{app}' (again): ModuleNotFoundError: No module named '{app}'"
    wait_until(lambda: again in nginx.log(), 5, "the one-line retry")
    assert nginx.log().count("Traceback (most recent call last)") == 1
    assert nginx.request("/load?app=tests.apps.echoapp")[::2] == (200, b"loaded")


def test_an_unreadable_app_is_a_permission_error(nginx) -> None:
    code = nginx.prefix / "code"  # the prefix is readable by the workers
    (code / "shopx").mkdir(parents=True)
    (code / "shopx" / "__init__.py").write_text("")
    (code / "shopx" / "handlers.py").write_text(
        "from aioresty import App\napp = App()\n\n@app.handler\n"
        "async def echo(req: bytes) -> bytes:\n    return req\n"
    )
    os.chmod(code, 0o755)
    os.chmod(code / "shopx", 0o700)  # root only: the workers run as nobody
    nginx.extra_env["PYTHONPATH"] = f"{code}:{nginx.env()['PYTHONPATH']}"
    nginx.write_conf(LOAD, workers=1)
    nginx.start()
    status, _, body = nginx.request("/load?app=shopx.handlers")
    assert status == 500
    assert (
        f"PermissionError: module 'shopx.handlers' cannot be imported: {code}/shopx is not "
        "readable by uid"
    ) in body.decode(), body
