"""The docs say what the code does: the short Envoy config reference lists every key the
CLI accepts, and its example builds; the metrics page lists every family of the core."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from aioresty import _native, cli, envoy_config
from tests.hostlib import ROOT

DOCS = ROOT / "docs"


def _table_keys(text: str, heading: str) -> set[str]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, re.M))


def test_the_config_reference_lists_every_key() -> None:
    text = (DOCS / "envoy-config.md").read_text()
    assert _table_keys(text, "## Top-level keys") == set(cli.USER_KEYS)
    assert _table_keys(text, "## Route keys") == cli.ROUTE_KEYS


def test_the_config_reference_example_builds(tmp_path: Path) -> None:
    text = (DOCS / "envoy-config.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S)
    assert example
    (tmp_path / "shop.toml").write_text(example.group(1))
    for script in ("shop.lua", "auth.lua"):
        (tmp_path / script).write_text("function envoy_on_request(h) end\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / "src").mkdir()
    user = cli.load_user(tmp_path / "shop.toml")
    assert user == tomllib.loads(example.group(1))
    config = cli.build_from_user(user, tmp_path, "shop.toml")
    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"]["prefix"] for r in routes][:3] == ["/shop/", "/api/", "/health"]
    assert routes[1]["route"] == {"cluster": "backend", "timeout": "10s", "prefix_rewrite": "/"}
    assert routes[2]["direct_response"] == {"status": 200, "body": {"inline_string": "ok\n"}}


def test_the_metrics_page_lists_every_family() -> None:
    """docs/operations.md "Metrics" names each family of the core's table with its labels."""
    text = (DOCS / "operations.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = {
        name: labels
        for names, labels in re.findall(
            r"^\| (`aioresty_.*?) \| \w* ?\| ([\w, ]+) \|", section, re.M
        )
        for name in re.findall(r"`aioresty_(\w+)`", names)
    }
    core = {name: ", ".join(labels) for name, _kind, labels in _native.metric_families()}
    assert rows == core
    assert envoy_config.stats_config()["histogram_bucket_settings"][0]["buckets"] == list(
        _native.metric_call_bounds()
    )


def test_the_benchmark_tables_are_the_results() -> None:
    """README's and docs/benchmarks.md's figures are generated from the committed
    benchmarks/results/*.json (make bench-table): neither can say another number."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
