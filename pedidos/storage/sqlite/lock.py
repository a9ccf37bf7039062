"""The write lock that hands the SQLite file between the writer and the workers.

SQLite lets one connection write at a time; left to itself, a second writer
sleeps and retries (the busy handler). The server's writer process and its
workers instead queue on one `multiprocessing.Lock`, and record who holds it:
a process killed while holding it would block every writer forever, so the
backend releases it when it learns of that death.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from typing import Any

from pedidos.storage.base import ServerGone

logger = logging.getLogger(__name__)

PARENT_CHECK_S = 0.5  # how often a process waiting for the lock checks its server
WRITER = -1  # holder number of the writer process (workers are 1..N)


class WriteLock:
    """The lock and its holder's number, shared by spawned processes (pass
    it in a `Process`'s arguments)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.lock = ctx.Lock()
        self.holder = ctx.Value("i", 0, lock=False)

    def held_by(self, owner: int, server_pid: int | None = None) -> OwnedLock:
        """The context manager that process `owner` takes the lock with."""
        return OwnedLock(self.lock, self.holder, owner, server_pid)

    def release_of(self, owner: int) -> None:
        """Free the lock if `owner` died holding it."""
        if self.holder.value == owner:
            who = "the writer" if owner == WRITER else f"worker {owner}"
            logger.warning("%s died holding the database lock; releasing it", who)
            self.holder.value = 0
            self.lock.release()


class OwnedLock:
    """The shared database write lock, recording who holds it."""

    def __init__(self, lock: Any, holder: Any, owner: int, server_pid: int | None = None) -> None:
        self._lock = lock
        self._holder = holder
        self._owner = owner
        self._server_pid = server_pid

    def __enter__(self) -> None:
        # A worker waits in slices: if its server dies holding the lock, no
        # one will release it, and the worker must notice and exit.
        while not self._lock.acquire(timeout=PARENT_CHECK_S):
            if self._server_pid is not None and os.getppid() != self._server_pid:
                raise ServerGone
        self._holder.value = self._owner

    def __exit__(self, *exc: object) -> None:
        self._holder.value = 0
        self._lock.release()
