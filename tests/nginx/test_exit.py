"""A worker exits cleanly while its app keeps logging from a background task
(a poller, a reporter): the Lua VM closes before exit() stops the runtimes, so
the libraries the runtime threads call into must outlive it.  Before
libaioresty_nginx.so was linked -z nodelete this crashed 6 exits in 10."""

from __future__ import annotations

SERVER = """
location = /ping {
    content_by_lua_block {
        local rt, err = ngx.load_ffi("aioresty", "tests.apps.noisy")
        if not rt then
            ngx.status = 500
            return ngx.say(err)
        end
        local ok, res = rt:ping("")
        ngx.print(res)
    }
}
"""


def test_exit_while_the_app_logs(nginx) -> None:
    nginx.write_conf(SERVER, workers=2, listen="reuseport")
    for _ in range(3):  # a restart per round: each exit is a chance to crash
        nginx.start()
        for _ in range(8):
            assert nginx.request("/ping")[::2] == (200, b"pong")
        assert nginx.stop() == 0
        log = nginx.log()
        assert "tick" in log  # the app's lines reach the error_log
        assert [line for line in log.splitlines() if "exited on signal" in line] == []
