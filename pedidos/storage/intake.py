"""Group commit, the backend-independent half: gathering what the loop submits.

Orders (and a backend's other writes) submitted while the database commits
wait for its next transaction, so a burst shares one transaction and one
fsync, and the event loop never waits on the disk. `Intake` gathers them per
loop iteration into a `Batch` and hands each batch to the backend's `send`
(the SQLite backend pickles it down a pipe to its writer process; another
backend may run one multi-row INSERT in a task). The backend reports each
batch's `Answer` in the order it sent them, and `Intake` resolves the futures:
an order's future only after its row is committed, or with the error that
kept the whole batch out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from pedidos.domain import NewOrder

if TYPE_CHECKING:  # the writer process imports this (its messages' shapes) and runs no loop
    import asyncio

# A new order as a batch carries it: (cliente, productos, direccion, referencia, owner).
Order = tuple[str, tuple[str, ...], str, "str | None", "str | None"]
Call = tuple[Callable[..., Any], tuple[Any, ...]]


class Answer(NamedTuple):
    """What became of one batch."""

    acks: list[Any] | None  # `ack(receipt)` per order; None when `error` refused them all
    ids: tuple[int, ...]  # the orders it stored (new, not duplicates)
    error: BaseException | None
    calls: list[tuple[Any, Any]]  # (result, error) per call


class Batch:
    """What the loop gathered between two hand-offs, and who waits for it."""

    __slots__ = ("orders", "futures", "notify", "calls", "call_futures")

    def __init__(self) -> None:
        self.orders: list[Order] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.notify: set[Callable[[], None]] = set()
        self.calls: list[Call] = []
        self.call_futures: list[asyncio.Future[Any]] = []


class Intake:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[Batch], bool],
        on_stored: Callable[[tuple[int, ...]], None] | None,
    ) -> None:
        self._loop = loop
        self._send = send  # hands a batch to the database: False when it cannot now
        self._on_stored = on_stored
        self._batch = Batch()
        self._in_flight: deque[Batch] = deque()  # sent, in order, not yet answered

    def submit(
        self, order: NewOrder, owner: str | None = None, notify: Callable[[], None] | None = None
    ) -> asyncio.Future[Any]:
        """Store an order: resolves to the backend's `ack(receipt)` once committed.

        `notify` is called once per batch for all the orders that named it,
        after their futures resolve: a connection with a hundred orders in
        one commit is woken once, not a hundred times."""
        future = self._loop.create_future()
        batch = self._batch
        if not batch.futures and not batch.call_futures:
            self._loop.call_soon(self.flush)
        batch.orders.append((*order, owner))
        batch.futures.append(future)
        if notify is not None:
            batch.notify.add(notify)
        return future

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Have the backend run `fn(store, *args)` before the orders of its batch."""
        future = self._loop.create_future()
        batch = self._batch
        if not batch.futures and not batch.call_futures:
            self._loop.call_soon(self.flush)
        batch.calls.append((fn, args))
        batch.call_futures.append(future)
        return future

    def flush(self) -> None:
        """Hand what was gathered to the backend, if anything and if it can take it
        (if not, it stays gathered: the backend calls this again once it can)."""
        batch = self._batch
        if (batch.futures or batch.call_futures) and self._send(batch):
            self._batch = Batch()
            self._in_flight.append(batch)

    def answered(self, answers: list[Answer]) -> None:
        """The answers to the oldest batches sent, in the order they were sent."""
        notify: set[Callable[[], None]] = set()
        new_ids: list[int] = []
        for acks, ids, error, call_results in answers:
            batch = self._in_flight.popleft()
            for future, (result, call_error) in zip(batch.call_futures, call_results, strict=True):
                _resolve(future, result, call_error)
            if error is not None:
                for future in batch.futures:
                    _resolve(future, None, error)
            elif acks is not None:
                for future, ack in zip(batch.futures, acks, strict=True):
                    if not future.done():  # done: cancelled, its connection went away
                        future.set_result(ack)
            notify |= batch.notify
            new_ids += ids
        for callback in notify:
            callback()
        if new_ids and self._on_stored is not None:
            self._on_stored(tuple(new_ids))

    def fail_in_flight(self, error: BaseException, unsent: bool = False) -> int:
        """Fail every batch sent and not answered (and with `unsent`, the one
        never sent): none of their orders gets an ack. Returns how many
        requests that failed."""
        batches = [*self._in_flight, self._batch] if unsent else [*self._in_flight]
        self._in_flight.clear()
        notify: set[Callable[[], None]] = set()
        for batch in batches:
            for future in (*batch.futures, *batch.call_futures):
                _resolve(future, None, error)
            notify |= batch.notify
        for callback in notify:
            callback()
        return sum(len(batch.futures) + len(batch.call_futures) for batch in batches)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
        # Marked as seen: the backend has logged the failure, and a future
        # whose connection is gone (a stop, a client that left) is read by no
        # one; asyncio would log it again, with a traceback, when it is freed.
        future.exception()
    else:
        future.set_result(result)
