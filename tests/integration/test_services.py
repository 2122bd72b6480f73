"""The backing services of the integration suite come up and work
(tests/services.py): redis, PostgreSQL as an unprivileged user, the HTTP
upstream."""

from __future__ import annotations

import json
import os

import redis

from tests.netutil import http_request
from tests.services import HttpUpstream, Postgres, Redis


def test_redis(redis_server: Redis) -> None:
    r = redis.Redis.from_url(redis_server.url)
    try:
        r.set("svc:probe", "ok", ex=10)
        assert r.get("svc:probe") == b"ok"
        assert r.config_get("save") == {"save": ""}
    finally:
        r.close()


def test_postgres(postgres_server: Postgres) -> None:
    assert postgres_server.psql("SELECT 40 + 2") == [["42"]]
    (addr,) = postgres_server.psql("SHOW listen_addresses")
    assert addr == ["127.0.0.1"]
    if os.geteuid() == 0:  # the postmaster does not run as root
        with open(f"/proc/{postgres_server.proc.pid}/status") as f:
            uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        assert uid != "0"


def test_http_upstream(http_upstream: HttpUpstream) -> None:
    status, _, body = http_request(http_upstream.port, "GET", "/echo/x", headers={"x-a": "1"})
    assert status == 200
    data = json.loads(body)
    assert data["path"] == "/echo/x" and data["headers"]["x-a"] == "1"
    assert http_upstream.hits("/echo/x") >= 1
