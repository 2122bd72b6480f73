"""Python logging inside a proxy: records reach the host's stderr, prefixed."""

from __future__ import annotations

import logging
import os
import sys

PREFIX = "[aioresty]"


def install() -> None:
    """Send the root logger to stderr with the aioresty prefix (once).

    ``$AIORESTY_LOG_LEVEL`` sets the level (default INFO). Hosts keep stderr:
    Envoy's and nginx's logs show these lines next to their own.
    """
    root = logging.getLogger()
    if any(getattr(h, "_aioresty", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"{PREFIX} %(levelname)s %(name)s [%(threadName)s]: %(message)s")
    )
    handler._aioresty = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    level = os.environ.get("AIORESTY_LOG_LEVEL", "INFO").upper()
    root.setLevel(getattr(logging, level, logging.INFO))
