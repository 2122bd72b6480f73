"""Venv discovery: aioresty and the user's app pip-installed in a fresh venv just work.

No AIORESTY_VENV, VIRTUAL_ENV or PYTHONPATH: the loader finds the venv it is
installed in (a pyvenv.cfg above libaioresty.so) and runs the app from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.hostlib import ROOT, Host


def test_fresh_venv_with_aioresty_installed(tmp_path: Path, testhost_exe: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # this project's pip, installing into the new venv (non-editable, native build included)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run(
        [*pip, str(ROOT), str(ROOT / "tests" / "apps" / "venvapp")], check=True, timeout=600
    )
    site = next((venv / "lib").glob("python3*/site-packages"))
    core = site / "aioresty" / "_lib" / "libaioresty_core.so"
    assert core.is_file()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "AIORESTY_VENV", "PYTHONPATH", "PYTHONHOME")
    }
    h = Host(testhost_exe, core=core, env=env)
    try:
        h.ok("load v aioresty venvapp_handlers")
        assert h.call("v", "where", "empty").text == str(venv)
    finally:
        last = h.close()
    assert last == "exit tasks=0 queues=0", h.stderr
