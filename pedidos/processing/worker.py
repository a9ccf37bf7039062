"""What runs inside a worker process.

A worker takes chunks of order ids from its `multiprocessing.Queue`, claims the
ones still pending, sleeps the simulated work time for each, marks them
`listo`, and tells the server through its pipe. It receives plain
configuration and the storage backend's opener, never a live connection: it
opens its own connection to the database.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from pedidos.logsetup import configure_logging
from pedidos.stopsignals import leave_stop_to_the_server
from pedidos.storage.base import ServerGone, WorkerOpener, WorkerStore

logger = logging.getLogger(__name__)

PARENT_CHECK_S = 0.5  # how often an idle worker checks that the server is alive
RETRY_S = 1.0
CLAIMED = "claimed"  # the kinds of Report
DONE = "done"


@dataclass(frozen=True)
class WorkerConfig:
    open_store: WorkerOpener  # from the storage backend: opens this worker's connection
    work_time: tuple[float, float]  # seconds per order: fixed when both are equal
    log_level: int = logging.INFO
    log_format: str = "text"


class Report(NamedTuple):
    """What a worker tells the server through its pipe about one chunk."""

    kind: str  # CLAIMED: `taken` are now `en proceso`; DONE: the chunk is done with
    worker: int
    chunk: tuple[int, ...]  # the ids the server sent
    taken: tuple[int, ...]  # those this worker claimed (CLAIMED) or made `listo` (DONE)
    at: str | None  # fecha_inicio or fecha_fin as recorded


def worker_main(
    number: int,
    server_pid: int,
    config: WorkerConfig,
    tasks: Any,
    events: Connection,
    stop: Any,
) -> None:
    """Entry point of worker `number` (1..N), started by the pool with `spawn`.

    `server_pid` comes from the server itself: a worker that asked os.getppid()
    at its start would get init's pid if the server had already died."""
    # The server decides when workers stop (stopsignals.py).
    leave_stop_to_the_server()
    # A spawned process starts with no logging set up; it logs like its server.
    configure_logging(config.log_level, config.log_format, f"worker {number}")
    store = config.open_store(number, server_pid)
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
    store: WorkerStore,
    events: Connection,
    server_pid: int,
) -> None:
    try:
        claim = store.claim(chunk, number)
    except ServerGone:
        raise
    except Exception as exc:
        # Nothing was taken: the server puts the chunk back in its backlog.
        logger.error("could not claim orders: %s", exc)
        events.send(Report(DONE, number, chunk, (), None))
        time.sleep(RETRY_S)
        return
    events.send(Report(CLAIMED, number, chunk, claim.ids, claim.at))
    low, high = config.work_time
    for _ in claim.ids:
        if high > 0:
            time.sleep(random.uniform(low, high))
    finished: tuple[int, ...] = ()
    finished_at = None
    while claim.ids:
        try:
            finished_at, finished = store.finish(claim)
            break
        except ServerGone:
            raise
        except Exception as exc:
            # The work is done; only its record is missing. Keep the orders
            # and retry, unless the server is gone (a restart redoes them).
            logger.error("could not record finished orders, retrying: %s", exc)
            if os.getppid() != server_pid:
                return
            time.sleep(RETRY_S)
    events.send(Report(DONE, number, chunk, finished, finished_at))
