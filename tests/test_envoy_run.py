"""`aioresty envoy run|reload` (issue 12, point 4): hot restart under load loses no
request and the new code answers; --watch reloads on a change; projects on one
host coexist (base ids from their paths); a busy listen address is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aioresty import cli, envoy_run
from tests.netutil import free_port, http_request, terminate, wait_until

REPO = Path(__file__).resolve().parent.parent

APP = """
from aioresty import App

app = App()


@app.handler
async def version(req: bytes) -> str:
    return "{v}"
"""

LUA = """
require "resty_ffi"
function envoy_on_request(h)
    local rt = assert(ngx.load_ffi("aioresty", "verapp"))
    local ok, res = rt:version("", h)
    h:respond({[":status"] = ok and "200" or "502"}, tostring(res))
end
"""


class Project:
    """A user's project: a config, a Lua script, an app module; run by the CLI."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = port or free_port()
        (root / "app.lua").write_text(LUA)
        self.set_version("v1")
        self.config = root / "run.toml"
        self.config.write_text(
            f'listen = "127.0.0.1:{self.port}"\nadmin = "127.0.0.1:{free_port()}"\n'
            'pythonpath = ["."]\n[lua]\napp = "app.lua"\n[[routes]]\nprefix = "/"\nlua = "app"\n'
        )
        self.env = dict(os.environ, AIORESTY_STATE_DIR=str(root.parent / "state"))
        self.proc: subprocess.Popen[bytes] | None = None

    def set_version(self, v: str) -> None:
        # a new length too: a pyc written in the same second as the old source
        # with the same size would be taken as current (mtime + size check)
        (self.root / "verapp.py").write_text(APP.format(v=v) + "#" * len(v))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aioresty.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def run(self, *extra: str) -> Project:
        self.out = open(self.root / "run.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aioresty.cli", "envoy", "run", str(self.config), *extra],
            env=self.env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self.get() == (200, b"v1"), 30, f"{self.config} answering")
        return self

    def get(self) -> tuple[int, bytes] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"envoy run exited {self.proc.returncode}:\n{self.log()}")
        try:
            status, _, body = http_request(self.port, "GET", "/", timeout=5)
        except OSError:
            return None
        return status, body

    def log(self) -> str:
        return (self.root / "run.log").read_text(errors="replace")

    def stop(self) -> int:
        assert self.proc is not None
        try:
            return terminate(self.proc, 30, "aioresty envoy run")
        finally:
            self.out.close()


@pytest.fixture
def projects(tmp_path: Path):
    made: list[Project] = []

    def make(name: str, port: int | None = None) -> Project:
        p = Project(tmp_path / name, port)
        made.append(p)
        return p

    yield make
    for p in made:
        if p.proc is not None and p.proc.poll() is None:
            p.stop()


def _envoy_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_reload_under_load_loses_nothing_and_serves_new_code(projects) -> None:
    try:
        cli.envoy_binary()
    except cli.UsageError:
        pytest.skip("no envoy binary")
    p = projects("shop").run()
    answers: list[tuple[int, bytes] | None] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            answers.append(p.get())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(answers) >= 20, 30, "calls under load before the reload")
    p.set_version("v2.0")
    r = p.cli("envoy", "reload", str(p.config))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: answers and answers[-1] == (200, b"v2.0"), 30, "the new code answering")
    served = len(answers)
    wait_until(lambda: len(answers) >= served + 50, 30, "the new epoch under load")
    stop.set()
    for t in threads:
        t.join(30)
    assert len(answers) > 50
    lost = [a for a in answers if a not in ((200, b"v1"), (200, b"v2.0"))]
    assert lost == [], (len(lost), lost[:5], p.log()[-3000:])
    wait_until(lambda: "epoch 0 drained and exited (0)" in p.log(), 30, "the old epoch to exit")
    assert len(_envoy_children(p.proc.pid)) == 1
    assert p.stop() == 0
    assert "epoch 1 stopped (0)" in p.log()


def test_watch_reloads_on_a_change_and_a_broken_reload_keeps_serving(projects) -> None:
    p = projects("dev").run("--watch", "--", "--concurrency", "1")
    (p.root / "app.lua").write_text("this is not Lua")  # the new config does not validate
    wait_until(lambda: "reload refused, epoch 0 serves on" in p.log(), 30, "the refused reload")
    assert "script load error" in p.log() and "epoch 1 started" not in p.log()
    assert p.get() == (200, b"v1")
    (p.root / "app.lua").write_text(LUA)
    p.set_version("v2.0")
    wait_until(lambda: p.get() == (200, b"v2.0"), 30, "the watched change answering")
    assert p.stop() == 0


def test_projects_coexist_and_a_busy_port_is_refused(projects) -> None:
    a = projects("a").run()
    b = projects("b").run()
    assert envoy_run.base_id(a.config) != envoy_run.base_id(b.config)
    assert a.get() == b.get() == (200, b"v1")
    c = projects("c", port=a.port)
    r = c.cli("envoy", "run", str(c.config))
    assert r.returncode == 2 and f"127.0.0.1:{a.port} is already served" in r.stderr
    r = c.cli("envoy", "reload", str(c.config))
    assert r.returncode == 2 and "is running" in r.stderr
    assert a.stop() == 0 and b.stop() == 0
