"""What runs inside the writer process: the server's one writing connection.

The server's event loop sends batches of new orders (and its few other
writes) down a pipe. This process commits every batch that has arrived as one
transaction with one fsync (group commit), then answers each batch with the
acknowledgements of its orders, already as the bytes the clients will read.

A process, not a thread of the server: the rows, the SQLite calls and the acks
then run on a core of their own instead of taking the interpreter lock from
the event loop. Messages are pickles framed as `multiprocessing.Connection`
frames; the server's side reads and writes them without blocking its loop
(writer.py).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from pedidos.logsetup import configure_logging
from pedidos.processing.worker import SERVER, OwnedLock, ServerGone
from pedidos.protocol.replies import order_ack
from pedidos.protocol.validation import NewOrder
from pedidos.stopsignals import leave_stop_to_the_server
from pedidos.storage.sqlite.store import Store, Stored

logger = logging.getLogger(__name__)

# One batch from the server: its new orders as (cliente, productos, direccion,
# referencia, owner) tuples, and its other writes as (Store method, args).
Order = tuple[str, tuple[str, ...], str, "str | None", "str | None"]
Call = tuple[Callable[..., Any], tuple[Any, ...]]
# The answer to one batch: an ack per order (None: the referencia is taken by
# a different order), the ids of the orders it stored, the error that
# refused all its orders, and (result, error) per call.
Answer = tuple["list[Any] | None", tuple[int, ...], "BaseException | None", list[tuple[Any, Any]]]


def writer_main(
    db_path: str,
    server_pid: int,
    requests: Connection,
    answers: Connection,
    lock: Any,
    lock_holder: Any,
    log_level: int,
    log_format: str = "text",
) -> None:
    """Entry point of the writer process, started by the server with `spawn`."""
    # The server decides when the writer stops, by closing the pipe, so that
    # nothing it already sent is left unanswered (stopsignals.py).
    leave_stop_to_the_server()
    configure_logging(log_level, log_format, "writer")
    store = Store(db_path, OwnedLock(lock, lock_holder, SERVER, server_pid))
    try:
        ended = False
        while not ended:
            batches: list[tuple[list[Order], list[Call]]] = []
            try:
                batches.append(pickle.loads(requests.recv_bytes()))
                while requests.poll():
                    batches.append(pickle.loads(requests.recv_bytes()))
            except EOFError:
                ended = True  # the server is stopping (or gone): answer what came
            if batches:
                answers.send_bytes(pickle.dumps(write(store, batches), pickle.HIGHEST_PROTOCOL))
    except (BrokenPipeError, ServerGone):
        logger.warning("the server is gone; exiting")
    finally:
        store.close()


def write(store: Store, batches: list[tuple[list[Order], list[Call]]]) -> list[Answer]:
    """Run the calls, then store the orders of all batches in one transaction."""
    calls = [[_call(store, fn, args) for fn, args in batch_calls] for _, batch_calls in batches]
    orders = [order for batch_orders, _ in batches for order in batch_orders]
    acks: list[Any] = []
    stored: list[Stored] = []
    error: BaseException | None = None
    if orders:
        try:
            stored = store.insert_orders([NewOrder(*o[:4]) for o in orders], [o[4] for o in orders])
        except Exception as exc:
            logger.error("could not store %d orders: %s", len(orders), exc)
            error = _portable(exc)
        else:
            acks = [None if s.taken else order_ack(s.id, s.estado, s.duplicado) for s in stored]
    answers: list[Answer] = []
    start = 0
    for (batch_orders, _), batch_calls in zip(batches, calls, strict=True):
        end = start + len(batch_orders)
        if error is not None or not batch_orders:
            answers.append((None, (), error, batch_calls))
        else:
            ids = tuple(s.id for s in stored[start:end] if not s.duplicado)
            answers.append((acks[start:end], ids, None, batch_calls))
        start = end
    return answers


def _call(store: Store, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, Any]:
    try:
        return fn(store, *args), None
    except Exception as exc:
        logger.error("database write failed: %s", exc)
        return None, _portable(exc)


def _portable(exc: BaseException) -> BaseException:
    """The error as it can cross the pipe to the server."""
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
