"""`SqliteOpener`: how a worker process opens its own connection to the file.

A module of its own, apart from the backend: it is pickled to every worker at
spawn, and unpickling it imports this module there. The backend's module would
bring asyncio (and ssl with it), the writer and the reader threads into each
worker, which uses none of them: without them a worker imports in about a
quarter less time and holds about 5 MB less.
"""

from __future__ import annotations

from dataclasses import dataclass

from pedidos.storage.sqlite.lock import WriteLock
from pedidos.storage.sqlite.store import Store


@dataclass(frozen=True)
class SqliteOpener:
    """Opens a worker's connection, in the worker process (pickled to it at spawn)."""

    path: str
    lock: WriteLock

    def __call__(self, worker: int, server_pid: int) -> Store:
        # A worker's state changes commit without their own fsync (NORMAL): the
        # WAL is one sequential file, so the writer's next FULL commit makes
        # them durable too. Power lost before that can only turn the last
        # `listo` back into `en proceso`, which the next start hands back and
        # redoes; it never loses an acknowledged order. Meanwhile the workers
        # hold the write lock for microseconds instead of an fsync, and intake
        # does not wait for them.
        return Store(self.path, self.lock.held_by(worker, server_pid), synchronous="NORMAL")
