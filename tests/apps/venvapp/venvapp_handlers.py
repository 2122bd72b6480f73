"""An app pip-installed into a venv, found by the loader without any path set."""

import sys


async def where(req: bytes) -> str:
    return sys.prefix
