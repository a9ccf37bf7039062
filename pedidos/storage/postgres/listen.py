"""LISTEN/NOTIFY, as hints only.

One dedicated connection listens (psycopg's `notifies()` holds its connection,
so nothing else may run on it); between waits a `SELECT 1` proves it alive.
When it drops it is re-established with backoff, and every reconnection is
treated as "anything may have happened": notifications are not durable, so
the node looks at the table again. Nothing depends on a hint arriving; the
node's own polling catches up without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from pedidos.background import Background
from pedidos.logsetup import Repeating
from pedidos.storage.postgres import sql
from pedidos.storage.postgres.link import BACKOFF_FIRST_S, BACKOFF_MAX_S, one_line

logger = logging.getLogger(__name__)
lost_listen = Repeating(logger)

CHECK_S = 5.0  # longest wait for a notification before proving the connection alive


class Listener:
    def __init__(
        self,
        info: str,
        on_new: Callable[[], None],
        on_done: Callable[[tuple[int, ...] | None], None],
    ) -> None:
        """`on_new()`: there are new pending orders; `on_done(ids)`: these
        orders reached a final state (None: maybe any order did)."""
        self._info = info
        self._on_new = on_new
        self._on_done = on_done
        self._listener = Background(self._run)
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    async def _run(self) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self._info, autocommit=True)
                await conn.execute(f"LISTEN {sql.NEW_CHANNEL}; LISTEN {sql.DONE_CHANNEL}")
                self.connected.set()
                delay = BACKOFF_FIRST_S
                # Whatever was sent while nobody listened is lost: look again.
                self._on_new()
                self._on_done(None)
                while True:
                    async for note in conn.notifies(timeout=CHECK_S):
                        self._dispatch(note.channel, note.payload)
                    await conn.execute("SELECT 1")
            except (psycopg.OperationalError, OSError) as exc:
                if self.connected.is_set():
                    # Held back per kind: a proxy or PostgreSQL that closes idle
                    # connections ends this one every few seconds.
                    lost_listen.warning(
                        "lost the LISTEN connection (%s); polling until it is back", one_line(exc), key="lost"
                    )
                self.connected.clear()
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == sql.NEW_CHANNEL:
            self._on_new()
        elif channel == sql.DONE_CHANNEL:
            try:
                ids = tuple(int(part) for part in payload.split(",")) if payload else None
            except ValueError:
                ids = None
            self._on_done(ids)
