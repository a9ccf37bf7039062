"""Where orders live: the storage interface and its backends.

`base` is the interface (`Storage` for the server, `WorkerStore` for a worker
process) that the server, the service and processing use; `open_storage`
below picks the backend from `--db`; `intake` is group commit's gathering
half and `listing` `listar` as one SELECT, which any backend can reuse;
`lease` is a node's lease as its worker processes see it (PostgreSQL).
`sqlite/` is the default backend, with its writer process and its write lock,
which nothing outside it knows of; `postgres/` is the one for many servers
sharing a database.
Every backend keeps the table of the contract (section 7) and the promise that
an order is durable before its acknowledgement. Imports only the domain,
`pedidos.background`, the stdlib-only helpers (`logsetup`, `stopsignals`,
`wording`, `extras`) and the standard library; never the server, processing
or the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pedidos.domain import DEFAULT_LEASE_S
from pedidos.extras import install_hint
from pedidos.storage.base import Ack, Storage, StorageError, plain_receipt

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
POSTGRES_INSTALL = install_hint("postgres")


def is_postgres(db: str) -> bool:
    """True when `--db` names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(POSTGRES_SCHEMES)


def shown_db(db: str) -> str:
    """`--db` as a log may show it: a PostgreSQL URL without its password."""
    if not is_postgres(db):
        return db
    try:
        from pedidos.storage.postgres.settings import shown
    except ImportError:
        return db.split("@")[-1]
    return shown(db)


def postgres_driver_missing() -> bool:
    """True when psycopg (the `postgres` extra) cannot be imported."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return True
    return False


@dataclass
class Cluster:
    """How this server joins the others on a shared database (PostgreSQL;
    section 9 of the contract), and what it hears of their work."""

    nodo: str  # this server's name among them, unique among the live ones
    lease: float = DEFAULT_LEASE_S  # seconds without renewal before a node is declared dead
    hints: bool = True  # LISTEN/NOTIFY wake-ups; False: polling only
    # Another node may have received orders: look for pending ones.
    on_new: Callable[[], None] = lambda: None
    # Orders another node changed (None: any may have): wake whoever waits.
    on_done: Callable[[tuple[int, ...] | None], None] = lambda ids: None
    # Orders of dead nodes this node handed back: (id, new estado) each.
    on_handed_back: Callable[[list[tuple[int, str]]], None] = lambda moved: None
    # (workers alive, open connections) of this node, published with its lease.
    figures: Callable[[], tuple[int, int]] = field(default=lambda: (0, 0))
    # Its processing options, which every live node's must equal ({option as
    # typed: value as typed, None when not given, True for a flag}); None: not checked.
    ajustes: dict[str, Any] | None = None


def open_storage(
    db: str,
    *,
    ack: Ack = plain_receipt,
    on_stored: Callable[[tuple[int, ...]], None] | None = None,
    on_commit: Callable[[float], None] | None = None,
    log_level: int = logging.INFO,
    log_format: str = "text",
    cluster: Cluster | None = None,
) -> Storage:
    """The backend that `db` (the `--db` value) names, not started yet: a
    PostgreSQL URL, or else the path of a SQLite file. Raises `StorageError`.
    `on_stored(ids)` hears of new orders committed, `on_commit(seconds)` of
    each group commit's time."""
    if is_postgres(db):
        try:
            from pedidos.storage.postgres.backend import PostgresStorage
        except ImportError:
            raise StorageError(f"PostgreSQL needs its driver: {POSTGRES_INSTALL}") from None
        cluster = cluster or Cluster(nodo="pedidos")
        return PostgresStorage(
            db,
            cluster.nodo,
            ack=ack,
            on_stored=on_stored,
            on_commit=on_commit,
            lease=cluster.lease,
            hints=cluster.hints,
            on_new=cluster.on_new,
            on_done=cluster.on_done,
            on_handed_back=cluster.on_handed_back,
            figures=cluster.figures,
            ajustes=cluster.ajustes,
        )
    from pedidos.storage.sqlite.backend import SqliteStorage

    return SqliteStorage(
        db, ack=ack, on_stored=on_stored, on_commit=on_commit, log_level=log_level, log_format=log_format
    )


def read_all_orders(db: str, page: int = 1000) -> list[dict[str, Any]]:
    """Every stored order, oldest first, read through the interface and
    handing nothing back: for tools that audit a database a server left.
    Blocking (it runs its own event loop)."""
    import asyncio  # here: a worker process imports this package and runs no loop

    async def read() -> list[dict[str, Any]]:
        storage = open_storage(db)
        await storage.start(recover=False)
        try:
            orders: list[dict[str, Any]] = []
            while batch := await storage.list_orders(None, None, orders[-1]["id"] if orders else 0, page):
                orders += batch
            return orders
        finally:
            await storage.stop()

    return asyncio.run(read())
