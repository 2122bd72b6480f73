"""Application metrics: ``app.counter``, ``app.gauge``, ``app.histogram``.

They go into the core's process-wide metrics table (aioresty_core.h section
4), the one every proxy exports: Envoy copies it into its stats (admin
``/stats``, ``/stats/prometheus``), nginx renders it at
``require("aioresty.nginx").metrics()``.  Each series is labelled with the
runtime that records it, the metric's name and its labels as one
``"k=v,k=v"`` text: Envoy fixes stat names when it loads a config, before an
app exists, so application metrics share three families
(``aioresty_app_counter_total``, ``aioresty_app_gauge``,
``aioresty_app_histogram``) on every proxy.  docs/operations.md "Metrics".

Recording takes a mutex in the core (no syscall, no await): call it from
handlers, hooks or threads.  Envoy keeps integers: counters and gauges are
exported with their fractional part dropped, histograms by bucket bound.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import _native

if TYPE_CHECKING:
    from .app import App

__all__ = ["Counter", "Gauge", "Histogram", "call_bounds", "text"]

_KIND_COUNTER, _KIND_GAUGE, _KIND_HISTOGRAM = 0, 1, 2
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]{0,99}\Z")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_BUCKETS_MAX = 32
DEFAULT_BUCKETS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4)


def text() -> str:
    """This process's whole table as Prometheus text (every runtime's calls and
    every app's metrics; on nginx one worker's, before the endpoint sums them)."""
    return _native.metrics_text()


def call_bounds() -> tuple[float, ...]:
    """The upper bounds (microseconds) of ``aioresty_call_time_us``'s buckets."""
    return _native.metric_call_bounds()


class _Metric:
    kind = _KIND_COUNTER

    def __init__(self, app: App, name: str, labels: Iterable[str], bounds: tuple[float, ...]):
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"metric name {name!r}: letters, digits, '_' and ':' (1-100)")
        self.name = name
        self.labels = tuple(labels)
        for label in self.labels:
            if not isinstance(label, str) or not _LABEL.match(label):
                raise ValueError(f"metric {name!r}: bad label name {label!r}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"metric {name!r}: a label is named twice")
        self._app = app
        self._bounds = bounds
        self._epoch = -1  # app._metrics_epoch the handles belong to
        self._handles: dict[tuple[str, ...], int] = {}

    def _handle(self, values: dict[str, object]) -> int:
        key = tuple(str(values.pop(label)) for label in self.labels if label in values)
        if values or len(key) != len(self.labels):
            want = ", ".join(self.labels) or "none"
            raise ValueError(
                f"metric {self.name!r} takes the labels ({want}), got ({', '.join(values) or ''})"
                if values
                else f"metric {self.name!r} takes the labels ({want})"
            )
        app = self._app
        if self._epoch != app._metrics_epoch:  # another runtime serves the app now
            self._handles.clear()
            self._epoch = app._metrics_epoch
        h = self._handles.get(key)
        if h is None:
            text = ",".join(f"{k}={v}" for k, v in zip(self.labels, key, strict=True))
            h = _native.metric_series(app._metrics_tq, self.kind, self.name, text, self._bounds)
            if h < 0:
                raise ValueError(
                    f"metric {self.name!r}: series {text!r} refused (labels over 256 bytes, "
                    "control characters, or the process has 1024 application series)"
                )
            self._handles[key] = h
        return h


class Counter(_Metric):
    """A count that only goes up (``aioresty_app_counter_total``)."""

    kind = _KIND_COUNTER

    def inc(self, amount: int = 1, **labels: object) -> None:
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise ValueError(f"counter {self.name!r}: inc() takes an int >= 0, not {amount!r}")
        _native.metric_add(self._handle(labels), amount)


class Gauge(_Metric):
    """A value that goes up and down (``aioresty_app_gauge``)."""

    kind = _KIND_GAUGE

    def set(self, value: float, **labels: object) -> None:
        _native.metric_set(self._handle(labels), float(value))

    def inc(self, amount: float = 1, **labels: object) -> None:
        _native.metric_add(self._handle(labels), float(amount))

    def dec(self, amount: float = 1, **labels: object) -> None:
        _native.metric_add(self._handle(labels), -float(amount))


class Histogram(_Metric):
    """Observations counted in buckets (``aioresty_app_histogram``); on Envoy
    each is recorded as its bucket's bound, so choose integer units (ms, us,
    bytes)."""

    kind = _KIND_HISTOGRAM

    def observe(self, value: float, **labels: object) -> None:
        _native.metric_add(self._handle(labels), float(value))


def check_buckets(name: str, buckets: Iterable[float]) -> tuple[float, ...]:
    b = tuple(float(x) for x in buckets)
    if not 1 <= len(b) <= _BUCKETS_MAX or any(y <= x for x, y in itertools.pairwise(b)):
        raise ValueError(f"histogram {name!r}: buckets must be 1..{_BUCKETS_MAX} increasing bounds")
    return b
