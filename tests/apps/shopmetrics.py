"""A shop that counts what it sells: app.counter / app.histogram the way a
user writes them, for the metrics tests of every proxy."""

from __future__ import annotations

import os

from aioresty import App

app = App()
orders = app.counter("orders", labels=("kind",))
basket = app.histogram("basket_items", buckets=(1, 5, 10))
open_carts = app.gauge("open_carts")


@app.on_startup
async def opened() -> None:
    open_carts.set(3)


@app.handler
async def buy(req: bytes) -> bytes:
    """'kind:items' -> the pid that served it."""
    kind, items = req.decode().split(":")
    orders.inc(kind=kind)
    basket.observe(int(items))
    return str(os.getpid()).encode()


@app.handler
async def refund(req: bytes) -> bytes:
    raise ValueError("no refunds")
