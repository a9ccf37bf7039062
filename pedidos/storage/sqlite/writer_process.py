"""What runs inside the writer process: the server's one writing connection.

The server's event loop sends batches of new orders (and its few other
writes) down a pipe. This process commits every batch that has arrived as one
transaction with one fsync (group commit), then answers each batch with the
acknowledgements of its orders: each receipt passed through the server's `ack`
function (the protocol layer's, which writes the bytes the client will read),
so that this work runs here, on a core of its own, not on the event loop.

A process, not a thread of the server: the rows, the SQLite calls and the acks
then run on a core of their own instead of taking the interpreter lock from
the event loop. Messages are pickles framed as `multiprocessing.Connection`
frames; the server's side reads and writes them without blocking its loop
(writer.py).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from pedidos.domain import NewOrder
from pedidos.logsetup import Repeating, configure_logging
from pedidos.stopsignals import leave_stop_to_the_server
from pedidos.storage.base import Ack, Receipt, ServerGone, StorageUnavailable
from pedidos.storage.intake import Answer, Call, Order
from pedidos.storage.sqlite.files import SIDECARS, same_file
from pedidos.storage.sqlite.lock import WRITER, WriteLock
from pedidos.storage.sqlite.store import BUSY_TIMEOUT_MS, Store

logger = logging.getLogger(__name__)
failed = Repeating(logger)  # a full disk fails every batch alike
FILE_GONE = "the database file (or its -wal or -shm) was deleted or replaced while the server ran"
CHECK_S = 1.0  # how often an idle writer checks its files


class Request(NamedTuple):
    """One batch from the server's loop (storage/intake.py)."""

    orders: list[Order]
    calls: list[Call]  # (Store method, args): its other writes, run first


class Reply(NamedTuple):
    """The answers to the batches of one group commit, in the order they came."""

    answers: list[Answer]
    # Seconds the orders' transaction took (for the panel's commit-time
    # histogram); None when it stored no orders.
    commit_s: float | None


def writer_main(
    db_path: str,
    files: tuple[tuple[str, tuple[int, int]], ...],
    server_pid: int,
    requests: Connection,
    answers: Connection,
    lock: WriteLock,
    ack: Ack,
    log_level: int,
    log_format: str = "text",
) -> None:
    """Entry point of the writer process, started by the server with `spawn`."""
    # The server decides when the writer stops, by closing the pipe, so that
    # nothing it already sent is left unanswered (stopsignals.py).
    leave_stop_to_the_server()
    configure_logging(log_level, log_format, "writer")
    # Opening a path that no longer names the server's file would create an
    # empty database there; from then on every batch is refused instead.
    held = lock.held_by(WRITER, server_pid, patience=BUSY_TIMEOUT_MS / 1000)
    store = Store(db_path, held) if _changed(files) is None else None
    try:
        ended = False
        while not ended:
            batches: list[Request] = []
            try:
                if not requests.poll(CHECK_S):
                    # Idle: a file deleted now is not left unseen until the next order.
                    if store is not None and _changed(files) is not None:
                        _lost(store, files)
                        store = None
                    continue
                batches.append(pickle.loads(requests.recv_bytes()))
                while requests.poll():
                    batches.append(pickle.loads(requests.recv_bytes()))
            except EOFError:
                ended = True  # the server is stopping (or gone): answer what came
            if not batches:
                continue
            if store is None:
                reply = _refused(batches, StorageUnavailable(FILE_GONE))
            else:
                reply = write(store, batches, ack)
                # Checked after the commit, before any ack leaves: what was just
                # committed to a file no longer at its path is as good as lost,
                # unless the file is put back (moved, not deleted): maybe done.
                if _changed(files) is not None:
                    _lost(store, files)
                    store = None
                    reply = _refused(batches, StorageUnavailable(FILE_GONE, maybe_done=True))
            answers.send_bytes(pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))
    except (BrokenPipeError, ServerGone):
        logger.warning("the server is gone; exiting")
    finally:
        if store is not None:
            store.close()


def _lost(store: Store, files: tuple[tuple[str, tuple[int, int]], ...]) -> None:
    """The files changed under the writer: it writes nothing more. If the
    database file is still in place (a -wal or -shm was lost), its connection,
    which still holds the old WAL, first writes that back into it: what was
    acknowledged survives a crash before the stop."""
    if same_file(*files[0]):
        _write_back(store)
    store.close()


def _changed(files: tuple[tuple[str, tuple[int, int]], ...]) -> str | None:
    """The first of the database and its -wal and -shm (`files`: each path
    with the identity it had when the server opened it) that is no longer
    that file, said in the log; None while all are."""
    for path, file in files:
        if same_file(path, file):
            continue
        if path.endswith(SIDECARS):
            logger.error(
                "%s was deleted or replaced while the server ran: nothing more is acknowledged "
                "(new orders get servidor_ocupado). Stop the server now, gracefully (SIGTERM): "
                "its open connections still hold the deleted file and write what it holds into "
                "the database as they close; never delete it while the server runs",
                path,
            )
        else:
            logger.error(
                "the database file %s was deleted or replaced while the server ran: nothing more is "
                "acknowledged (new orders get servidor_ocupado); put the file back from a backup if it "
                "was deleted by mistake, then restart the server",
                path,
            )
        return path
    return None


def _write_back(store: Store) -> None:
    """Copy what the WAL holds into the database file, through this process's
    connection, which still holds the WAL if it was deleted."""
    try:
        busy, _, _ = store.checkpoint()
    except Exception as exc:
        logger.error("could not write the WAL back into the database: %s", exc)
        return
    if busy:
        logger.error("could not write all of the WAL back into the database: a reader holds part of it")
    else:
        logger.warning("wrote the WAL back into the database file")


def _refused(batches: list[Request], error: BaseException) -> Reply:
    """Every batch answered with `error`: its orders and its other writes."""
    return Reply([Answer(None, (), error, [(None, error) for _ in calls]) for _, calls in batches], None)


def write(store: Store, batches: list[Request], ack: Ack) -> Reply:
    """Run the calls, then store the orders of all batches in one transaction."""
    calls = [[_call(store, fn, args) for fn, args in batch_calls] for _, batch_calls in batches]
    orders = [order for batch_orders, _ in batches for order in batch_orders]
    acks: list[Any] = []
    stored: list[Receipt] = []
    error: BaseException | None = None
    commit_s: float | None = None
    if orders:
        started = time.perf_counter()
        try:
            stored = store.insert_orders(*_columns(orders))
        except Exception as exc:
            failed.error("could not store %d orders: %s", len(orders), exc, key=("orders", str(exc)))
            error = _portable(exc)
        else:
            commit_s = time.perf_counter() - started
            acks = list(map(ack, stored))
    answers: list[Answer] = []
    start = 0
    for (batch_orders, _), batch_calls in zip(batches, calls, strict=True):
        end = start + len(batch_orders)
        if error is not None or not batch_orders:
            answers.append(Answer(None, (), error, batch_calls))
        else:
            ids = tuple(s.id for s in stored[start:end] if not s.duplicado)
            answers.append(Answer(acks[start:end], ids, None, batch_calls))
        start = end
    return Reply(answers, commit_s)


def _columns(orders: list[Order]) -> tuple[list[NewOrder], list[str | None]]:
    """The orders of a batch, and their owners."""
    news, owners = [], []
    for cliente, productos, direccion, referencia, owner in orders:
        news.append(NewOrder(cliente, productos, direccion, referencia))
        owners.append(owner)
    return news, owners


def _call(store: Store, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, Any]:
    try:
        return fn(store, *args), None
    except Exception as exc:
        failed.error("database write failed: %s", exc, key=("write", str(exc)))
        return None, _portable(exc)


def _portable(exc: BaseException) -> BaseException:
    """The error as it can cross the pipe to the server."""
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
