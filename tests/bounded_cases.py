"""Every runtime call is bounded: resty_ffi's default per-call timeout on each
Lua host (stock Envoy Lua filter + bridge, aioresty's Envoy lua mode, nginx).

Each host serves the same routes (tests/envoy/scripts/bounded.lua on Envoy,
tests/nginx/lua/bounded.lua on nginx), whose Lua VM lowered its default to
700 ms with resty_ffi.set_default_timeout; answers are "ok|res_or_rc|err".
The handler `block` (tests/apps/stuckapp.py) blocks the Python runtime's
loop with time.sleep, so the runtime enforces nothing meanwhile: only the
host's own timeout can answer.  ffi_slow (tests/envoy/slow_runtime.c) is a C
runtime that answers after `ms`.
"""

from __future__ import annotations

import time
from typing import Any

from tests.netutil import wait_until

EXPECTED_DEFAULT = (
    "60000 60000 700 nil:resty_ffi.set_default_timeout: ms must be a positive finite number"
)


def get(proxy: Any, path: str, timeout: float = 15.0) -> str:
    """GET path on an Envoy (tests.envoy.conftest.Envoy) or an nginx
    (tests.nginx.conftest.Nginx) test proxy: the 200 answer's body."""
    if hasattr(proxy, "admin_port"):
        status, _, body = proxy.request("GET", path, timeout=timeout)
    else:
        status, _, body = proxy.request(path, timeout=timeout)
    assert status == 200, (status, body)
    return body.decode()


def timed(proxy: Any, path: str) -> tuple[str, float]:
    t0 = time.monotonic()
    body = get(proxy, path)
    return body, time.monotonic() - t0


def check_default(proxy: Any) -> None:
    """The constant is 60000 ms, the VM's default starts there, and the test
    VM lowered it to 700; 0 is refused (there is no "forever")."""
    body = get(proxy, "/default")
    assert body == EXPECTED_DEFAULT, body


def check_blocked_loop(proxy: Any) -> None:
    """A call with no timeout of its own, to a runtime whose loop is blocked
    for 3 s, answers "timeout" after the default (700 ms); once the handler
    returned, the runtime serves again."""
    body = get(proxy, "/py/echo?s=warm")
    assert body == "true|warm|nil", body
    body, dt = timed(proxy, "/py/block?s=3")
    assert body == "false|timeout|nil", body
    assert 0.6 < dt < 2.0, dt
    # the loop is still blocked: a second call is bounded the same way
    body, dt = timed(proxy, "/py/echo?s=meanwhile")
    assert body == "false|timeout|nil" and dt < 2.0, (body, dt)
    wait_until(lambda: get(proxy, "/py/echo?s=after") == "true|after|nil", 10, "calls work again")


def check_c_runtime(proxy: Any) -> None:
    """A C runtime that does not answer in time: bounded by the default, by
    ngx.load_ffi's opts.timeout, and by resty_ffi.call's timeout_ms."""
    body, dt = timed(proxy, "/slow?ms=5000")
    assert body == "false|timeout|nil" and 0.6 < dt < 2.0, (body, dt)
    body, dt = timed(proxy, "/slow?ms=5001&t=250")
    assert body == "false|timeout|nil" and 0.2 < dt < 0.65, (body, dt)
    body, dt = timed(proxy, "/slow?ms=5002&t=3000&call=250")
    assert body == "false|timeout|nil" and 0.2 < dt < 0.65, (body, dt)
    # a runtime that answers within the bound still answers
    body = get(proxy, "/slow?ms=50")
    assert body == "true|x|nil", body
