"""The PostgreSQL backend behind the storage interface.

Six connections per node on the server's side, each re-established after it
breaks: one for intake (group commits), one for renewing the lease, two for
clients' commands, one for the node's own work (pending orders, hand-backs,
reaping dead nodes, hints), one listening for hints. Worker processes open
their own.

A connection serves one statement at a time, and whatever waits on `pedidos`
(a listing over millions of rows, a lock another program holds, a migration's
ALTER TABLE) holds up every statement queued behind it. So the renewals have a
connection of their own and touch nothing but `nodos`: behind a command or a
reap, past the lease, the other nodes declared a working node dead and ran its
orders a second time (a lock longer than the lease did that to every node).
And clients' commands have theirs: behind a slow listing, a node read no
pending orders and finished nothing until it was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from pedidos.domain import DEFAULT_LEASE_S, ESTADOS, Estado, NewOrder
from pedidos.storage.base import (
    Ack,
    Claim,
    Recovery,
    StorageError,
    StorageRefused,
    StorageUnavailable,
    plain_receipt,
)
from pedidos.storage.lease import NodeLease
from pedidos.storage.listing import Dialect, listing_query
from pedidos.storage.postgres import sql
from pedidos.storage.postgres.hints import Hints, done_hint, hint
from pedidos.storage.postgres.intake import Intake
from pedidos.storage.postgres.link import (
    DatabaseUnavailable,
    Health,
    Link,
    Links,
    StatementCancelled,
    one_line,
)
from pedidos.storage.postgres.listen import Listener
from pedidos.storage.postgres.nodes import CannotJoin, Nodes
from pedidos.storage.postgres.rows import iso, order, storable_text
from pedidos.storage.postgres.schema import migrate, privilege_advice
from pedidos.storage.postgres.settings import conninfo, session, shown
from pedidos.storage.postgres.worker import PgOpener

logger = logging.getLogger(__name__)

COMMAND_LINKS = 2  # one slow command leaves the other to every quick one
START_AGAIN_S = 1.0

T = TypeVar("T")

# How often an `esperar` looks at its order again by itself: the hints wake it
# at once, this only catches a hint that was lost (or never sent).
POLL_S = 2.0
POLL_WITHOUT_HINTS_S = 0.25


def _unavailable(exc: BaseException) -> BaseException:
    """A refused batch's error for its clients: a `psycopg.Error` that reaches
    here came on a connection still up (a lost one is `DatabaseUnavailable`)."""
    return exc if isinstance(exc, StorageUnavailable) else StorageRefused(one_line(exc))


# lower() folds like Python's str.lower() for what the C collation knows (ASCII).
PG_DIALECT = Dialect("%s", "strpos(lower(cliente), %s) > 0")


class PostgresStorage:
    """See storage/base.py `Storage` for what each method promises."""

    def __init__(
        self,
        url: str,
        nodo: str,
        *,
        ack: Ack = plain_receipt,
        on_stored: Callable[[tuple[int, ...]], None] | None = None,
        on_commit: Callable[[float], None] | None = None,
        lease: float = DEFAULT_LEASE_S,
        hints: bool = True,
        on_done: Callable[[tuple[int, ...] | None], None] = lambda ids: None,
        on_new: Callable[[], None] = lambda: None,
        on_handed_back: Callable[[list[tuple[int, str]]], None] = lambda moved: None,
        figures: Callable[[], tuple[int, int]] = lambda: (0, 0),
        ajustes: dict[str, Any] | None = None,
    ) -> None:
        """`on_stored(ids)`: new orders committed here; `on_commit(seconds)`:
        each batch's commit time; `on_new()`: maybe new
        orders elsewhere; `on_done(ids)`: orders reached a final state
        elsewhere (None: maybe any); `on_handed_back`: orders of dead nodes
        put back; `figures()`: (workers, connections) of this node;
        `ajustes`: its processing options, which the live nodes' must equal."""
        self.url = url
        self.shown = shown(url)
        self.hints = hints
        self.poll_s = POLL_S if hints else POLL_WITHOUT_HINTS_S
        self._info = conninfo(url)
        self.health = Health()
        self._main = Link(self._info, self.health, session)
        self._commands = Links([Link(self._info, self.health, session) for _ in range(COMMAND_LINKS)])
        self._intake_link = Link(self._info, self.health, session)
        self._lease_link = Link(self._info, self.health, session)
        self._hints = Hints(self._main)
        hint_new = self._hints.new_orders if hints else None
        self.intake = Intake(self._intake_link, self.health, ack, on_stored, _unavailable, hint_new)
        self.intake.on_commit = on_commit
        self._on_done = on_done
        self._on_handed_back = on_handed_back
        self.nodes = Nodes(
            self._main, self._lease_link, self.health, nodo, lease, figures, self._handed_back, ajustes
        )
        self.listener = Listener(self._info, on_new, on_done) if hints else None

    @property
    def nodo(self) -> str:
        return self.nodes.nodo

    @property
    def lease(self) -> NodeLease:
        return self.nodes.shared

    async def start(self, recover: bool = True) -> Recovery:
        """Connect, migrate, take this node's name, and hand back what an
        earlier run of this same node left `en proceso` (never another live
        node's: those are reaped once their lease runs out)."""
        role = None
        try:
            await self._main.open()
            await self._intake_link.open()
            await self._lease_link.open()
            await self._commands.open()
            async with self._main.use(timeout=None) as conn:  # DDL on a big table takes its time
                role = conn.info.user  # for the advice below: the URL may not name it (PGUSER)
                await migrate(conn)
            if not recover:  # a tool looking at the database: not a node
                return Recovery()
            await self._while_busy(self.nodes.register)
            # Renewing from here: the recovery below may wait on a lock.
            self.nodes.start()
            recovered = await self._while_busy(lambda: self.nodes.hand_back(None, crashed=True))
        except CannotJoin as exc:
            await self._close()
            raise StorageError(str(exc)) from None
        except (psycopg.Error, OSError, DatabaseUnavailable) as exc:
            with contextlib.suppress(Exception):  # gives the name up, if it got that far
                await self.nodes.stop(failed_start=True)
            await self._close()
            advice = privilege_advice(exc, role)
            raise StorageError(f"cannot use the database {self.shown}: {one_line(exc)}{advice}") from None
        logger.info("node %s joined the database %s", self.nodo, self.shown)
        if self.listener is not None:
            self.listener.start()
        return Recovery(
            tuple(i for i, estado in recovered if estado == Estado.PENDIENTE),
            tuple(i for i, estado in recovered if estado == Estado.FALLIDO),
        )

    @staticmethod
    async def _while_busy(step: Callable[[], Awaitable[T]]) -> T:
        """`await step()`, again while PostgreSQL cancels it: behind a lock on
        `pedidos` or `nodos` (another program's, a migration's) the start would
        end, and a service manager would start it again and again for as long
        as the lock lasted. (A stop signal meanwhile ends the wait: server.py.)"""
        while True:
            try:
                return await step()
            except StatementCancelled as exc:
                logger.warning("the start waits for the database (%s); trying again", exc)
                await asyncio.sleep(START_AGAIN_S)

    async def stop(self, timeout: float = 30.0) -> None:
        """Answer what was submitted, give up this node's name, close. (What
        its workers held was handed back by processing as they stopped; a row
        left `en proceso` is reaped by another node, as after a crash.)"""
        try:
            await asyncio.wait_for(self.intake.drain(), timeout)
        except asyncio.TimeoutError:
            logger.error("orders not committed within %g s are refused", timeout)
        await self._hints.sent()
        if self.listener is not None:
            await self.listener.stop()
        await self.nodes.stop()
        await self._close()

    async def _close(self) -> None:
        await self._intake_link.close()
        await self._lease_link.close()
        await self._commands.close()
        await self._main.close()

    def submit(
        self, new_order: NewOrder, owner: str | None, notify: Callable[[], None] | None = None
    ) -> asyncio.Future[Any]:
        return self.intake.submit(new_order, owner, notify)

    async def get(self, order_id: int, owner: str | None = None) -> dict[str, Any] | None:
        async with self._commands.use() as conn:
            if owner is None:
                cur = await conn.execute(sql.GET, (order_id,))
            else:
                cur = await conn.execute(sql.GET_OWNED, (order_id, owner))
            row = await cur.fetchone()
        return order(row) if row else None

    async def get_by_referencia(self, referencia: str, owner: str | None = None) -> dict[str, Any] | None:
        async with self._commands.use() as conn:
            if owner is None:
                cur = await conn.execute(sql.BY_REF, (referencia,))
            else:
                cur = await conn.execute(sql.BY_REF_OWNED, (referencia, owner))
            row = await cur.fetchone()
        return order(row) if row else None

    async def list_orders(
        self,
        estado: str | None,
        cliente: str | None,
        desde_id: int,
        limite: int,
        contiene: str | None = None,
        orden: str = "asc",
    ) -> list[dict[str, Any]]:
        query, params = listing_query(
            PG_DIALECT, sql.COLUMNS, estado, cliente, desde_id, limite, contiene, orden
        )
        async with self._commands.use() as conn:
            rows = await (await conn.execute(query, params)).fetchall()  # type: ignore[arg-type]
        return [order(row) for row in rows]

    async def cancel(self, order_id: int, owner: str | None = None) -> tuple[dict[str, Any] | None, bool]:
        async with self._commands.use() as conn:
            if owner is None:
                cur = await conn.execute(sql.CANCEL, (order_id,))
            else:
                cur = await conn.execute(sql.CANCEL_OWNED, (order_id, owner))
            row = await cur.fetchone()
        if row is not None:
            if self.hints:
                self._hints.soon(self._hints.send(done_hint((order_id,))))
            return order(row), True
        return await self.get(order_id, owner), False

    async def retry(self, order_id: int, owner: str | None = None) -> tuple[dict[str, Any] | None, bool]:
        async with self._commands.use() as conn:
            if owner is None:
                cur = await conn.execute(sql.RETRY, (order_id,))
            else:
                cur = await conn.execute(sql.RETRY_OWNED, (order_id, owner))
            row = await cur.fetchone()
        if row is not None:
            if self.hints:
                self._hints.soon(self._hints.send(hint(sql.NEW_CHANNEL)))
            return order(row), True
        return await self.get(order_id, owner), False

    async def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ESTADOS, 0)
        async with self._commands.use() as conn:
            for estado, n in await (await conn.execute(sql.COUNTS)).fetchall():
                counts[estado] = n
        return counts

    async def pending_ids(self, from_id: int, limit: int) -> list[int]:
        async with self._main.use() as conn:
            rows = await (await conn.execute(sql.PENDING_IDS, (from_id, limit))).fetchall()
        return [row[0] for row in rows]

    async def hand_back(self, worker: int | None, crashed: bool) -> list[tuple[int, str]]:
        moved = await self.nodes.hand_back(worker, crashed)
        if self.hints:
            await self._hints.moved(moved)
        return moved

    async def fail(self, claim: Claim, error: str, retry_at: str | None) -> list[tuple[int, Estado]]:
        """For a worker this node stopped: its claim is known by (this node,
        worker, fecha_inicio), which a later claim of that worker replaces."""
        params = {
            "ids": list(claim.ids),
            "nodo": self.nodo,
            "worker": claim.worker,
            "at": claim.at,
            "error": storable_text(error),
            "retry_at": retry_at,
        }
        async with self._main.use() as conn:
            rows = await (await conn.execute(sql.FAIL_STOPPED, params)).fetchall()
        failed = tuple(i for i, estado in rows if estado == Estado.FALLIDO.value)
        if failed and self.hints:
            await self._hints.send(done_hint(failed))
        return sorted((i, Estado(estado)) for i, estado in rows)

    async def live_nodes(self) -> list[dict[str, Any]]:
        async with self._commands.use() as conn:  # it reads `pedidos` too: it may be slow
            rows = await (await conn.execute(sql.LIVE_NODES)).fetchall()
        return [
            {"nodo": name, "workers": workers, "conexiones": conns, "en proceso": held, "visto": iso(seen)}
            for name, workers, conns, seen, held in rows
        ]

    def worker_opener(self) -> PgOpener:
        return PgOpener(self.url, self.nodes.nodo, self.nodes.token, self.hints, self.nodes.shared)

    def _handed_back(self, moved: list[tuple[int, str]]) -> None:
        self._on_handed_back(moved)
        if self.hints:
            self._hints.soon(self._hints.moved(moved))
