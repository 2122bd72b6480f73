"""What `python -m aioresty.demo --check` prints when the demo works."""

from __future__ import annotations

import re


def check_demo_output(stdout: str) -> None:
    """What --check printed: the httpbin stand-in's JSON through the seed block,
    the app's two answers (the exit code says the demo judged them right)."""
    assert re.search(r'"url": "http://[^"]+/get"', stdout), stdout
    assert "hello, envoy, from async Python" in stdout
    assert "msgpack -> {'sum': 42}" in stdout
