"""The native core under valgrind: zero errors, zero leaks.

The core, the C test host and the C echo runtime (no Python: CPython's own
allocations are not ours to audit) go through loads, calls of every payload
shape, multi-threaded stress (one wake per post, and batched), aborts,
overflow, unload with pending tasks.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.hostlib import CORE, host_env

SCRIPT = """\
load c ffi_c_echo -
call c echo text:hello
call c echo empty
call c echo hex:00ff00ff
call c echo rep:00:1048576
load c2 ffi_c_echo rc=3 4
call c2 x text:err
stress c echo 4 500 64 4
bstress c echo 3 400 32 8
post c p1 echo text:1
post c p2 echo text:2
abort p1
wait p2 5000
load bad no_such_runtime -
load c3 ffi_c_echo - 1
unload c2
call c2 x text:gone
unload c
alive
"""


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_core_under_valgrind(testhost_exe: Path) -> None:
    proc = subprocess.run(
        [
            "valgrind",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99",
            "--fair-sched=yes",
            str(testhost_exe),
            str(CORE),
        ],
        input=SCRIPT + "exit\n",
        capture_output=True,
        text=True,
        timeout=300,
        env=host_env(),
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"valgrind rc={proc.returncode}\n{out}\n{err[-4000:]}"
    assert "ERROR SUMMARY: 0 errors" in err
    assert re.search(r"definitely lost: 0 bytes|All heap blocks were freed", err), err[-2000:]
    lines = out.splitlines()
    assert lines[1].startswith("done rc=0 nil=0 len=5 ")
    assert "stress ok=2000 mismatch=0 errors=0" in lines
    assert "stress ok=1200 mismatch=0 errors=0" in lines  # bstress: batched wakes
    assert "err cannot load runtime library 'no_such_runtime'" in out
    assert lines[-1] == "exit tasks=0 queues=0"
