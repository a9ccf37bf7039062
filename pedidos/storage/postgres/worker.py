"""A worker process's side of PostgreSQL: claim, finish, fail, synchronously.

A worker opens its own connection (the opener that crosses the process
boundary carries only the connection string, the node's name and its token).
`claim` takes, in one statement, the still-pending orders of a chunk while the
node's lease holds; it remembers the claim token (`intento`) of each order, and
`finish` writes `listo` (and `fail` a failed attempt) only where that token
still stands. A lost connection
is reopened on the next call; the caller retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pedidos.domain import Estado
from pedidos.storage.base import Claim, Finished, ServerGone
from pedidos.storage.lease import NodeLease
from pedidos.storage.postgres import sql
from pedidos.storage.postgres.hints import hint
from pedidos.storage.postgres.link import DatabaseUnavailable, one_line
from pedidos.storage.postgres.rows import iso, order, storable_text
from pedidos.storage.postgres.settings import conninfo

logger = logging.getLogger(__name__)

UNCLAIM_RETRY_S = 0.5


class PgWorkerStore:
    def __init__(
        self, url: str, nodo: str, token: str, server_pid: int = 0, lease: NodeLease | None = None
    ) -> None:
        self.lease = lease  # until when the node's claims are its own (lease.py)
        self._server_pid = server_pid
        self._info = conninfo(url)
        self._nodo = nodo
        self._token = token
        self._conn: psycopg.Connection[Any] | None = None
        # The claim token (`intento`) of each order this worker holds: what
        # `finish` must still find on the row.
        self._tokens: dict[int, int] = {}
        # The last finish lost its answer: it may have committed (sql.FINISHED).
        self._finish_unsure = False
        self.hint_done = True  # NOTIFY the ids this worker finishes (off: poll-only mode)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            try:
                self._conn = psycopg.connect(self._info, autocommit=True)
                self._conn.execute("SET synchronous_commit = on")
            except psycopg.OperationalError as exc:
                self.close()
                raise DatabaseUnavailable(one_line(exc)) from None
        return self._conn

    def claim(self, ids: Sequence[int], worker: int) -> Claim:
        params = {"ids": list(ids), "worker": worker, "nodo": self._nodo, "token": self._token}
        # A connection kept from an earlier chunk may have been dropped while
        # idle (PostgreSQL restarted, an administrator's pg_terminate_backend):
        # that is found only on use, and is no reason to refuse the chunk. One
        # more try, on a new connection; never more (a statement that fails
        # every time would loop here for ever, the worker deaf to its stop).
        tries = 2 if self._conn is not None and not self._conn.closed and not self._conn.broken else 1
        while True:
            tries -= 1
            conn = self._connection()
            try:
                rows = conn.execute(sql.CLAIM, params).fetchall()
                break
            except psycopg.OperationalError as exc:
                # The claim may have committed all the same: rows `en proceso`
                # here that no one would ever finish or hand back (this node is
                # alive). Put them back before taking anything else.
                self.close()
                self._unclaim(worker)
                if not tries:
                    raise DatabaseUnavailable(one_line(exc)) from None
        rows.sort()
        self._tokens.update((order_id, token) for order_id, token, _ in rows)
        return Claim(worker, iso(rows[0][2]) if rows else "", tuple(r[0] for r in rows))

    def _unclaim(self, worker: int) -> None:
        """Put back what this worker holds (it holds nothing between chunks),
        retrying until the database answers or the server is gone."""
        while True:
            try:
                conn = self._connection()
                back = conn.execute(sql.UNCLAIM, (self._nodo, worker)).fetchall()
                if back:
                    logger.warning("put back %d orders that a claim without an answer had taken", len(back))
                    conn.execute(hint(sql.NEW_CHANNEL))
                return
            except (psycopg.OperationalError, DatabaseUnavailable):
                self.close()
                if self._server_pid and os.getppid() != self._server_pid:
                    raise ServerGone from None
                time.sleep(UNCLAIM_RETRY_S)

    def finish(self, claim: Claim, resultados: Mapping[int, str] | None = None) -> Finished:
        """(fecha_fin, the ids now `listo`): those whose claim still stood,
        each with its `resultado` (JSON text; null when missing)."""
        held = [i for i in claim.ids if i in self._tokens]  # never an id it did not claim
        if not held:
            return Finished(None, ())
        results = [None if resultados is None else resultados.get(i) for i in held]
        conn = self._connection()
        tokens = [self._tokens[i] for i in held]
        try:
            rows = conn.execute(sql.FINISH, (held, tokens, results)).fetchall()
            if self._finish_unsure:
                rows = conn.execute(sql.FINISHED, (held, tokens)).fetchall()
        except psycopg.OperationalError as exc:
            self.close()
            self._finish_unsure = True
            raise DatabaseUnavailable(one_line(exc)) from None
        self._finish_unsure = False
        done = tuple(sorted(r[0] for r in rows))
        self._hint_after_commit(done)
        for order_id in held:
            del self._tokens[order_id]
        if len(done) < len(claim.ids):
            lost = sorted(set(claim.ids) - set(done))
            logger.warning("orders %s were taken away from this worker; its result is dropped", lost)
        return Finished(iso(rows[0][1]) if rows else None, done)

    def fail(self, claim: Claim, error: str, retry_at: str | None) -> list[tuple[int, Estado]]:
        """A failed attempt of the orders whose claim still stands: back to
        `pendiente` until `retry_at`, or `fallido` (None). (id, new estado)."""
        held = [i for i in claim.ids if i in self._tokens]
        if not held:
            return []
        conn = self._connection()
        params = {
            "ids": held,
            "tokens": [self._tokens[i] for i in held],
            "error": storable_text(error),
            "retry_at": retry_at,
        }
        try:
            rows = conn.execute(sql.FAIL, params).fetchall()
        except psycopg.OperationalError as exc:
            self.close()
            raise DatabaseUnavailable(one_line(exc)) from None
        self._hint_after_commit(tuple(sorted(i for i, estado in rows if estado == Estado.FALLIDO)))
        for order_id in held:
            del self._tokens[order_id]
        return sorted((i, Estado(estado)) for i, estado in rows)

    def get(self, order_id: int, owner: str | None = None) -> dict[str, Any] | None:
        conn = self._connection()
        try:
            if owner is None:
                row = conn.execute(sql.GET, (order_id,)).fetchone()
            else:
                row = conn.execute(sql.GET_OWNED, (order_id, owner)).fetchone()
        except psycopg.OperationalError as exc:
            self.close()
            raise DatabaseUnavailable(one_line(exc)) from None
        return order(row) if row else None

    def _hint_after_commit(self, done: tuple[int, ...]) -> None:
        """The hint for what a statement just committed. Its loss costs the
        waiters latency only (they poll): the outcome is recorded, and a
        failure here must not make the worker write it again (a second FINISH
        finds nothing `en proceso` and looks like a claim taken away)."""
        try:
            if self._conn is not None:
                self._hint_done(self._conn, done)
        except psycopg.Error as exc:
            self.close()
            logger.debug("could not send a hint: %s", one_line(exc))

    def _hint_done(self, conn: psycopg.Connection[Any], done: tuple[int, ...]) -> None:
        """NOTIFY the nodes waiting on these ids (now final)."""
        if done and self.hint_done:
            payload = ",".join(map(str, done)) if len(done) <= sql.MAX_PAYLOAD_IDS else ""
            conn.execute(hint(sql.DONE_CHANNEL, payload))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class PgOpener:
    """Picklable: what a worker process needs to open its own `PgWorkerStore`."""

    url: str
    nodo: str
    token: str
    hint: bool = True
    lease: NodeLease | None = None  # shared memory: crosses only as a worker is spawned

    def __call__(self, worker: int = 0, server_pid: int = 0) -> PgWorkerStore:
        store = PgWorkerStore(self.url, self.nodo, self.token, server_pid, self.lease)
        store.hint_done = self.hint
        return store
