"""A tiny local stand-in for httpbin.org (no internet here): GET /get answers
httpbin-like JSON (args, headers, origin, url); anything else is 404.

    python examples/envoy/httpbin.py --port 8080 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "httpbin-standin/1.0"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/get":
            self._send(404, {"error": "not found", "path": parts.path})
            return
        args = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(parts.query).items()}
        host = self.headers.get("Host", "localhost")
        body = {
            "args": args,
            "headers": {k.title(): v for k, v in self.headers.items()},
            "origin": self.client_address[0],
            "url": f"http://{host}{self.path}",
        }
        self._send(200, body)

    def _send(self, status: int, obj: dict) -> None:
        data = (json.dumps(obj, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    a = ap.parse_args()
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    srv.daemon_threads = True
    print(f"httpbin stand-in on http://{a.host}:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
