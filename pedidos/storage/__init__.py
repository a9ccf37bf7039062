"""Where orders live: the storage interface and its backends.

`base` is the interface (`Storage` for the server, `WorkerStore` for a worker
process) that the server, the service and processing use; `open_storage`
below picks the backend from `--db`. `sqlite/` is the default backend, with
its writer process and its write lock, which nothing outside it knows of.
Every backend keeps the table of the contract (section 7) and the promise that
an order is durable before its acknowledgement. Imports only the domain and
the standard library; never the server, processing or the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pedidos.storage.base import Ack, Storage, StorageError, plain_receipt

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_storage(
    db: str,
    *,
    ack: Ack = plain_receipt,
    on_stored: Callable[[tuple[int, ...]], None] | None = None,
    log_level: int = logging.INFO,
) -> Storage:
    """The backend that `db` (the `--db` value) names, not started yet: a
    PostgreSQL URL, or else the path of a SQLite file. Raises `StorageError`."""
    if db.startswith(POSTGRES_SCHEMES):
        # The PostgreSQL backend plugs in here (storage/postgres/).
        raise StorageError("PostgreSQL is not available yet in this version; use a SQLite file path")
    from pedidos.storage.sqlite.backend import SqliteStorage

    return SqliteStorage(db, ack=ack, on_stored=on_stored, log_level=log_level)
