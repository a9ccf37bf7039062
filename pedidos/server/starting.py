"""The start's waits: the storage's start, abandoned when a stop signal comes
while it waits; the children's setting up, before the server says `ready`.

A start on a shared database may wait as long as a lock there lasts
(storage/postgres/backend.py); an operator's stop must not wait for that. The
start gets `START_GRACE_S` more after the signal, time enough for one about to
end (SQLite's takes a fraction of a second), then it is cancelled, and what it
opened is closed by the server's shutdown as after any failed start.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time

from pedidos.stopsignals import ignores_stop
from pedidos.storage.base import Recovery, Storage

START_GRACE_S = 1.0
# How long `ready` waits at most for the children to ignore the stop signals:
# past it (a machine so loaded that a child takes longer to start) the server
# says `ready` all the same; only a stop in that instant is less clean.
CHILDREN_DEAF_S = 10.0


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


async def children_deaf(stop: asyncio.Event, timeout: float = CHILDREN_DEAF_S) -> None:
    """Wait until every child process (the writer, the workers) ignores Ctrl-C
    and SIGTERM: spawned, a child takes a fraction of a second to import its
    code and say so, and a stop sent to the whole group in that time (a
    Ctrl-C, systemd) killed it mid-import: tracebacks, and a writer replaced
    while the server stopped. Ends early on a stop, or where /proc cannot
    tell (another system)."""
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        told = [ignores_stop(child.pid) for child in multiprocessing.active_children() if child.pid]
        if all(deaf is not False for deaf in told):
            return
        await asyncio.sleep(0.01)
