"""The order table in SQLite: every line of SQL of this backend lives here.

One `Store` is one connection; each thread or process that touches the
database opens its own. Writes go through `transaction()`, which takes the
shared write lock (a `multiprocessing.Lock`, lock.py) when one is given, so the
writer process and the workers hand the database to each other through a
semaphore instead of SQLite's sleep-and-retry busy handler.

A worker's `Store` is its `WorkerStore` (storage/base.py); what changes an
order once a worker takes it (claim, finish, fail, release, retry) is in
attempts.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from pedidos.domain import ESTADOS, Estado, NewOrder
from pedidos.storage.base import Receipt
from pedidos.storage.listing import Dialect, listing_query
from pedidos.storage.sqlite.attempts import Attempts
from pedidos.storage.sqlite.rows import (
    COLUMNS,
    EXTRA_COLUMNS,
    SCHEMA,
    due,
    now,
    order_of_row,
    parts,
    products_json,
)

__all__ = ["now", "products_json"]  # defined with the table, used here

# How long a connection waits for one held by a program outside the server
# (the server's own processes share the write lock instead). Tests shorten it.
BUSY_TIMEOUT_MS = int(os.environ.get("PEDIDOS_TEST_BUSY_TIMEOUT_MS") or 5000)
PENDIENTE = Estado.PENDIENTE.value

INSERT = (
    "INSERT INTO pedidos "
    "(cliente, productos, direccion, referencia, estado, fecha_recibido, propietario) VALUES "
)
INSERT_ROW = f"(?, ?, ?, ?, '{PENDIENTE}', ?, ?)"
INSERT_VALUES = INSERT_ROW.count("?")
ROWS_PER_INSERT = 100  # 600 variables: under the 999 of old SQLite builds


class Store(Attempts):
    lease = None  # a server alone: its claims hold as long as it lives (WorkerStore)

    def __init__(
        self,
        path: str,
        write_lock: AbstractContextManager[Any] | None = None,
        synchronous: str = "FULL",
    ) -> None:
        self.path = path
        self._write_lock = write_lock
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            # SQLite's own lower() and LIKE fold ASCII only: `contiene` must find
            # "Juan PÉREZ" from "pérez". str.lower, as PostgreSQL's lower() folds.
            self._conn.create_function(LOWER_FUNCTION, 1, _lower, deterministic=True)
            if not _has_json_functions(self._conn):
                python_json_functions(self._conn)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: in WAL mode NORMAL may lose the last commits on power loss,
            # and an acknowledged order must survive that. See Store's callers
            # for the one place that chooses NORMAL.
            if synchronous not in ("FULL", "NORMAL"):
                raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
        except BaseException:
            self._conn.close()
            raise

    def create_schema(self) -> None:
        """Create the table if needed, and prove that the file is writable."""
        with self.transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            # A write that always happens: an existing table alone would let a
            # read-only file through here and fail every order later.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute(f"PRAGMA user_version = {int(version)}")
            present = {row[1] for row in db.execute("PRAGMA table_info(pedidos)")}
            for name, kind in EXTRA_COLUMNS.items():
                if name not in present:
                    db.execute(f"ALTER TABLE pedidos ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (a failed COMMIT too)."""
        with self._write_lock or nullcontext():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy every commit in the WAL into the database file and sync it,
        holding the write lock: (busy, frames in the WAL, frames copied), as
        SQLite's `wal_checkpoint(FULL)` says."""
        with self._write_lock or nullcontext():
            return self._conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()

    # --- intake (the server's writer process) --------------------------------

    def insert_orders(
        self, orders: Sequence[NewOrder], owners: Sequence[str | None] | None = None
    ) -> list[Receipt]:
        """Store a batch in one transaction: a `Receipt` for each order.

        An order whose `referencia` is already stored (or earlier in the batch)
        is not stored again: the same order (same cliente, productos and
        direccion, from the same owner or an admin) is a `duplicado`, any other
        is `taken`. `owners` (one per order, or None) records who submitted it.

        Rows go in many per statement: the sqlite3 module gives up the
        interpreter lock around every statement, and each time it takes it
        back it may wait for the event loop. SQLite numbers each new row one
        past the largest id (INTEGER PRIMARY KEY), so the rows of one
        statement, inside this write transaction, get consecutive ids ending at
        `lastrowid`. With no deletes, an id is never reused (AUTOINCREMENT
        would only add its bookkeeping table to every insert)."""
        received = now()
        owners = owners or [None] * len(orders)
        # A Receipt, or (row of this batch, duplicado, taken, referencia) until its id is known.
        results: list[Any] = []
        values: list[Any] = []  # the rows' values, one after another
        rows = 0
        with self.transaction() as db:
            known = self._by_referencia(db, {o.referencia for o in orders if o.referencia is not None})
            for (cliente, productos, direccion, referencia), owner in zip(orders, owners, strict=True):
                if referencia is not None:
                    if referencia in known:
                        order_id, estado, stored_owner, content = known[referencia]
                        same_owner = owner is None or owner == stored_owner  # None: an admin
                        taken = not (same_owner and content == (cliente, tuple(productos), direccion))
                        # Taken: say nothing of the other order (its id stays out of the reply).
                        shown = referencia if taken else None
                        if order_id < 0:  # earlier in this batch: its id is not known yet
                            results.append((-order_id - 1, True, taken, shown))
                        else:
                            results.append(Receipt(order_id, estado, True, taken, shown))
                        continue
                    content = (cliente, tuple(productos), direccion)
                    known[referencia] = (-rows - 1, PENDIENTE, owner, content)
                values += (cliente, products_json(productos), direccion, referencia, received, owner)
                results.append((rows, False, False, None))
                rows += 1
            ids: list[int] = []
            step = ROWS_PER_INSERT * INSERT_VALUES
            for i in range(0, len(values), step):
                part = values[i : i + step]
                n = len(part) // INSERT_VALUES
                last = db.execute(INSERT + ", ".join([INSERT_ROW] * n), part).lastrowid
                ids += range(last - n + 1, last + 1)
        return [r if type(r) is Receipt else Receipt(ids[r[0]], PENDIENTE, *r[1:]) for r in results]

    @staticmethod
    def _by_referencia(db: sqlite3.Connection, refs: set[str]) -> dict[str, tuple[Any, ...]]:
        """referencia -> (id, estado, owner, (cliente, productos, direccion)) of stored orders."""
        found: dict[str, tuple[Any, ...]] = {}
        for part in parts(list(refs)):
            marks = ",".join("?" * len(part))
            for ref, order_id, estado, owner, cliente, productos, direccion in db.execute(
                "SELECT referencia, id, estado, propietario, cliente, productos, direccion "
                f"FROM pedidos WHERE referencia IN ({marks})",
                part,
            ):
                found[ref] = (order_id, estado, owner, (cliente, tuple(json.loads(productos)), direccion))
        return found

    def cancel(self, order_id: int, owner: str | None = None) -> tuple[dict[str, Any] | None, bool]:
        """Cancel a pending order: (the order as it now stands, whether it was cancelled).
        With `owner`, only an order of that owner is seen."""
        with self.transaction() as db:
            order = self._get(db, order_id, owner)
            if order is None or order["estado"] != PENDIENTE:
                return order, False
            db.execute(
                "UPDATE pedidos SET estado = ?, reintentar_despues = NULL WHERE id = ?",
                (Estado.CANCELADO.value, order_id),
            )
            order["estado"] = Estado.CANCELADO.value
            order["reintentar_despues"] = None  # no try to wait for any more
            return order, True

    # --- reads ---------------------------------------------------------------

    def get(self, order_id: int, owner: str | None = None) -> dict[str, Any] | None:
        """The order, or None; with `owner`, only an order of that owner."""
        return self._get(self._conn, order_id, owner)

    @staticmethod
    def _get(db: sqlite3.Connection, order_id: int, owner: str | None = None) -> dict[str, Any] | None:
        if owner is None:
            row = db.execute(f"SELECT {COLUMNS} FROM pedidos WHERE id = ?", (order_id,)).fetchone()
        else:
            row = db.execute(
                f"SELECT {COLUMNS} FROM pedidos WHERE id = ? AND propietario = ?", (order_id, owner)
            ).fetchone()
        return order_of_row(row) if row else None

    def list_orders(
        self,
        estado: str | None,
        cliente: str | None,
        desde_id: int,
        limite: int,
        contiene: str | None = None,
        orden: str = "asc",
    ) -> list[dict[str, Any]]:
        """Up to `limite` orders after `desde_id`: ids above it, oldest first
        (`orden` "asc"), or below it, newest first ("desc"; 0 means from the
        newest). `contiene` is a case-insensitive substring of `cliente`."""
        query, params = listing_query(DIALECT, COLUMNS, estado, cliente, desde_id, limite, contiene, orden)
        rows = self._conn.execute(query, params).fetchall()
        return [order_of_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ESTADOS, 0)
        for estado, n in self._conn.execute("SELECT estado, COUNT(*) FROM pedidos GROUP BY estado"):
            counts[estado] = n
        return counts

    def pending_ids(self, from_id: int, limit: int) -> list[int]:
        """Ids of pending orders from `from_id` on, oldest first, leaving out
        those whose retry is not due yet."""
        rows = self._conn.execute(
            f"SELECT id FROM pedidos WHERE estado = ? AND id >= ? AND {due()} ORDER BY id LIMIT ?",
            (PENDIENTE, from_id, now(), limit),
        )
        return [row[0] for row in rows]

    def get_by_referencia(self, referencia: str, owner: str | None = None) -> dict[str, Any] | None:
        """The order with that `referencia`, or None; with `owner`, only one of that owner."""
        sql, params = f"SELECT {COLUMNS} FROM pedidos WHERE referencia = ?", [referencia]
        if owner is not None:
            sql += " AND propietario = ?"
            params.append(owner)
        row = self._conn.execute(sql, params).fetchone()
        return order_of_row(row) if row else None


LOWER_FUNCTION = "pedidos_minusculas"
# instr over the registered Python lower(): SQLite's own lower() folds only ASCII.
DIALECT = Dialect("?", f"instr({LOWER_FUNCTION}(cliente), ?) > 0")


def _lower(text: str | None) -> str | None:
    return None if text is None else text.lower()


def _has_json_functions(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT json_valid('1'), json_quote('1')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def python_json_functions(conn: sqlite3.Connection) -> None:
    """The two JSON functions that reading `resultado` uses (rows.RESULTADO),
    in Python, for a SQLite built without its own (optional before 3.38)."""
    conn.create_function("json_valid", 1, _json_valid, deterministic=True)
    conn.create_function("json_quote", 1, _json_quote, deterministic=True)


def _json_valid(text: str) -> int:
    try:
        json.loads(text, parse_constant=_not_json)  # NaN and Infinity are Python's, not JSON
    except ValueError:  # JSONDecodeError, and text json cannot take
        return 0
    return 1


def _not_json(name: str) -> None:
    raise ValueError(name)


def _json_quote(text: str | None) -> str:
    return json.dumps(text, ensure_ascii=False)
