"""Entry points the native loader (native/python/loader.c) calls, GIL held.

Each returns an int rc for ``libffi_init``: 0 = the runtime is serving.
Failures are logged on stderr with the ``[aioresty]`` prefix and answered 1.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import traceback
from typing import Any

from . import _native, logs, runtime
from .app import load_app, split_cfg
from .handler import last_line

log = logging.getLogger("aioresty.boot")

_setup_done = False


def _setup() -> None:
    """Once per process: logging to the host's stderr, $PYTHONPATH on sys.path."""
    global _setup_done
    if _setup_done:
        return
    _setup_done = True
    _whole_lines()
    logs.install()
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for path in reversed(extra):
        if path not in sys.path:
            sys.path.insert(0, path)


def _whole_lines() -> None:
    """stdout/stderr write each line in one write(2).  The loader starts them
    unbuffered (nothing is lost if the host exits), which makes ``print`` write
    its text and its newline apart, so two workers' lines interleave in a
    shared error log.  Line buffering keeps every complete line whole."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True, write_through=False)


_failed: set[tuple[str, str]] = set()  # (what, last line) already logged with a traceback


def _fail(what: str, tq: int | None = None) -> int:
    """Log the current exception (its traceback the first time, then one line:
    the core retries a failed load with backoff); tell the host why."""
    exc = sys.exc_info()[1]
    why = last_line(exc) if exc is not None else "unknown error"
    if (what, why) in _failed:
        log.error("%s (again): %s", what, why)
    else:
        _failed.add((what, why))
        log.error("%s\n%s", what, traceback.format_exc().rstrip())
    if tq is not None:
        _native.set_error(tq, f"{what}: {why}")
    return 1


def start_app(cfg: str, tq: int) -> int:
    """cfg ``"pkg.module[:app] [{json}]"``: serve an aioresty App; the JSON
    object after the spec becomes ``app.config``."""
    _setup()
    spec = cfg.strip().partition(" ")[0]
    try:
        spec, config = split_cfg(cfg)
        app = load_app(spec)
    except Exception:
        return _fail(f"cannot load app '{spec}'", tq)
    try:
        runtime.start(app, tq, spec, config)
    except BaseException:
        return _fail(f"cannot start app '{spec}'", tq)
    log.info(
        "runtime '%s' serving %d handler(s): %s",
        spec,
        len(app.handlers),
        ", ".join(sorted(app.handlers)),
    )
    return 0


def start_legacy(module: str, func: str, rest_ptr: int, tq: int) -> int:
    """cfg ``"[dir/]module[?],func[,rest]"``: a lua-resty-ffi style runtime.

    ``func(rest_ptr, tq)`` receives the rest of cfg as a C pointer (0 if none) and
    the queue as an int; it starts its own polling thread and returns 0.
    A trailing ``?`` on the module reloads it if it was imported before.
    """
    _setup()
    reload = module.endswith("?")
    module = module.rstrip("?")
    if "/" in module:
        directory, _, module = module.rpartition("/")
        if directory not in sys.path:
            sys.path.insert(0, directory)
    if not module or not func:
        log.error("bad cfg: expected 'module,func[,rest]', got module=%r func=%r", module, func)
        return 1
    try:
        mod = sys.modules.get(module)
        if mod is None:
            mod = importlib.import_module(module)
        elif reload:
            mod = importlib.reload(mod)
    except Exception:
        return _fail(f"cannot import runtime module '{module}'", tq)
    fn: Any = getattr(mod, func, None)
    if not callable(fn):
        log.error("runtime module '%s' has no function '%s'", module, func)
        return 1
    try:
        rc = fn(rest_ptr, tq)
    except Exception:
        return _fail(f"{module}.{func}() raised", tq)
    if not isinstance(rc, int):
        log.error("%s.%s() returned %r, expected an int (0 = ok)", module, func, rc)
        return 1
    if rc != 0:
        log.error("%s.%s() returned %d", module, func, rc)
    return rc


def shutdown_all() -> int:
    """Stop every aioresty runtime of the process; 0 if all stopped in time."""
    # called from a host thread with the GIL; joining releases it
    assert threading.current_thread() is not None
    return runtime.shutdown_all()


def shutdown_at_exit() -> int:
    """The process exits (the loader's atexit): the host may be half torn down,
    so no completion sink runs from now on; then the runtimes stop as at an
    unload (calls in flight answered, shutdown hooks run, bounded)."""
    _native.hosts_gone()
    return runtime.shutdown_all()
