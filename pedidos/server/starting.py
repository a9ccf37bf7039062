"""The storage's start, abandoned when a stop signal comes while it waits.

A start on a shared database may wait as long as a lock there lasts
(storage/postgres/backend.py); an operator's stop must not wait for that. The
start gets `START_GRACE_S` more after the signal, time enough for one about to
end (SQLite's takes a fraction of a second), then it is cancelled, and what it
opened is closed by the server's shutdown as after any failed start.
"""

from __future__ import annotations

import asyncio

from pedidos.storage.base import Recovery, Storage

START_GRACE_S = 1.0


class StoppedStarting(Exception):
    """A stop signal came while the storage's start waited; it was cancelled."""


async def start_storage(storage: Storage, stop: asyncio.Event) -> Recovery:
    """`await storage.start()`, or `StoppedStarting` once `stop` is set and the
    start has not ended within `START_GRACE_S`."""
    start = asyncio.ensure_future(storage.start())
    asked = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({start, asked}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            await asyncio.wait({start}, timeout=START_GRACE_S)
        if not start.done():
            start.cancel()
            await asyncio.wait({start})
            raise StoppedStarting
        return start.result()
    finally:
        asked.cancel()
        if not start.done():  # this coroutine itself was cancelled
            start.cancel()
