"""What runs inside a worker process.

A worker takes chunks of order ids from its `multiprocessing.Queue`, claims the
ones still pending, works on each (the simulated sleep, or the user's task:
task.py), marks them `listo` (or records a failed attempt), and tells the
server through its pipe. It receives plain
configuration and the storage backend's opener, never a live connection: it
opens its own connection to the database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from pedidos.domain import Estado
from pedidos.logsetup import MAX_KINDS, REPEAT_S, Repeating, configure_logging
from pedidos.processing.orphan import PARENT_CHECK_S, LeaseWatch, end_with_server
from pedidos.processing.retry import RetryPolicy
from pedidos.processing.task import ResultError, TaskError, TaskRunner, describe, encode_result, load_task
from pedidos.stopsignals import leave_stop_to_the_server
from pedidos.storage.base import Claim, ServerGone, WorkerOpener, WorkerStore
from pedidos.storage.lease import FENCE_CHECK_S

logger = logging.getLogger(__name__)
# The database away: a worker retries once a second; its log says so once per
# REPEAT_S (with the count left out), not once per try for the whole outage.
_UNREACHABLE = Repeating(logger)

RETRY_S = 1.0
CLAIMED = "claimed"  # the kinds of Report
DONE = "done"
FAILED = "failed"  # one order's attempt failed: `at` is its retry time, None if now `fallido`
# On a database shared by many nodes: the watch that ends this worker if its
# node's lease runs out while it works on an order (set up in worker_main).
_WATCH: LeaseWatch | None = None


@dataclass(frozen=True)
class WorkerConfig:
    open_store: WorkerOpener  # from the storage backend: opens this worker's connection
    work_time: tuple[float, float]  # seconds per order: fixed when both are equal
    log_level: int = logging.INFO
    log_format: str = "text"
    task: str | None = None  # `--tarea MODULO:FUNCION`; None: the simulated work
    retry: RetryPolicy = RetryPolicy()


class Report(NamedTuple):
    """What a worker tells the server through its pipe about one chunk."""

    kind: str  # CLAIMED: `taken` are now `en proceso`; DONE: the chunk is done with
    worker: int
    chunk: tuple[int, ...]  # the ids the server sent
    taken: tuple[int, ...]  # those this worker claimed (CLAIMED), made `listo` (DONE), failed (FAILED)
    at: str | None  # fecha_inicio or fecha_fin as recorded; FAILED: reintentar_despues


class TaskFailures:
    """The log of failed calls: a line for each, with the order and its error,
    but the traceback only the first time a kind of failure (its type and the
    line that raised it) comes up in REPEAT_S. When the service a task
    calls is down every order fails alike, and a traceback per attempt would
    bury the rest of the log under thousands of copies of the first."""

    def __init__(self) -> None:
        self._due: dict[tuple[str, str, int | None], float] = {}

    def log(self, order_id: int, exc: BaseException, error: str) -> None:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("", None)
        kind = (type(exc).__qualname__, *where)
        now = time.monotonic()
        if now < self._due.get(kind, 0.0):
            logger.error("order %d: the task failed: %s (traceback logged before)", order_id, error)
            return
        if len(self._due) >= MAX_KINDS:  # keep the kinds still being held back
            self._due = {k: due for k, due in self._due.items() if due > now}
        self._due[kind] = now + REPEAT_S
        logger.error("order %d: the task failed: %s", order_id, error, exc_info=exc)


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
    end_with_server(server_pid)  # orphan.py: no call outlives its server
    # A spawned process starts with no logging set up; it logs like its server.
    configure_logging(config.log_level, config.log_format, f"worker {number}")
    runner = None
    if config.task is not None:
        try:
            runner = TaskRunner(load_task(config.task))
        except TaskError as exc:
            # The server loaded it before starting workers; failing here is
            # rare (a file changed since): wait, so a replacement is not a loop.
            logger.error("%s", exc)
            time.sleep(RETRY_S)
            return
    store = config.open_store(number, server_pid)
    if store.lease is not None:
        global _WATCH
        _WATCH = LeaseWatch(store.lease, number)
    try:
        while not stop.value:  # the pool's stop flag (pool.py)
            try:
                chunk = tasks.get(timeout=PARENT_CHECK_S)
            except queue.Empty:
                if os.getppid() != server_pid:
                    logger.warning("the server is gone; exiting")
                    return
                continue
            if chunk is None:
                continue  # a wake-up: `stop` tells whether to go on
            if stop.value:
                # Queued before the stop began, read after it: not in hand, so
                # not begun (a stop lets a worker finish the order it has, not
                # start another, which could hold the stop up to its timeout);
                # it stays `pendiente` for the next start.
                return
            _process(number, chunk, config, store, events, server_pid, runner)
    except (BrokenPipeError, EOFError, ServerGone):
        logger.warning("the server is gone; exiting")
    finally:
        store.close()
        if runner is not None:
            runner.close()


def _process(
    number: int,
    chunk: tuple[int, ...],
    config: WorkerConfig,
    store: WorkerStore,
    events: Connection,
    server_pid: int,
    runner: TaskRunner | None = None,
) -> None:
    lease = store.lease
    generation = lease.generation if lease is not None else 0  # read before the claim
    if lease is not None and not lease.holds(generation, lease.claim_headroom()):
        # Its node's lease is running out: what it took now it would have to
        # drop at once. The server puts the chunk back; the renewals, once
        # they go through again, let it claim.
        events.send(Report(DONE, number, chunk, (), None))
        time.sleep(FENCE_CHECK_S)
        return
    try:
        claim = store.claim(chunk, number)
    except ServerGone:
        raise
    except Exception as exc:
        # Nothing was taken: the server puts the chunk back in its backlog.
        _UNREACHABLE.error("could not claim orders: %s", exc)
        events.send(Report(DONE, number, chunk, (), None))
        time.sleep(RETRY_S)
        return
    events.send(Report(CLAIMED, number, chunk, claim.ids, claim.at))
    if runner is not None:
        finished, finished_at = _run_tasks(
            claim, config, store, events, server_pid, runner, chunk, generation
        )
        events.send(Report(DONE, number, chunk, finished, finished_at))
        return
    low, high = config.work_time
    if high > 0 and claim.ids:
        with _working(generation):
            for _ in claim.ids:
                time.sleep(random.uniform(low, high))
    finished_at, finished = None, ()
    if claim.ids:
        finished_at, finished = _record(server_pid, store.finish, claim) or (None, ())
    events.send(Report(DONE, number, chunk, finished, finished_at))


def _run_tasks(
    claim: Claim,
    config: WorkerConfig,
    store: WorkerStore,
    events: Connection,
    server_pid: int,
    runner: TaskRunner,
    chunk: tuple[int, ...],
    generation: int = 0,
) -> tuple[tuple[int, ...], str | None]:
    """Call the task on each claimed order; record each outcome as it comes."""
    finished: list[int] = []
    finished_at = None
    for order_id in claim.ids:
        one = Claim(claim.worker, claim.at, (order_id,))
        order = _record(server_pid, store.get, order_id)
        if order is None or order["estado"] != Estado.EN_PROCESO:
            continue  # taken away since (the server gave up on this worker)
        fallos = order["fallos"]  # read first: the task may change its dict
        try:
            with _working(generation):
                value = runner(order)
            text = encode_result(value)
        except ResultError as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.warning("order %d: %s", order_id, error)
        except BaseException as exc:
            # The worker ignores the stop signals (stopsignals.py), so a
            # SystemExit, KeyboardInterrupt or CancelledError here was raised
            # by the task's own code (`sys.exit(1)` in a script turned task):
            # a failed attempt with its error, not a dead worker.
            error = describe(exc)
            _FAILURES.log(order_id, exc, error)
        else:
            done = _record(server_pid, store.finish, one, {order_id: text})
            if done is not None and done.ids:
                finished.append(order_id)
                finished_at = done.at
            continue
        retry_at = config.retry.retry_at(fallos + 1)
        changed = _record(server_pid, store.fail, one, error, retry_at)
        if changed:
            events.send(Report(FAILED, claim.worker, chunk, (order_id,), retry_at))
    return tuple(finished), finished_at


_FAILURES = TaskFailures()  # one per worker process


def _working(generation: int) -> contextlib.AbstractContextManager[None]:
    """Around a call or the simulated work on orders claimed under the node's
    `generation`: the part that must not outlive the node's lease. Recording
    its outcome may (a late write is refused anyway)."""
    return _WATCH.working(generation) if _WATCH is not None else contextlib.nullcontext()


def _record(server_pid: int, write: Callable[..., Any], *args: Any) -> Any:
    """Run a database call until it succeeds; None if the server is gone.
    The work is done; only its record is missing: keep at it, unless the
    server is gone (a restart redoes the order)."""
    while True:
        try:
            return write(*args)
        except ServerGone:
            raise
        except Exception as exc:
            _UNREACHABLE.error("could not record an outcome, retrying: %s", exc)
            if os.getppid() != server_pid:
                return None
            time.sleep(RETRY_S)
