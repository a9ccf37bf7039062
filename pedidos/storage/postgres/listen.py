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
from pedidos.storage.postgres.hints import HINT_GAP_S
from pedidos.storage.postgres.link import BACKOFF_FIRST_S, BACKOFF_MAX_S, one_line

logger = logging.getLogger(__name__)
lost_listen = Repeating(logger)

CHECK_S = 5.0  # longest wait for a notification before proving the connection alive


class Gathered:
    """Notifications passed on at most once per `gap` seconds, what came
    meanwhile gathered into the next call. Any role that may connect can NOTIFY
    on these channels, and each hint passed on costs the node queries (a look
    for pending orders, the waiters' reads): 1,000 notifications a second cost
    ~2,800 queries a second in an audit. The nodes' own hints come at most once
    per HINT_GAP_S from each node; gathered, a wake-up comes at most that late."""

    def __init__(
        self,
        on_new: Callable[[], None],
        on_done: Callable[[tuple[int, ...] | None], None],
        gap: float = HINT_GAP_S,
    ) -> None:
        self._on_new = on_new
        self._on_done = on_done
        self._gap = gap
        self._new = False
        self._done: set[int] | None = set()  # None: maybe any order
        self._any_done = False
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def new(self) -> None:
        self._new = True
        self._soon()

    def done(self, ids: tuple[int, ...] | None) -> None:
        self._any_done = True
        if ids is None:
            self._done = None
        elif self._done is not None:
            self._done.update(ids)
        self._soon()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _soon(self) -> None:
        if self._timer is not None:
            return  # already due: this one goes with it
        loop = asyncio.get_running_loop()
        if loop.time() >= self._due:
            self._pass_on()
        else:
            self._timer = loop.call_at(self._due, self._pass_on)

    def _pass_on(self) -> None:
        self._timer = None
        self._due = asyncio.get_running_loop().time() + self._gap
        new, done, any_done = self._new, self._done, self._any_done
        self._new, self._done, self._any_done = False, set(), False
        if new:
            self._on_new()
        if any_done:
            self._on_done(None if done is None else tuple(sorted(done)))


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
        self._gathered = Gathered(on_new, on_done)
        self._listener = Background(self._run)
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()
        self._gathered.cancel()

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
            self._gathered.new()
        elif channel == sql.DONE_CHANNEL:
            try:
                ids = tuple(int(part) for part in payload.split(",")) if payload else None
            except ValueError:
                ids = None
            self._gathered.done(ids)
