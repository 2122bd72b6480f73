"""The README's handler example and its unit test, run as written in a fresh project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"```\w*\n# file: (\S+)\n(.*?)```", re.S)


def test_readme_example_passes_in_a_fresh_project(tmp_path: Path) -> None:
    files = _BLOCK.findall(README.read_text())
    assert {name for name, _ in files} >= {
        "myapp/handlers.py",
        "tests/test_handlers.py",
        "pyproject.toml",
    }, files
    for name, text in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "myapp" / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "AIORESTY"))}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout, proc.stdout
