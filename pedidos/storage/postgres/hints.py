"""Hints to the other nodes: NOTIFY, off every order's path.

A hint only saves waiting: every node also polls (contract section 9), so a
hint lost with its connection costs a poll interval, never an order. New
orders are hinted at most once per `HINT_GAP_S`, however many batches commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pedidos.domain import Estado
from pedidos.storage.postgres import sql
from pedidos.storage.postgres.link import DatabaseUnavailable, Link

logger = logging.getLogger(__name__)

# After a new-orders hint, the next waits this long, and covers every batch
# committed meanwhile: under request/response load a node commits hundreds of
# small batches a second, and a NOTIFY transaction for each cost PostgreSQL
# about a third more CPU per order (38 against 26 µs). An idle node hears of
# new work at most this much later; the first hint after a quiet spell goes at once.
HINT_GAP_S = 0.01


def hint(channel: str, payload: str = "") -> pgsql.Composed:
    """A NOTIFY in a transaction of its own that does not wait for its flush:
    PostgreSQL holds its global notify lock until the commit is done, so a
    NOTIFY inside an order's transaction would hold it through that fsync and
    serialise every node's commits."""
    return pgsql.SQL("BEGIN; SET LOCAL synchronous_commit TO off; NOTIFY {}, {}; COMMIT").format(
        pgsql.Identifier(channel), pgsql.Literal(payload)
    )


def done_hint(ids: tuple[int, ...]) -> pgsql.Composed:
    """These orders reached a final state (too many to list: look at every waiter)."""
    return hint(sql.DONE_CHANNEL, ",".join(map(str, ids)) if len(ids) <= sql.MAX_PAYLOAD_IDS else "")


class Hints:
    """The hints a node's event loop sends, on `link`."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._sending: asyncio.Task[None] | None = None
        self._again = False
        self._soon: set[asyncio.Task[None]] = set()

    def new_orders(self) -> None:
        """NOTIFY the other nodes of new orders: one at a time, at most one per
        `HINT_GAP_S`, and one more for all the batches committed meanwhile."""
        if self._sending is not None:
            self._again = True
            return
        self._sending = asyncio.get_running_loop().create_task(self._send_new())

    async def _send_new(self) -> None:
        try:
            while True:
                self._again = False
                await self.send(hint(sql.NEW_CHANNEL))
                await asyncio.sleep(HINT_GAP_S)
                if not self._again:
                    return
        finally:
            self._sending = None

    async def moved(self, moved: list[tuple[int, str]]) -> None:
        """Tell the other nodes: orders to take, orders now final."""
        if not moved:
            return
        failed = tuple(i for i, estado in moved if estado == Estado.FALLIDO)
        if len(failed) < len(moved):
            await self.send(hint(sql.NEW_CHANNEL))
        if failed:
            await self.send(done_hint(failed))

    async def send(self, statement: pgsql.Composed) -> None:
        """One hint, after the change it tells of was committed by a statement
        of its own: a hint that fails must not undo it, nor take its reply."""
        try:
            async with self._link.use() as conn:
                await conn.execute(statement)
        except (DatabaseUnavailable, psycopg.Error) as exc:
            logger.debug("could not send a hint: %s", exc)

    def soon(self, hinting: Coroutine[Any, Any, None]) -> None:
        """Run `hinting` (a `send`, a `moved`) without making the caller wait:
        a reply that the change was made need not wait for the link the node's
        own work shares. Kept until done, and awaited by `sent`."""
        task = asyncio.get_running_loop().create_task(hinting)
        self._soon.add(task)
        task.add_done_callback(self._soon.discard)

    async def sent(self) -> None:
        """Until the hints under way, if any, have gone."""
        if self._sending is not None:
            await self._sending
        if self._soon:
            await asyncio.gather(*self._soon)
