"""New orders into PostgreSQL: a group commit on the event loop.

Orders submitted during one pass of the event loop form a batch; while one
batch commits, the next one gathers. A batch is one multi-row
`INSERT ... ON CONFLICT (referencia) DO NOTHING RETURNING`, a transaction of its
own (autocommit) with `synchronous_commit = on`: a future resolves only after
that commit, one round trip after the batch left. A `referencia` already
stored is read in the same statement (and one that another transaction
inserts meanwhile, after the insert waited for it): the same content is a
retry (`duplicado`), different content or another owner's order is `taken`
(refused with `referencia_en_uso`).

One batch is in flight at a time: the next one draws its ids only after the
last one drew and committed, so the ids of one connection's orders increase
in the order it sent them, and a referencia in two batches is settled as one
batch after the other. (Two batches in flight on two connections, with those
two rules kept by holding an order back while an earlier order of its
connection or its referencia flies, was measured: no faster than one, since
smaller batches cost more per order; see docs/scaling.md.)

After a batch with new orders, `hint()` asks for a NOTIFY to idle nodes; the
backend sends it off this path, outside the insert's transaction (see
`link.hint`), and coalesces the hints of batches that follow each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg

from pedidos.domain import Estado, Receipt
from pedidos.logsetup import Repeating
from pedidos.storage.base import Ack
from pedidos.storage.postgres import sql
from pedidos.storage.postgres.link import DatabaseUnavailable, Health, Link, one_line

logger = logging.getLogger(__name__)
# A database that refuses every batch alike (read-only, disk full, a constraint
# gone) while the cause lasts: once, then at most every 10 s per kind of error.
refused = Repeating(logger)

MAX_BATCH = 5000  # orders per transaction at most; more wait for the next one
STORE_TIMEOUT_S = 10.0  # a batch not committed by then is refused, and its connection replaced


class _Entry(NamedTuple):
    order: Any  # NewOrder: (cliente, productos, direccion, referencia)
    owner: str | None
    future: asyncio.Future[Any]
    notify: Callable[[], None] | None


class Intake:
    def __init__(
        self,
        link: Link,
        health: Health,
        ack: Ack,
        on_stored: Callable[[tuple[int, ...]], None] | None,
        refuse: Callable[[BaseException], BaseException],
        hint: Callable[[], None] | None = None,
    ) -> None:
        """A future resolves to `ack(receipt)`; one that fails gets `refuse(exc)`;
        `hint()` after a batch with new orders (to tell the other nodes)."""
        self._link = link
        self._health = health  # shared by the node's links: any of them may see the database go
        self._ack = ack
        self._on_stored = on_stored
        self._refuse = refuse
        self._hint = hint
        self._queue: list[_Entry] = []
        self._flusher: asyncio.Task[None] | None = None
        self.on_commit: Callable[[float], None] | None = None  # seconds per batch committed

    def submit(
        self, order: Any, owner: str | None, notify: Callable[[], None] | None = None
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Entry(order, owner, future, notify))
        if self._flusher is None:
            # Started from the loop's next pass: whatever else arrives in this
            # pass joins the same batch.
            self._flusher = loop.create_task(self._flush())
        return future

    async def drain(self) -> None:
        """Until every order submitted so far has its answer."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                live = [e for e in batch if not e.future.done()]  # a cancelled one's client left
                if live:
                    await self._store(live)
                for callback in {e.notify for e in batch if e.notify is not None}:
                    callback()
        finally:
            self._flusher = None

    async def _store(self, batch: list[_Entry]) -> None:
        async def store(conn: psycopg.AsyncConnection[Any]) -> list[Receipt]:
            return await insert_orders(conn, [e.order for e in batch], [e.owner for e in batch])

        try:
            # Also when the node is back but this link is still on its way:
            # its own reconnection may be up to a second behind the others'.
            if (not self._health.up or self._link.down) and not await self._link.revive():
                # Refused at once (or after a short look), not after a timeout.
                raise DatabaseUnavailable("PostgreSQL is unreachable")
            started = time.perf_counter()
            results = await self._link.run(store, STORE_TIMEOUT_S)
            new_ids = [r.id for r in results if not r.duplicado]
        except DatabaseUnavailable as exc:
            # No ack either way; `exc.maybe_done` says whether the commit's
            # outcome is unknown, and the reply says so (server/failures.py).
            self._fail(batch, exc)
            return
        except psycopg.Error as exc:
            refused.error("could not store %d orders: %s", len(batch), one_line(exc), key=type(exc))
            self._fail(batch, exc)
            return
        except BaseException as exc:
            # Cancelled by a stop, or a bug: either may come after the commit.
            self._fail(batch, DatabaseUnavailable("the server is stopping", maybe_done=True))
            if not isinstance(exc, Exception):
                raise
            logger.exception("could not store %d orders", len(batch))
            return
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)
        ack = self._ack
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(ack(result))
        if new_ids:
            if self._on_stored is not None:
                self._on_stored(tuple(new_ids))
            if self._hint is not None:
                self._hint()

    def _fail(self, batch: list[_Entry], exc: BaseException) -> None:
        refused = self._refuse(exc)
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(refused)


def batch_document(orders: list[Any], owners: list[str | None]) -> str:
    """The one parameter of `sql.INSERT`: the batch as one JSON document, which
    costs the client a third of what five arrays adapted value by value did."""
    return json.dumps(
        [
            {"c": cliente, "p": list(items), "d": direccion, "r": ref, "o": owner}
            for (cliente, items, direccion, ref), owner in zip(orders, owners, strict=True)
        ]
    )


async def insert_orders(
    conn: psycopg.AsyncConnection[Any], orders: list[Any], owners: list[str | None]
) -> list[Receipt]:
    """Store `orders`: a `Receipt` for each. The connection is in autocommit
    mode: the one statement, the INSERT, is a transaction of its own,
    committed (and flushed: synchronous_commit is on) when it returns.

    Referencias already stored are read in that same statement and not
    inserted again, so that only a real race (another transaction inserting
    the same one now) reaches ON CONFLICT: a conflicting row still draws an
    id, and ids are best without gaps. The race's winner is read afterwards."""
    refs = [order[3] for order in orders]
    batch = (batch_document(orders, owners),)
    if all(ref is None for ref in refs):
        row = await (await conn.execute(sql.INSERT, batch)).fetchone()  # an aggregate: one row
        ids = (row[0] or []) if row is not None else []
        if len(ids) != len(orders):
            raise RuntimeError(f"inserted {len(ids)} rows for {len(orders)} orders")
        pendiente = Estado.PENDIENTE.value
        return [Receipt(order_id, pendiente, False) for order_id in ids]
    rows = await (await conn.execute(sql.INSERT_WITH_REFERENCIAS, batch)).fetchall()
    inserted = sorted((row[1], row[2]) for row in rows if row[0])
    stored: dict[str, tuple[Any, ...]] = {row[2]: (row[1], *row[3:]) for row in rows if not row[0]}
    # What the statement offered to the insert: each referencia's first order
    # unless stored, and every order without one.
    candidates, seen = [], set()
    for i, ref in enumerate(refs):
        if ref is None or (ref not in stored and ref not in seen):
            candidates.append(i)
            if ref is not None:
                seen.add(ref)
    results: list[Receipt | None] = [None] * len(orders)
    new_refs = {ref for _, ref in inserted if ref is not None}
    # The insert draws ids in input order: the sorted ids returned belong,
    # in order, to the candidates it stored (all but the race's losers).
    went_in = [i for i in candidates if refs[i] is None or refs[i] in new_refs]
    if len(went_in) != len(inserted):
        raise RuntimeError(f"inserted {len(inserted)} rows for {len(went_in)} orders")
    for i, (order_id, _) in zip(went_in, inserted, strict=True):
        results[i] = Receipt(order_id, Estado.PENDIENTE.value, False)
        if refs[i] is not None:  # for its repeats in this batch
            cliente, items, direccion, _ = orders[i]
            stored[refs[i]] = (order_id, Estado.PENDIENTE.value, cliente, list(items), direccion, owners[i])
    missing = {refs[i] for i, r in enumerate(results) if r is None} - stored.keys()
    if missing:  # stored by another transaction just now
        try:
            stored.update(await _by_referencia(conn, missing))
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise  # a lost connection: `Link.use` says maybe done, and reconnects
            # The insert above is committed: not "nothing was stored", whatever
            # the error (a cancel, a lock_timeout, anything a refusal would say).
            raise DatabaseUnavailable(one_line(exc), maybe_done=True) from exc
    for i, result in enumerate(results):
        if result is None:
            order_id, estado, cliente, items, direccion, owner = stored[refs[i]]
            same = (cliente, items, direccion) == (orders[i][0], list(orders[i][1]), orders[i][2])
            taken = not same or (owners[i] is not None and owners[i] != owner)
            results[i] = Receipt(order_id, estado, True, taken, refs[i] if taken else None)
    return results  # type: ignore[return-value]


async def _by_referencia(conn: psycopg.AsyncConnection[Any], refs: set[str]) -> dict[str, tuple[Any, ...]]:
    cur = await conn.execute(sql.BY_REFERENCIA, (list(refs),))
    return {row[0]: row[1:] for row in await cur.fetchall()}
