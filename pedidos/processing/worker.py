"""What runs inside a worker process.

A worker takes chunks of order ids from its `multiprocessing.Queue`, claims the
ones still pending, sleeps the simulated work time for each, marks them
`listo`, and tells the server through its pipe. It receives plain
configuration, never a live connection: it opens its own database connection.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import sqlite3
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pedidos.logsetup import configure_logging
from pedidos.stopsignals import leave_stop_to_the_server
from pedidos.storage.sqlite.store import Store

logger = logging.getLogger(__name__)

PARENT_CHECK_S = 0.5  # how often an idle worker checks that the server is alive
RETRY_S = 1.0
SERVER = -1  # lock owner number of the server's own writer


@dataclass(frozen=True)
class WorkerConfig:
    db_path: str
    work_time: tuple[float, float]  # seconds per order: fixed when both are equal
    log_level: int = logging.INFO
    log_format: str = "text"


class ServerGone(Exception):
    """The worker's server died: the worker exits."""


class OwnedLock:
    """The shared database write lock, recording who holds it.

    A worker killed while holding the lock would block every writer forever;
    knowing the holder lets the pool release it when it reaps that worker.
    """

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


def worker_main(
    number: int,
    server_pid: int,
    config: WorkerConfig,
    tasks: Any,
    events: Connection,
    lock: Any,
    lock_holder: Any,
    stop: Any,
) -> None:
    """Entry point of worker `number` (1..N), started by the pool with `spawn`.

    `server_pid` comes from the server itself: a worker that asked os.getppid()
    at its start would get init's pid if the server had already died."""
    # The server decides when workers stop (stopsignals.py).
    leave_stop_to_the_server()
    # A spawned process starts with no logging set up; it logs like its server.
    configure_logging(config.log_level, config.log_format, f"worker {number}")
    # A worker's state changes commit without their own fsync (NORMAL): the
    # WAL is one sequential file, so the server's next FULL commit makes them
    # durable too. Power lost before that can only turn the last `listo` back
    # into `en proceso`, which the next start hands back and redoes; it never
    # loses an acknowledged order. Meanwhile the workers hold the write lock
    # for microseconds instead of an fsync, and intake does not wait for them.
    store = Store(config.db_path, OwnedLock(lock, lock_holder, number, server_pid), synchronous="NORMAL")
    try:
        while not stop.is_set():
            try:
                chunk = tasks.get(timeout=PARENT_CHECK_S)
            except queue.Empty:
                if os.getppid() != server_pid:
                    logger.warning("the server is gone; exiting")
                    return
                continue
            if chunk is None:
                continue  # a wake-up: `stop` tells whether to go on
            _process(number, chunk, config, store, events, server_pid)
    except (BrokenPipeError, EOFError, ServerGone):
        logger.warning("the server is gone; exiting")
    finally:
        store.close()


def _process(
    number: int,
    chunk: tuple[int, ...],
    config: WorkerConfig,
    store: Store,
    events: Connection,
    server_pid: int,
) -> None:
    try:
        started_at, taken = store.claim(chunk, number)
    except sqlite3.Error as exc:
        # Nothing was taken: the server puts the chunk back in its backlog.
        logger.error("could not claim orders: %s", exc)
        events.send(("finished", number, chunk, (), None))
        time.sleep(RETRY_S)
        return
    events.send(("started", number, chunk, tuple(taken), started_at))
    low, high = config.work_time
    for _ in taken:
        if high > 0:
            time.sleep(random.uniform(low, high))
    finished_at = None
    while taken:
        try:
            finished_at = store.finish(taken, number)
            break
        except sqlite3.Error as exc:
            # The work is done; only its record is missing. Keep the orders
            # and retry, unless the server is gone (a restart redoes them).
            logger.error("could not record finished orders, retrying: %s", exc)
            if os.getppid() != server_pid:
                return
            time.sleep(RETRY_S)
    events.send(("finished", number, chunk, tuple(taken), finished_at))
