"""The order table: every line of SQL in the project lives here.

One `Store` is one connection; each thread or process that touches the
database opens its own. Writes go through `transaction()`, which takes the
shared write lock (a `multiprocessing.Lock`) when one is given, so the server's
writer process and the workers hand the database to each other through a
semaphore instead of SQLite's sleep-and-retry busy handler.

A PostgreSQL store would keep these method names; `claim` would become a
`SELECT ... FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any, NamedTuple

from pedidos.protocol.validation import ESTADOS, NewOrder

MAX_ATTEMPTS = 3  # interrupted attempts before an order is `fallido`
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS pedidos (
    id             INTEGER PRIMARY KEY,
    cliente        TEXT    NOT NULL,
    productos      TEXT    NOT NULL,
    direccion      TEXT    NOT NULL,
    referencia     TEXT    UNIQUE,
    estado         TEXT    NOT NULL,
    fecha_recibido TEXT    NOT NULL,
    fecha_inicio   TEXT,
    fecha_fin      TEXT,
    worker         INTEGER,
    intentos       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pedidos_estado ON pedidos (estado, id);
CREATE INDEX IF NOT EXISTS pedidos_cliente ON pedidos (cliente, id);
"""

# Columns beyond the contract's, added to older databases as they open.
EXTRA_COLUMNS = {
    "propietario": "TEXT",  # digest of the access token that submitted the order (see auth.py)
}

COLUMNS = (
    "id, cliente, productos, direccion, referencia, estado, fecha_recibido, "
    "fecha_inicio, fecha_fin, worker, intentos"
)
INSERT = (
    "INSERT INTO pedidos "
    "(id, cliente, productos, direccion, referencia, estado, fecha_recibido, propietario) VALUES "
)
INSERT_ROW = "(?, ?, ?, ?, ?, 'pendiente', ?, ?)"
INSERT_VALUES = INSERT_ROW.count("?")
ROWS_PER_INSERT = 100  # 700 variables: under the 999 of old SQLite builds
MAX_PARAMS = 500  # ids per IN (...) list, well under SQLite's variable limit


class Stored(NamedTuple):
    """What storing one new order came to."""

    id: int
    estado: str
    duplicado: bool
    # Its referencia is stored for a different order (other content, or
    # another owner's): refused with `referencia_en_uso`, nothing stored.
    taken: bool = False


# json.dumps with an argument builds a new encoder on every call.
_encode_json = json.JSONEncoder(ensure_ascii=False).encode
# What JSON must escape in a string (ensure_ascii=False): anything else is copied.
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def products_json(productos: Sequence[str]) -> str:
    """`productos` as JSON text, exactly as `json.dumps(productos, ensure_ascii=False)`."""
    if productos and _NEEDS_ESCAPE.search("".join(productos)) is None:
        return '["' + '", "'.join(productos) + '"]'
    return _encode_json(productos)


def now() -> str:
    """ISO 8601 UTC with microseconds and offset, as the contract writes times."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Store:
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

    # --- intake (the server's writer process) --------------------------------

    def insert_orders(
        self, orders: Sequence[NewOrder], owners: Sequence[str | None] | None = None
    ) -> list[Stored]:
        """Store a batch in one transaction: a `Stored` for each order.

        An order whose `referencia` is already stored (or earlier in the batch)
        is not stored again: the same order (same cliente, productos and
        direccion, from the same owner or an admin) is a `duplicado`, any other
        is `taken`. `owners` (one per order, or None) records who submitted it.

        Rows go in with explicit ids, many per statement: the sqlite3 module
        gives up the interpreter lock around every statement, and each time it
        takes it back it may wait for the event loop."""
        received = now()
        owners = owners or [None] * len(orders)
        results: list[Stored] = []
        values: list[Any] = []  # the rows' values, one after another
        with self.transaction() as db:
            known = self._by_referencia(db, {o.referencia for o in orders if o.referencia is not None})
            next_id = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM pedidos").fetchone()[0]
            for (cliente, productos, direccion, referencia), owner in zip(orders, owners, strict=True):
                if referencia is not None:
                    if referencia in known:
                        order_id, estado, stored_owner, content = known[referencia]
                        same_owner = owner is None or owner == stored_owner  # None: an admin
                        same = same_owner and content == (cliente, tuple(productos), direccion)
                        results.append(Stored(order_id, estado, True, not same))
                        continue
                    known[referencia] = (next_id, "pendiente", owner, (cliente, tuple(productos), direccion))
                values += (next_id, cliente, products_json(productos), direccion, referencia, received, owner)
                results.append(Stored(next_id, "pendiente", False))
                next_id += 1
            step = ROWS_PER_INSERT * INSERT_VALUES
            for i in range(0, len(values), step):
                part = values[i : i + step]
                db.execute(INSERT + ", ".join([INSERT_ROW] * (len(part) // INSERT_VALUES)), part)
        return results

    @staticmethod
    def _by_referencia(db: sqlite3.Connection, refs: set[str]) -> dict[str, tuple[Any, ...]]:
        """referencia -> (id, estado, owner, (cliente, productos, direccion)) of stored orders."""
        found: dict[str, tuple[Any, ...]] = {}
        for part in _parts(list(refs)):
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
            if order is None or order["estado"] != "pendiente":
                return order, False
            db.execute("UPDATE pedidos SET estado = 'cancelado' WHERE id = ?", (order_id,))
            order["estado"] = "cancelado"
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
        return _order(row) if row else None

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
        newest_first = orden == "desc"
        where: list[str] = []
        params: list[Any] = []
        if not newest_first or desde_id > 0:
            where.append("id < ?" if newest_first else "id > ?")
            params.append(desde_id)
        if estado is not None:
            where.append("estado = ?")
            params.append(estado)
        if cliente is not None:
            where.append("cliente = ?")
            params.append(cliente)
        if contiene is not None:
            # A scan in id order that stops at `limite` matches: no index serves
            # a substring, and the cheap conditions above are tested first. instr,
            # not LIKE: '%' and '_' in the text are plain characters. PostgreSQL:
            # strpos(lower(cliente), lower($1)) > 0, the same folding.
            where.append(f"instr({LOWER_FUNCTION}(cliente), ?) > 0")
            params.append(_lower(contiene))
        rows = self._conn.execute(
            f"SELECT {COLUMNS} FROM pedidos WHERE {' AND '.join(where) or '1'} "
            f"ORDER BY id {'DESC' if newest_first else ''} LIMIT ?",
            (*params, limite),
        ).fetchall()
        return [_order(row) for row in rows]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ESTADOS, 0)
        for estado, n in self._conn.execute("SELECT estado, COUNT(*) FROM pedidos GROUP BY estado"):
            counts[estado] = n
        return counts

    def pending_ids(self, from_id: int, limit: int) -> list[int]:
        """Ids of pending orders from `from_id` on, oldest first."""
        rows = self._conn.execute(
            "SELECT id FROM pedidos WHERE estado = 'pendiente' AND id >= ? ORDER BY id LIMIT ?",
            (from_id, limit),
        )
        return [row[0] for row in rows]

    # --- processing (the workers) -------------------------------------------

    def claim(self, ids: Sequence[int], worker: int) -> tuple[str, list[int]]:
        """Take the still-pending orders among `ids` for `worker`: (start time, taken ids)."""
        started = now()
        taken: list[int] = []
        with self.transaction() as db:
            for part in _parts(ids):
                marks = ",".join("?" * len(part))
                db.execute(
                    "UPDATE pedidos SET estado = 'en proceso', fecha_inicio = ?, worker = ? "
                    f"WHERE estado = 'pendiente' AND id IN ({marks})",
                    (started, worker, *part),
                )
                taken += [
                    row[0]
                    for row in db.execute(
                        "SELECT id FROM pedidos WHERE estado = 'en proceso' AND worker = ? "
                        f"AND fecha_inicio = ? AND id IN ({marks}) ORDER BY id",
                        (worker, started, *part),
                    )
                ]
        return started, taken

    def finish(self, ids: Sequence[int], worker: int) -> str:
        """Mark the orders that `worker` holds among `ids` as `listo`: the end time."""
        finished = now()
        with self.transaction() as db:
            for part in _parts(ids):
                marks = ",".join("?" * len(part))
                db.execute(
                    "UPDATE pedidos SET estado = 'listo', fecha_fin = ? "
                    f"WHERE estado = 'en proceso' AND worker = ? AND id IN ({marks})",
                    (finished, worker, *part),
                )
        return finished

    def release(self, worker: int | None, count_attempt: bool) -> list[tuple[int, str]]:
        """Hand back the orders in process by `worker` (None: by anyone).

        An attempt ended by a crash counts in `intentos`, and the third such
        attempt makes the order `fallido`; one handed back at a graceful
        shutdown does not count. Returns (id, new estado) for each."""
        where, params = "estado = 'en proceso'", []
        if worker is not None:
            where += " AND worker = ?"
            params.append(worker)
        changed = []
        with self.transaction() as db:
            rows = db.execute(f"SELECT id, intentos FROM pedidos WHERE {where}", params).fetchall()
            for order_id, intentos in rows:
                intentos += 1 if count_attempt else 0
                if intentos >= MAX_ATTEMPTS:
                    db.execute(
                        "UPDATE pedidos SET estado = 'fallido', intentos = ? WHERE id = ?",
                        (intentos, order_id),
                    )
                    changed.append((order_id, "fallido"))
                else:
                    db.execute(
                        "UPDATE pedidos SET estado = 'pendiente', intentos = ?, "
                        "fecha_inicio = NULL, worker = NULL WHERE id = ?",
                        (intentos, order_id),
                    )
                    changed.append((order_id, "pendiente"))
        return changed


LOWER_FUNCTION = "pedidos_minusculas"


def _lower(text: str | None) -> str | None:
    return None if text is None else text.lower()


def _parts(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for i in range(0, len(ids), MAX_PARAMS):
        yield ids[i : i + MAX_PARAMS]


def _order(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": row[0],
        "cliente": row[1],
        "productos": json.loads(row[2]),
        "direccion": row[3],
        "referencia": row[4],
        "estado": row[5],
        "fecha_recibido": row[6],
        "fecha_inicio": row[7],
        "fecha_fin": row[8],
        "worker": row[9],
        "intentos": row[10],
    }
