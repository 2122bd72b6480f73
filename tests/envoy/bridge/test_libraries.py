"""Which file a runtime name loads, and what a second load with other options
says (issue 11, points 5 and 6): resty_ffi in Envoy's stock Lua filter.

Order (aioresty_core.h): a path as given (relative: against the first
$AIORESTY_LIB_PATH entry); a name in $AIORESTY_LIB_PATH, then through the
dynamic linker (LD_LIBRARY_PATH), and only then the runtimes aioresty bundles.
The registry logs the file each runtime was loaded from.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

from tests.envoy.conftest import build_dir

USER = {"lua": {"app": "scripts/app_calls.lua"}, "routes": [{"prefix": "/", "lua": "app"}]}


def _copy(dst: Path) -> Path:
    """A copy of the bundled C echo runtime at dst."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(build_dir() / "libffi_c_echo.so", dst)
    return dst


def _echo(env, lib: str, cfg: str = "x", q: str = "") -> tuple[int, bytes]:
    status, _, body = env.request(
        "POST", f"/py/echo?lib={quote(lib, safe='')}&cfg={cfg}{q}", body=b"hi"
    )
    return status, body


def test_names_paths_and_lookup_order(envoy_factory, tmp_path: Path) -> None:
    mine, ld = tmp_path / "mine", tmp_path / "ld"
    want = {
        # in $AIORESTY_LIB_PATH and on LD_LIBRARY_PATH: $AIORESTY_LIB_PATH wins
        "ffi_both": _copy(mine / "libffi_both.so"),
        # lua-resty-ffi's (LuaJIT ffi.load's) file-name forms
        "libffi_both.so": mine / "libffi_both.so",
        "ffi_both.so": mine / "libffi_both.so",
        # bundled too: the user's copy (found by the dynamic linker) wins
        "ffi_c_echo": _copy(ld / "libffi_c_echo.so"),
        # only bundled
        "ffi_go_echo": build_dir() / "libffi_go_echo.so",
        # a relative path: against the first $AIORESTY_LIB_PATH entry
        "sub/libffi_rel.so": _copy(mine / "sub" / "libffi_rel.so"),
        # an absolute path: as given
        str(tmp_path / "abs" / "libx.so"): _copy(tmp_path / "abs" / "libx.so"),
    }
    _copy(ld / "libffi_both.so")
    env = envoy_factory(
        USER, env={"AIORESTY_LIB_PATH": f"{mine}:{tmp_path}", "LD_LIBRARY_PATH": str(ld)}
    )
    for lib, path in want.items():
        assert _echo(env, lib) == (200, b"hi"), lib
        line = f"runtime '{lib}&x' loaded from {path.resolve()}"
        assert line in env.log(), f"{line!r} not in the log:\n{env.log()[-3000:]}"
    # a relative path is never taken against the proxy's working directory
    status, body = _echo(env, "tests/no_such_runtime.so")
    assert status == 500, body
    assert f"{mine}/tests/no_such_runtime.so" in body.decode(), body
    status, body = _echo(env, "ffi_no_such_runtime")
    assert status == 500 and b"libffi_no_such_runtime.so not in $AIORESTY_LIB_PATH" in body, body
    assert b"nor found by the dynamic linker" in body and b"nor bundled" in body, body


def test_relative_path_without_lib_path_is_refused(envoy_factory, tmp_path: Path) -> None:
    env = envoy_factory(USER, env={"AIORESTY_LIB_PATH": ""})
    status, body = _echo(env, "sub/libffi_c_echo.so")
    assert status == 500
    assert b"relative paths are taken against the first entry of $AIORESTY_LIB_PATH" in body


def test_second_load_with_other_options_warns_once(envoy_factory) -> None:
    env = envoy_factory(USER)  # one worker: one Lua VM
    warning = (
        "runtime 'ffi_c_echo&opts' is already loaded in this Lua VM with max_queue=5 "
        "is_global=false unpin=false timeout=default; a load asking for max_queue=7 "
        "is_global=false unpin=false timeout=default gets it as it is"
    )
    assert _echo(env, "ffi_c_echo", "opts", "&mq=5") == (200, b"hi")
    assert _echo(env, "ffi_c_echo", "opts", "&mq=5") == (200, b"hi")
    assert _echo(env, "ffi_c_echo", "opts") == (200, b"hi")  # no max_queue: no preference
    assert "already loaded" not in env.log()
    assert _echo(env, "ffi_c_echo", "opts", "&mq=7") == (200, b"hi")
    assert warning in env.log(), env.log()[-3000:]
    assert _echo(env, "ffi_c_echo", "opts", "&mq=9") == (200, b"hi")
    assert env.log().count("already loaded") == 1
