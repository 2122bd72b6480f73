"""A small reader of Prometheus text (version 0.0.4) for the metrics tests."""

from __future__ import annotations

import re

_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(name, frozenset of (label, value)): value} of every sample line; a
    series that appears twice is an error (the exposition format forbids it)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                assert name not in types, f"family {name} declared twice"
                types[name] = kind
            continue
        m = _LINE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(
            (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
            for k, v in _LABEL.findall(m.group(3) or "")
        )
        key = (m.group(1), labels)
        assert key not in out, f"series twice: {line!r}"
        out[key] = float(m.group(4))
    return out


def value(samples: dict, metric: str, /, **labels: str) -> float:
    """The one sample of `metric` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == metric and want <= ls]
    assert len(found) <= 1, f"{metric}{labels}: {len(found)} series"
    return found[0] if found else 0.0
