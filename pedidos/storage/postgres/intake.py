"""New orders into PostgreSQL: a group commit on the event loop.

Orders submitted during one pass of the event loop form a batch; while one
batch commits, the next one gathers. A batch is one multi-row
`INSERT ... ON CONFLICT (referencia) DO NOTHING RETURNING` and one commit with
`synchronous_commit = on`: a future resolves only after that commit. A
`referencia` already stored is looked up in the same transaction (the insert
waited for any transaction inserting it elsewhere): the same content is a
retry (`duplicado`), different content or another owner is `ajeno`.

After a batch with new orders, one NOTIFY tells idle nodes, outside the
insert's transaction (see `link.hint`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import Jsonb

from pedidos.storage.postgres import sql
from pedidos.storage.postgres.link import DatabaseUnavailable, Link, hint, one_line

logger = logging.getLogger(__name__)

MAX_BATCH = 5000  # orders per transaction at most; more wait for the next one


class Stored(NamedTuple):
    """What storing one order came to (the backend turns it into a Receipt)."""

    id: int
    estado: str
    duplicado: bool
    ajeno: bool = False


class _Entry(NamedTuple):
    order: Any  # NewOrder: (cliente, productos, direccion, referencia)
    owner: str | None
    future: asyncio.Future[Stored]
    notify: Callable[[], None] | None


class Intake:
    def __init__(self, link: Link, on_stored: Callable[[list[int]], None], hint: bool = True) -> None:
        self._link = link
        self._on_stored = on_stored
        self._hint = hint
        self._queue: list[_Entry] = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(
        self, order: Any, owner: str | None, notify: Callable[[], None] | None = None
    ) -> asyncio.Future[Stored]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Stored] = loop.create_future()
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
        try:
            async with self._link.use() as conn:
                async with conn.transaction():
                    results = await insert_orders(conn, [e.order for e in batch], [e.owner for e in batch])
                new_ids = [r.id for r in results if not r.duplicado]
                if new_ids and self._hint:
                    await conn.execute(hint(sql.NEW_CHANNEL))
        except DatabaseUnavailable as exc:
            # The commit's outcome may be unknown: no ack either way. A retry
            # with the same referencia is safe.
            _fail(batch, exc)
            return
        except psycopg.Error as exc:
            logger.error("could not store %d orders: %s", len(batch), one_line(exc))
            _fail(batch, exc)
            return
        except BaseException as exc:
            _fail(batch, DatabaseUnavailable("the server is stopping"))
            if not isinstance(exc, Exception):
                raise
            logger.exception("could not store %d orders", len(batch))
            return
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
        if new_ids:
            self._on_stored(new_ids)


def _fail(batch: list[_Entry], exc: BaseException) -> None:
    for entry in batch:
        if not entry.future.done():
            entry.future.set_exception(exc)


async def insert_orders(
    conn: psycopg.AsyncConnection[Any], orders: list[Any], owners: list[str | None]
) -> list[Stored]:
    """Store `orders` inside the caller's transaction: a `Stored` for each."""
    clientes, productos, direcciones, refs = [], [], [], []
    for cliente, items, direccion, referencia in orders:
        clientes.append(cliente)
        productos.append(Jsonb(list(items)))
        direcciones.append(direccion)
        refs.append(referencia)
    cur = await conn.execute(sql.INSERT, (clientes, productos, direcciones, refs, list(owners)))
    inserted = sorted(await cur.fetchall())
    new_refs = {ref for _, ref in inserted if ref is not None}
    # Which orders went in: every one without a referencia, and the first of
    # each referencia that the insert returned. Their ids, in order, are the
    # sorted ids returned (the insert draws them in input order).
    positions, taken = [], set()
    for i, ref in enumerate(refs):
        if ref is None or (ref in new_refs and ref not in taken):
            positions.append(i)
            if ref is not None:
                taken.add(ref)
    if len(positions) != len(inserted):
        raise RuntimeError(f"inserted {len(inserted)} rows for {len(positions)} orders")
    results: list[Stored | None] = [None] * len(orders)
    for position, (order_id, _) in zip(positions, inserted, strict=True):
        results[position] = Stored(order_id, "pendiente", False)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        cur = await conn.execute(sql.BY_REFERENCIA, ([refs[i] for i in missing],))
        stored = {row[0]: row[1:] for row in await cur.fetchall()}
        for i in missing:
            order_id, estado, cliente, items, direccion, owner = stored[refs[i]]
            same = (cliente, items, direccion) == (clientes[i], list(orders[i][1]), direcciones[i])
            ajeno = not same or (owners[i] is not None and owners[i] != owner)
            results[i] = Stored(order_id, estado, True, ajeno)
    return results  # type: ignore[return-value]
