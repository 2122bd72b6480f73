"""examples/nginx/nginx.conf works as shipped (only its port is changed)."""

from __future__ import annotations

import json
import os

from .conftest import LUA_DIR, REPO

EXAMPLE = REPO / "examples" / "nginx"


def test_example_conf(nginx):
    conf = (EXAMPLE / "nginx.conf").read_text()
    assert "listen 127.0.0.1:8080;" in conf
    nginx.conf.write_text(conf.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{nginx.port};"))
    extra = os.environ.get("AIORESTY_NGINX_EXTRA_LUA_PATH")  # local stand-ins
    if extra:
        nginx.conf.write_text(
            nginx.conf.read_text().replace(
                '"$prefix/lua/?.lua;', f'"$prefix/lua/?.lua;{extra}/?.lua;'
            )
        )
    (nginx.prefix / "lua").symlink_to(LUA_DIR)  # what run.sh does
    nginx.extra_env["PYTHONPATH"] = f"{EXAMPLE}:{REPO}"
    nginx.start()

    status, h, _ = nginx.request("/api/hello")
    assert status == 401 and "bearer" in h["www-authenticate"].lower()
    status, _, _ = nginx.request("/api/hello", headers={"Authorization": "Bearer nope"})
    assert status == 401
    status, h, body = nginx.request("/api/hello", headers={"Authorization": "Bearer secret-alice"})
    assert status == 200 and h["content-type"] == "application/json", body
    assert json.loads(body)["hello"] == "alice"
    status, _, body = nginx.request("/echo", b"ping")
    assert (status, body) == (200, b"ping\n")
    nginx.stop()
    assert nginx.bad_log_lines() == []
