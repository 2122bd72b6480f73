"""The peer of bench-envoy's bridge: the same ``async def echo`` (tests/apps/echoapp.py)
served over HTTP/1.1 on a unix socket by aiohttp (uvloop), as a sidecar a Lua filter
reaches with ``httpCall``.

    python benchmarks/sidecar_echo.py --path /tmp/x/echo.sock

POST /echo answers ``await echo(body)``.  Prints ``ready <path>`` once listening;
SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.apps.echoapp import echo  # the aioresty variant's handler


async def handle(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=await echo(body), content_type="application/octet-stream")


async def serve(path: str) -> None:
    app = web.Application()
    app.router.add_post("/echo", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.UnixSite(runner, path).start()
        print(f"ready {path}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--path", required=True, help="unix socket path")
    args = ap.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.path))


if __name__ == "__main__":
    main()
