"""Python logging in Envoy's own log, at Envoy's level (issue 12, point 2):
`--log-level` and admin `/logging` decide what a handler's lines reach."""

from __future__ import annotations

import sys

from tests.envoy.conftest import REPO
from tests.netutil import http_request, wait_until

USER = {"lua": {"app": "scripts/app_calls.lua"}, "routes": [{"prefix": "/", "lua": "app"}]}
PY_PATH = [str(REPO), str(REPO / "examples" / "python")]


def _call(env, method: str, cfg: str = "tests.apps.asyncapp") -> int:
    return env.request("POST", f"/py/{method}?cfg={cfg}", body=b"")[0]


def test_lines_follow_envoys_log_level(envoy_factory) -> None:
    env = envoy_factory(
        USER, env={"AIORESTY_VENV": sys.prefix}, python_path=PY_PATH, log_level="warning"
    )
    assert _call(env, "no_such_handler") == 502
    failed = "[W] aioresty: aioresty.runtime [aioresty:tests.apps.asyncapp]: call 'no_such_handler'"
    wait_until(lambda: failed in env.log(), 5, "the failed-call line at warning")
    log = env.log()
    # info lines (the runtime's start, the file it was loaded from) are below --log-level
    assert "serving" not in log and "loaded from" not in log, log[-2000:]
    # admin /logging lowers the level at run time: a new runtime's info lines appear
    status, _, _ = http_request(env.admin_port, "POST", "/logging?dynamic_modules=info")
    assert status == 200
    assert _call(env, "echo", "tests.apps.echoapp") == 200
    wait_until(
        lambda: (
            "[I] aioresty: aioresty.boot [" in env.log()
            and "runtime 'tests.apps.echoapp' serving" in env.log()
        ),
        5,
        "the info lines after /logging",
    )
    assert "[I] aioresty: runtime 'aioresty&tests.apps.echoapp' loaded from " in env.log()
