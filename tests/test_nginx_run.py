"""`aioresty nginx run|reload` (issue 12, points 4 and 5): a config that says
`daemon off;` itself runs; runtimes warmed in init_worker_by_lua serve the first
request after a HUP without a start; an outside QUIT ends the runner with 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aioresty import nginx_run
from tests.netutil import free_port, http_request, terminate, wait_until

REPO = Path(__file__).resolve().parent.parent

CONF = """
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
worker_processes 1;
error_log logs/error.log info;
pid logs/nginx.pid;
env AIORESTY_LIB_DIR;
env AIORESTY_VENV;
env PYTHONPATH;
events {{ worker_connections 64; }}
http {{
    access_log off;
    lua_package_path "$prefix/lua/?.lua;/usr/share/lua/5.1/?.lua;;";
    init_by_lua_block {{ require "resty_ffi" }}
    init_worker_by_lua_block {{
        -- warm: this worker's runtime starts now, not on its first request
        local rt, err = ngx.load_ffi("aioresty", "tests.apps.asyncapp")
        if not rt then ngx.log(ngx.ERR, "warm-up failed: ", err) end
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            content_by_lua_block {{
                local rt = assert(ngx.load_ffi("aioresty", "tests.apps.asyncapp"))
                local ok, res = rt:pid("")
                ngx.print(res)
            }}
        }}
    }}
}}
"""


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`aioresty nginx ARGS` to its end (30 s at most), output captured."""
    cmd = [sys.executable, "-m", "aioresty.cli", "nginx", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)


def test_run_reload_warm_workers_and_outside_quit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = nginx_run.missing()
    if why:
        pytest.skip(why)
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONF.format(port=port))
    monkeypatch.setenv("AIORESTY_STATE_DIR", str(tmp_path / "state"))  # master_pidfile here too
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # the runner's own prefix (a fresh /tmp dir the workers, as nobody, can read)
    cmd = [sys.executable, "-m", "aioresty.cli", "nginx", "run", str(conf)]
    run_log = tmp_path / "run.log"
    with open(run_log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def serving() -> list[str]:
        m = re.search(r"prefix (\S+)", run_log.read_text(errors="replace"))
        log = Path(m[1]) / "logs" / "error.log" if m else None
        text = log.read_text(errors="replace") if log and log.exists() else ""
        pat = r"\] (\d+)#\d+: (?:\*\d+ )?\[aioresty\] .*runtime 'tests.apps.asyncapp' serving"
        return re.findall(pat, text)

    try:
        # the worker's runtime is up before any request reaches it
        wait_until(lambda: len(serving()) == 1, 30, "the warm worker's runtime")
        first = serving()[0]
        status, _, body = http_request(port, "GET", "/")
        assert (status, body.decode()) == (200, first)
        r = _cli(env, "reload", str(conf))
        assert r.returncode == 0, r.stderr
        wait_until(lambda: len(serving()) == 2, 30, "the new worker's warm runtime")
        second = serving()[1]
        assert second != first
        wait_until(lambda: http_request(port, "GET", "/")[2].decode() == second, 15, "new worker")
        # an outside QUIT to the master (nginx -s quit): the runner ends with 0
        master = int(nginx_run.master_pidfile(conf).read_text())
        os.kill(master, signal.SIGQUIT)
        assert proc.wait(30) == 0, run_log.read_text()
        assert not nginx_run.master_pidfile(conf).exists()
    finally:
        if proc.poll() is None:
            terminate(proc, 30, "aioresty nginx run")


def test_run_refuses_what_the_workers_cannot_reach(tmp_path: Path) -> None:
    """As root, nginx's workers run as nobody: a lib dir (or Python, venv) behind a
    0700 directory would fail in every worker; the runner says which directory
    and exits 2 before starting nginx."""
    why = nginx_run.missing()
    if why:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("the workers run as this user unless the master is root")
    locked = tmp_path / "locked"
    lib = locked / "lib"
    lib.mkdir(parents=True)
    locked.chmod(0o700)
    for so in nginx_run.paths.lib_dir().glob("*.so"):
        (lib / so.name).symlink_to(so)
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONF.format(port=free_port()))
    env = dict(os.environ, PYTHONPATH=str(REPO), AIORESTY_LIB_DIR=str(lib))
    r = _cli(env, "run", str(conf))
    assert r.returncode == 2, r.stderr
    assert f"nginx workers run as 'nobody' and cannot reach {lib} (" in r.stderr, r.stderr
    assert "is drwx------): `chmod o+x " in r.stderr, r.stderr
    # `user root;` in the config: nothing in the way
    assert nginx_run.unreachable(Path(conf), [lib]) is not None
    conf.write_text("user root;\n" + CONF.format(port=free_port()))
    assert nginx_run.unreachable(conf, [lib]) is None
