"""The write lock that hands the SQLite file between the writer and the workers.

SQLite lets one connection write at a time; left to itself, a second writer
sleeps and retries (the busy handler). The server's writer process and its
workers instead queue on one `multiprocessing.Lock` (the contract names it),
and record who holds it: a process killed while holding it would block every
writer forever, so the backend releases it when it learns of that death.

Taking the lock and recording the holder are two steps, and so are clearing
the record and releasing: a process killed between them leaves the lock held
with no holder recorded. `release_of` tells that apart from a live holder by
waiting a moment for the lock (see there).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from typing import Any

from pedidos.storage.base import ServerGone

logger = logging.getLogger(__name__)

PARENT_CHECK_S = 0.5  # how often a process waiting for the lock checks its server
# How long `release_of` waits for a lock held with no holder recorded before it
# concludes that the dead process held it. A live process records itself within
# microseconds of taking the lock (or releases it within microseconds of
# clearing the record): a lock held that long with no holder has none alive.
UNRECORDED_S = 0.5
WRITER = -1  # holder number of the writer process (workers are 1..N)


class WriteLock:
    """The lock, its holder's number and a count of holds, shared by spawned
    processes (pass it in a `Process`'s arguments)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.lock = ctx.Lock()
        self.holder = ctx.Value("i", 0, lock=False)
        # Bumped by each holder once it has recorded itself (under the lock,
        # so never two at once): a hold that began while `release_of` waited.
        self.holds = ctx.Value("Q", 0, lock=False)

    def held_by(self, owner: int, server_pid: int | None = None, patience: float | None = None) -> OwnedLock:
        """The context manager that process `owner` takes the lock with; with
        `patience`, it gives up after that many seconds (see OwnedLock)."""
        return OwnedLock(self.lock, self.holder, self.holds, owner, server_pid, patience)

    def release_of(self, owner: int) -> None:
        """Free the lock if `owner`, now dead, held it. Blocks for up to
        about `UNRECORDED_S`: call it off the event loop."""
        with _RECOVERING:  # two deaths at once: one look at a time
            self._release_of(owner)

    def _release_of(self, owner: int) -> None:
        who = _who(owner)
        if self.holder.value == owner:
            logger.warning("%s died holding the database lock; releasing it", who)
            self.holder.value = 0
            self._release()
            return
        if self.holder.value != 0:
            return  # a live process holds it
        # No holder recorded: the lock is free, or a live process is between
        # its two steps for a moment, or `owner` died between them. Only in
        # the last case does it stay taken, with no hold recorded, all along.
        holds = self.holds.value
        if self.lock.acquire(timeout=UNRECORDED_S):
            self._release()
            return
        if self.holder.value != 0 or self.holds.value != holds:
            return  # live processes held it meanwhile
        # A live holder between clearing its record and releasing would let
        # go within microseconds: a last short wait tells it from a dead one.
        if self.lock.acquire(timeout=0.05):
            self._release()
            return
        logger.warning("%s died while taking or giving back the database lock; releasing it", who)
        self._release()

    def _release(self) -> None:
        with contextlib.suppress(ValueError):  # freed meanwhile by its holder: nothing to do
            self.lock.release()


# `release_of` runs in the server process only, in executor threads.
_RECOVERING = threading.Lock()


def _who(owner: int) -> str:
    return "the writer" if owner == WRITER else f"worker {owner}"


class OwnedLock:
    """The shared database write lock, recording who holds it.

    `patience`: the writer's, whose clients wait for its commits, gives up
    after that long, as SQLite's busy timeout does for a lock held outside the
    server: a live holder that does not let go (a worker stopped with SIGSTOP,
    frozen in a debugger) would otherwise leave every new order unanswered,
    with nothing in the log. Workers wait as long as it takes."""

    def __init__(
        self,
        lock: Any,
        holder: Any,
        holds: Any,
        owner: int,
        server_pid: int | None = None,
        patience: float | None = None,
    ) -> None:
        self._lock = lock
        self._holder = holder
        self._holds = holds
        self._owner = owner
        self._server_pid = server_pid
        self._patience = patience

    def __enter__(self) -> None:
        # A worker waits in slices: if its server dies holding the lock, no
        # one will release it, and the worker must notice and exit.
        started = time.monotonic()
        while not self._lock.acquire(timeout=PARENT_CHECK_S):
            if self._server_pid is not None and os.getppid() != self._server_pid:
                raise ServerGone
            if self._patience is not None and time.monotonic() - started >= self._patience:
                holder = self._holder.value
                by = _who(holder) if holder else "a process of the server"
                raise sqlite3.OperationalError(
                    f"database is locked: {by} has held the server's write lock for over {self._patience:g} s"
                )
        self._holder.value = self._owner
        self._holds.value += 1

    def __exit__(self, *exc: object) -> None:
        self._holder.value = 0
        self._lock.release()
