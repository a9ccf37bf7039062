"""`SqliteStorage`: the storage interface (storage/base.py) on one SQLite file.

Writes go to the writer process (writer.py), where new orders share one
transaction and one fsync; reads go to a few threads, each with its own
connection; each worker process opens its own connection with `SqliteOpener`.
All of them take turns at the file through one `WriteLock` (lock.py), which
this backend creates and releases when a process dies holding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pedidos.domain import Estado, NewOrder
from pedidos.storage.base import Ack, Claim, Recovery, StorageError, plain_receipt
from pedidos.storage.sqlite.files import DatabaseLock, database_error, lock_database, watched_files
from pedidos.storage.sqlite.lock import WriteLock
from pedidos.storage.sqlite.opener import SqliteOpener
from pedidos.storage.sqlite.store import Store
from pedidos.storage.sqlite.writer import STOP_TIMEOUT_S, Writer

logger = logging.getLogger(__name__)

READER_THREADS = 2


class Reader:
    """Reads on a few threads, each with its own connection."""

    def __init__(self, db_path: str, threads: int = READER_THREADS) -> None:
        self._db_path = db_path
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="pedidos-reader")
        self._local = threading.local()
        self._stores: list[Store] = []

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn, args)

    async def open(self) -> None:
        """Open every thread's connection now, while descriptors are plenty: a
        flood of client connections later could leave none for them."""
        barrier = threading.Barrier(self._threads)  # one task per thread
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._pool, self._open, barrier) for _ in range(self._threads))
        )

    def _open(self, barrier: threading.Barrier) -> None:
        self._run(lambda store: None, ())
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store(self._db_path)
            self._stores.append(store)
        return fn(store, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for store in self._stores:
            store.close()


class SqliteStorage:
    """See storage/base.py `Storage` for what each method promises."""

    poll_s = None  # this server is the only one that changes the file
    lease = None  # nor does any other server take its orders

    def __init__(
        self,
        path: str,
        *,
        ack: Ack = plain_receipt,
        on_stored: Callable[[tuple[int, ...]], None] | None = None,
        on_commit: Callable[[float], None] | None = None,
        log_level: int = logging.INFO,
        log_format: str = "text",
    ) -> None:
        self.path = path
        self._ack = ack
        self._on_stored = on_stored
        self._on_commit = on_commit
        self._log_level = log_level
        self._log_format = log_format
        self._file_lock: DatabaseLock | None = None
        self._lock: WriteLock | None = None
        self._writer: Writer | None = None
        self._read: Reader | None = None

    @property
    def writer_pid(self) -> int | None:
        return self._writer.pid if self._writer is not None else None

    async def start(self, recover: bool = True) -> Recovery:
        # The lock first: a second server on this file must change nothing,
        # not even hand back the first one's orders in process.
        self._file_lock = lock_database(self.path)
        try:
            store = Store(self.path)
            try:
                store.create_schema()
                released = store.release(None, count_attempt=True) if recover else []
            finally:
                store.close()
        except sqlite3.Error as exc:
            raise StorageError(database_error(self.path, exc)) from None
        self._lock = WriteLock()
        self._read = Reader(self.path)
        await self._read.open()  # its connections hold the -wal and -shm until the stop
        loop = asyncio.get_running_loop()
        self._writer = Writer(
            self.path,
            watched_files(self.path, self._file_lock.file),
            self._lock,
            loop,
            self._ack,
            self._on_stored,
            self._log_level,
            self._log_format,
            on_commit=self._on_commit,
        )
        # The hot path: the service's `submit` reaches the batcher in one call.
        self.submit = self._writer.intake.submit  # type: ignore[method-assign]
        await self._writer.start()
        return Recovery(
            tuple(i for i, estado in released if estado == Estado.PENDIENTE),
            tuple(i for i, estado in released if estado == Estado.FALLIDO),
        )

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self._writer is not None:
            await self._writer.stop(timeout)
        if self._read is not None:
            self._read.close()
        if self._file_lock is not None:
            self._file_lock.release()  # releases the database for the next start
            self._file_lock = None

    def submit(
        self, order: NewOrder, owner: str | None, notify: Callable[[], None] | None = None
    ) -> asyncio.Future[Any]:
        return self._writer.submit(order, owner, notify)  # type: ignore[union-attr]

    async def get(self, order_id: int, owner: str | None = None) -> dict[str, Any] | None:
        return await self._read(Store.get, order_id, owner)  # type: ignore[misc]

    async def get_by_referencia(self, referencia: str, owner: str | None = None) -> dict[str, Any] | None:
        return await self._read(Store.get_by_referencia, referencia, owner)  # type: ignore[misc]

    async def list_orders(
        self,
        estado: str | None,
        cliente: str | None,
        desde_id: int,
        limite: int,
        contiene: str | None = None,
        orden: str = "asc",
    ) -> list[dict[str, Any]]:
        read = self._read
        return await read(Store.list_orders, estado, cliente, desde_id, limite, contiene, orden)  # type: ignore[misc]

    async def cancel(self, order_id: int, owner: str | None = None) -> tuple[dict[str, Any] | None, bool]:
        return await self._writer.run(Store.cancel, order_id, owner)  # type: ignore[union-attr]

    async def retry(self, order_id: int, owner: str | None = None) -> tuple[dict[str, Any] | None, bool]:
        return await self._writer.run(Store.retry, order_id, owner)  # type: ignore[union-attr]

    async def counts(self) -> dict[str, int]:
        return await self._read(Store.counts)  # type: ignore[misc]

    async def pending_ids(self, from_id: int, limit: int) -> list[int]:
        return await self._read(Store.pending_ids, from_id, limit)  # type: ignore[misc]

    async def hand_back(self, worker: int, crashed: bool) -> list[tuple[int, Estado]]:
        await self._release_of(worker)  # it is dead: if it held the lock
        return await self._writer.run(Store.release, worker, crashed)  # type: ignore[union-attr]

    async def fail(self, claim: Claim, error: str, retry_at: str | None) -> list[tuple[int, Estado]]:
        await self._release_of(claim.worker)  # it was killed: if it held the lock
        return await self._writer.run(Store.fail, claim, error, retry_at)  # type: ignore[union-attr]

    async def _release_of(self, process: int) -> None:
        assert self._lock is not None, "start() first"
        await asyncio.get_running_loop().run_in_executor(None, self._lock.release_of, process)

    async def live_nodes(self) -> None:
        return None

    def worker_opener(self) -> SqliteOpener:
        assert self._lock is not None, "start() first"
        return SqliteOpener(self.path, self._lock)
