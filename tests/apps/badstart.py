"""An app whose startup hook fails the way a real one does (a server refusing)."""

from aioresty import App

app = App()


@app.on_startup
async def connect() -> None:
    raise ConnectionRefusedError(f"redis at {app.config.get('redis', '?')} refused the connection")


@app.handler
async def never(req: bytes) -> bytes:
    return b"unreachable"
