"""Drives native/testhost (ar_testhost), the proxy stand-in, from pytest."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB_DIR = ROOT / "aioresty" / "_lib"
CORE = LIB_DIR / "libaioresty_core.so"
# the venv running the tests (.venv, .venv-3.13, ...): the host embeds its Python
VENV = Path(sys.prefix) if sys.prefix != sys.base_prefix else ROOT / ".venv"


def build_testhost(out: Path) -> Path:
    subprocess.run(
        ["make", "-s", "-C", str(ROOT / "native"), f"OUT={out}", "testhost"],
        check=True,
    )
    return out / "ar_testhost"


def build_slow_runtime(out: Path) -> Path:
    """tests/envoy/slow_runtime.c (a lua-resty-ffi runtime that answers late or
    never) built as out (libffi_slow.so)."""
    src = ROOT / "tests" / "envoy" / "slow_runtime.c"
    cmd = ["cc", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-o", str(out)]
    subprocess.run([*cmd, str(src), "-lpthread"], check=True, timeout=60)
    return out


def host_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["AIORESTY_VENV"] = str(VENV)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "examples" / "python")])
    env.update(extra)
    return env


@dataclass
class Answer:
    rc: int
    nil: bool
    length: int
    crc: int
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


_DONE = re.compile(r"done rc=(-?\d+) nil=(\d) len=(\d+) crc=([0-9a-f]{8}) hex=([0-9a-f]*)$")


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


class Host:
    """One ar_testhost process; send() writes a command, returns its result line."""

    def __init__(
        self,
        exe: Path,
        core: Path = CORE,
        env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [*(wrapper or []), str(exe), str(core)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else host_env(),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._err: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        self._err_thread = threading.Thread(target=self._pump_err, daemon=True)
        self._err_thread.start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def send(self, command: str, timeout: float = 30.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer to {command!r} in {timeout}s") from None
        if line is None:
            raise AssertionError(f"host exited during {command!r}; stderr:\n{self.stderr}")
        return line

    def ok(self, command: str, timeout: float = 30.0) -> None:
        line = self.send(command, timeout)
        assert line == "ok", f"{command!r} -> {line!r}\n{self.stderr}"

    def call(self, rt: str, method: str, payload: str, timeout_ms: int = 10000) -> Answer:
        line = self.send(f"call {rt} {method} {payload} {timeout_ms}", timeout_ms / 1000 + 10)
        return parse_answer(line)

    def close(self, timeout: float = 30.0) -> str:
        """Exit the host; returns its last line (exit tasks=.. queues=..)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("exit\n")
            self.proc.stdin.flush()
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        last = ""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.proc.kill()
                raise AssertionError("host did not exit") from None
            if line is None:
                break
            last = line
        self.proc.wait(timeout)
        self._err_thread.join(timeout)  # all of stderr read: .stderr is whole after close()
        return last


def parse_answer(line: str) -> Answer:
    m = _DONE.match(line)
    if not m:
        raise AssertionError(f"not an answer: {line!r}")
    return Answer(
        rc=int(m[1]),
        nil=m[2] == "1",
        length=int(m[3]),
        crc=int(m[4], 16),
        data=bytes.fromhex(m[5]),
    )
