"""Connections to PostgreSQL that outlive a database restart.

A `Link` is one `AsyncConnection`. When it breaks, the call that saw it fails
with `DatabaseUnavailable` at once (the server then refuses new orders with
`servidor_ocupado` rather than making anyone wait), and a task reconnects in
the background with backoff; a statement past its time is cut (settings.py).
`Health`, shared by every link of a backend, logs each transition once:
unreachable, reachable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus

from pedidos.logsetup import Repeating
from pedidos.storage.base import StorageBusy, StorageUnavailable
from pedidos.storage.postgres.settings import COMMAND_TIMEOUT_S

logger = logging.getLogger(__name__)
cancelled = Repeating(logger)  # a slow statement is often slow for every request alike

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0
REPLACE_S = 2.0  # a request waits at most this for a connection to replace one found closed
# While the database is seen away, a new order waits at most this for a fresh
# connection (`Link.revive`), and a failed one is not tried again for LOOK_GAP_S.
LOOK_S = 0.25
LOOK_GAP_S = BACKOFF_FIRST_S


class DatabaseUnavailable(StorageUnavailable):
    """PostgreSQL cannot be reached now; nothing was acknowledged, and nothing
    changed unless `maybe_done` (the connection broke during the statement)."""


class StatementCancelled(DatabaseUnavailable, StorageBusy):
    """PostgreSQL cancelled the statement (past `statement_timeout`, or an
    operator's `pg_cancel_backend`): its transaction was rolled back, nothing
    of that statement changed, and the connection is fine."""


def _closed_while_idle(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection has something to read: the server's farewell
    and EOF (a restart, `pg_terminate_backend`), or rarely a parameter change,
    which costs a needless reconnection. One `poll` per use (not `select`,
    which refuses descriptors past 1024: a node with many clients has them)."""
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def _cut(conn: psycopg.AsyncConnection[Any], expired: list[bool]) -> None:
    """End a connection that stopped answering. Its socket is shut down, not
    closed: the read waiting on the descriptor sees EOF and psycopg fails the
    statement with `OperationalError` at once. (Cancelling the awaiting task
    instead makes psycopg send a cancel request and wait for the query, 10 s
    more through the same stalled path.)"""
    expired.append(True)
    with (
        contextlib.suppress(OSError, ValueError, psycopg.Error),
        socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock,
    ):
        sock.shutdown(socket.SHUT_RDWR)


async def _end_transaction(conn: psycopg.AsyncConnection[Any]) -> None:
    """Roll back what a failed or cancelled statement left open. A text that
    holds its own `BEGIN; ...; COMMIT` (a hint) and stops halfway leaves the
    session in a transaction, and every later statement of the link would
    fail (or join it)."""
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Health:
    """Whether the database answers, with a log line at each change."""

    def __init__(self) -> None:
        self.up = True
        self._since = time.monotonic()
        self._server_started: object = None  # pg_postmaster_start_time() as last seen

    def failed(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            self._since = time.monotonic()
            logger.error(
                "PostgreSQL unreachable (%s): new orders are refused until it is back", one_line(exc)
            )

    def ok(self) -> None:
        if not self.up:
            self.up = True
            logger.warning("PostgreSQL reachable again after %.1f s", time.monotonic() - self._since)
            self._since = time.monotonic()

    def server_seen(self, started: object) -> None:
        """What a new connection found as the server's start time. A change is
        a restart, perhaps unseen: the database counts as back just now
        (`up_for`), so that no reap goes out before the other nodes had a lease
        to renew. A connection closed while idle (a proxy's or PostgreSQL's
        `idle_session_timeout`, `pg_terminate_backend`) is no restart: counted
        as one, each put off every reap for as long as they came."""
        if self._server_started is not None and started != self._server_started:
            self.ok()
            self._since = time.monotonic()
        self._server_started = started

    def up_for(self) -> float:
        """Seconds since the database was last seen coming back (0 while down)."""
        return time.monotonic() - self._since if self.up else 0.0


class Link:
    """One connection, in autocommit mode, re-established after it breaks."""

    def __init__(
        self,
        info: str,
        health: Health,
        on_connect: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
    ) -> None:
        self._info = info
        self._health = health
        self._on_connect = on_connect
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        self._looked = 0.0  # when `revive` last failed

    async def open(self) -> None:
        """Connect now; errors propagate (a node cannot start without its database)."""
        self._conn = await self._connect()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self._info, autocommit=True)
        try:
            if self._on_connect is not None:
                await self._on_connect(conn)
            cur = await conn.execute("SELECT pg_postmaster_start_time()")
            row = await cur.fetchone()
            self._health.server_seen(row[0] if row else None)
        except BaseException:
            await conn.close()
            raise
        return conn

    @contextlib.asynccontextmanager
    async def use(
        self, timeout: float | None = COMMAND_TIMEOUT_S
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection, one user at a time; a lost connection becomes
        `DatabaseUnavailable` and starts the reconnection. Past `timeout`
        seconds (None: no limit, for the schema's DDL) the connection is cut,
        so that the statement waiting on it fails at once."""
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.closed and _closed_while_idle(conn):
                conn = await self._replace(conn)
            if conn is None or conn.closed:
                # A connection closed by a path that did not go through `_lost`
                # (a failed ROLLBACK after a cancel): drop it, or no reconnection
                # would ever replace it.
                self._drop()
                self._start_reconnecting()
                raise DatabaseUnavailable("PostgreSQL is unreachable")
            # A user cancelled inside its own BEGIN ... COMMIT (a client that
            # left while its hint was sent) left that transaction open.
            await _end_transaction(conn)
            expired: list[bool] = []
            deadline = None
            if timeout is not None:
                deadline = asyncio.get_running_loop().call_later(timeout, _cut, conn, expired)
            try:
                yield conn
            except errors.QueryCanceled as exc:
                await _end_transaction(conn)
                cancelled.warning(
                    "PostgreSQL cancelled a statement: %s (a lock held on the tables or rows it "
                    "needed, or a slow listing?); it was rolled back, and what it served (a "
                    "request, or the node's own work) was refused or will be tried again",
                    one_line(exc),
                )
                raise StatementCancelled(one_line(exc)) from exc
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) and (conn.broken or conn.closed):
                    why = f"no answer from PostgreSQL within {timeout:g} s" if expired else one_line(exc)
                    # The statement may have reached the database and its
                    # commit with it: only the answer is known to be lost.
                    lost = DatabaseUnavailable(why, maybe_done=True)
                    self._lost(lost)
                    raise lost from exc
                await _end_transaction(conn)
                raise
            finally:
                if deadline is not None:
                    deadline.cancel()

    async def run(
        self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]], timeout: float
    ) -> Any:
        """`await work(conn)` within `timeout` seconds, else `DatabaseUnavailable`
        and a new connection (see `use`)."""
        async with self.use(timeout) as conn:
            return await work(conn)

    async def _replace(self, conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncConnection[Any] | None:
        """A fresh connection for one the server closed while it sat idle (a
        restart, an idle timeout): nothing was sent on it, so the statement may
        go on the new one, and an idle node's first order after a restart is
        not refused.
        One try, given up to `REPLACE_S` (a far database's handshake): a
        database that refuses is away, and the request is answered at once
        (tries again and again for 2 s held the first requests of every
        outage that long); the next ones look again (`revive`)."""
        with contextlib.suppress(Exception):
            conn.pgconn.finish()
        self._conn = None
        try:
            self._conn = await asyncio.wait_for(self._connect(), REPLACE_S)
        except (psycopg.OperationalError, OSError, asyncio.TimeoutError) as exc:
            self._health.failed(exc)
            return None
        return self._conn

    async def revive(self) -> bool:
        """Whether a fresh connection came up within `LOOK_S`; it then replaces
        this link's. For new orders while the database is seen away, or this
        link's connection is being re-established: the links' reconnections
        back off (up to a second), so without a look of its own an order right
        after the database is back would be refused for what is left of that
        backoff. A connection that looks intact is
        not trusted then: a half-open one would hold the order for
        COMMAND_TIMEOUT_S. One look per LOOK_GAP_S at most, whatever the load."""
        async with self._lock:
            if self._closed or time.monotonic() - self._looked < LOOK_GAP_S:
                return False  # stopping, or just seen away
            try:
                conn = await asyncio.wait_for(self._connect(), LOOK_S)
            except (psycopg.Error, OSError, asyncio.TimeoutError):
                # Only ever a verdict for this one order: a look that marked the
                # database away (a far database's handshake past LOOK_S, or
                # "too many clients") after the other links had come back left
                # nothing to mark it back, and the node refused orders for good.
                self._looked = time.monotonic()
                return False
            self._drop()
            self._conn = conn
            self._health.ok()
            return True

    @property
    def down(self) -> bool:
        """No connection to use: it was lost and is being re-established."""
        return self._conn is None or self._conn.closed

    def _lost(self, exc: BaseException) -> None:
        self._health.failed(exc)
        self._drop()
        self._start_reconnecting()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a broken connection only frees its socket; no I/O.
            with contextlib.suppress(Exception):
                conn.pgconn.finish()

    def _start_reconnecting(self) -> None:
        if self._closed or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST_S
        while not self._closed and self.down:
            try:
                conn = await self._connect()
            except (psycopg.OperationalError, OSError) as exc:
                self._health.failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if self._closed or not self.down:  # or `revive` came first
                await conn.close()
                return
            self._conn = conn
            self._health.ok()
            return

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reconnecting
        async with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
                self._conn = None


class Links:
    """A few links for clients' commands, which may be slow (a listing over
    millions of rows, a wait for a lock): each command takes whichever link is
    free first, so that a slow one holds up its own link, and the quick ones
    share the others instead of queueing behind it."""

    def __init__(self, links: list[Link]) -> None:
        self._links = links
        self._free: asyncio.Queue[Link] = asyncio.Queue()
        for link in links:
            self._free.put_nowait(link)

    async def open(self) -> None:
        for link in self._links:
            await link.open()

    @contextlib.asynccontextmanager
    async def use(
        self, timeout: float | None = COMMAND_TIMEOUT_S
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """See `Link.use`; the wait for a free link is not part of `timeout`."""
        link = await self._free.get()
        try:
            async with link.use(timeout) as conn:
                yield conn
        finally:
            self._free.put_nowait(link)

    async def close(self) -> None:
        for link in self._links:
            await link.close()
