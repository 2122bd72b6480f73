"""Python logging inside a proxy: records go to the proxy's own log.

Every record that reaches the root logger's handler is one line for the core's
``ar_log`` (aioresty_core.h): on Envoy the dynamic module's log (its level set
by ``--log-level`` and admin ``/logging``, logger ``dynamic_modules``), on
nginx the error_log with its levels and the worker pid, elsewhere stderr.  A
line names the logger and the thread (a runtime's thread is
``aioresty:<app>``); the proxy adds time and level.

aioresty configures its own loggers only: ``aioresty`` gets
``$AIORESTY_LOG_LEVEL`` (default: everything the proxy keeps), the root
logger gets the handler but keeps its level (WARNING unless the app sets
another), so libraries such as httpx stay as quiet as under ``asyncio.run``.
"""

from __future__ import annotations

import logging
import os

from . import _native

# Python level -> the core's (0 debug, 1 info, 2 warning, 3 error)
_CORE_LEVEL = ((logging.INFO, 0), (logging.WARNING, 1), (logging.ERROR, 2))


def core_level(levelno: int) -> int:
    for below, core in _CORE_LEVEL:
        if levelno < below:
            return core
    return 3


class ProxyHandler(logging.Handler):
    """One record, one ``ar_log`` line; skipped unformatted when the proxy
    would drop its level."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(name)s [%(threadName)s]: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        level = core_level(record.levelno)
        if not _native.log_enabled(level):
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        _native.log(level, line.replace("\0", "\\0"))


def install() -> None:
    """Route Python logging to the proxy's log (once per process)."""
    root = logging.getLogger()
    if any(isinstance(h, ProxyHandler) for h in root.handlers):
        return
    root.addHandler(ProxyHandler())
    level = os.environ.get("AIORESTY_LOG_LEVEL", "").upper()
    ours = logging.getLogger("aioresty")
    ours.setLevel(getattr(logging, level, logging.DEBUG) if level else logging.DEBUG)
