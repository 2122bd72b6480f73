"""print() from handlers in two workers at once: every line arrives whole in
the shared stdout (the embedded Python's stdio writes a line at a time)."""

from __future__ import annotations

import re
import threading

SERVER = """
location = /chatter {
    content_by_lua_block {
        local rt, err = ngx.load_ffi("aioresty", "tests.apps.chatty")
        if not rt then
            ngx.status = 500
            return ngx.say(err)
        end
        local ok, res = rt:chatter(ngx.var.arg_n)
        ngx.print(res)
    }
}
"""
LINE = re.compile(r"\[chatty\] pid=\d+ i=\d+ end")


def test_lines_of_two_workers_stay_whole(nginx) -> None:
    nginx.write_conf(SERVER, workers=2, listen="reuseport")
    nginx.start()
    pids: set[bytes] = set()
    for _ in range(20):  # warm both runtimes up
        pids.add(nginx.request("/chatter?n=1")[2])
    assert len(pids) == 2, pids

    def chatter() -> None:
        status, _, body = nginx.request("/chatter?n=400")
        assert status == 200, body

    threads = [threading.Thread(target=chatter) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    lines = [line for line in nginx.output().splitlines() if "[chatty]" in line]
    assert len(lines) == 20 + 8 * 400
    broken = [line for line in lines if not LINE.fullmatch(line)]
    assert broken == [], broken[:5]
