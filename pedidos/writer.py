"""The server's one writing connection, on a thread of its own.

Orders that arrive while a transaction commits wait for the next one, so a
burst of orders shares one transaction and one fsync (group commit), and the
event loop never waits on the disk. Each order's future resolves only after
its row is committed.

The loop hands work to the thread once per loop iteration, not once per order:
every wake-up of the thread costs a hand-off of the interpreter lock.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .events import RECEIVED, Event, EventBus
from .protocol import PEDIDO_INVALIDO, RequestError, order_ack
from .store import Store, Stored
from .validation import NewOrder

logger = logging.getLogger(__name__)

_STOP = object()
_CALL = object()  # marks a `run` item in the inbox; the others are orders
Settled = list[tuple["asyncio.Future[Any]", Any, "BaseException | None"]]


class Writer:
    def __init__(
        self,
        db_path: str,
        write_lock: AbstractContextManager[Any] | None,
        loop: asyncio.AbstractEventLoop,
        bus: EventBus,
    ) -> None:
        self._store = Store(db_path, write_lock)
        self._loop = loop
        self._bus = bus
        self._batch: list[tuple[Any, ...]] = []  # loop side, since the last hand-off
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pedidos-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        """Commit what was already submitted, then end the thread."""
        self._hand_off()
        self._inbox.put(_STOP)
        await self._loop.run_in_executor(None, self._thread.join)
        self._store.close()

    def submit(
        self,
        order: NewOrder,
        owner: str | None = None,
        notify: Callable[[], None] | None = None,
    ) -> asyncio.Future[dict[str, Any]]:
        """Store an order: resolves to its acknowledgement once committed.

        `notify` is called once per batch for all the orders that named it,
        after their futures resolve: a connection with a hundred orders in
        one commit is woken once, not a hundred times."""
        future = self._loop.create_future()
        self._add((order, owner, future, notify))
        return future

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run `fn(store, *args)` on the writer's thread, between batches."""
        future = self._loop.create_future()
        self._add((_CALL, fn, args, future))
        return future

    def _add(self, item: tuple[Any, ...]) -> None:
        self._batch.append(item)
        if len(self._batch) == 1:
            self._loop.call_soon(self._hand_off)

    def _hand_off(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._inbox.put(batch)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items: list[tuple[Any, ...]] = []
            got = self._inbox.get()
            while True:
                if got is _STOP:
                    stopping = True
                else:
                    items += got
                try:
                    got = self._inbox.get_nowait()
                except queue.Empty:
                    break
            orders, owners, futures, settled = [], [], [], []
            notify: set[Callable[[], None]] = set()
            for item in items:
                if item[0] is _CALL:
                    _, fn, args, future = item
                    settled.append((future, *self._call(fn, *args)))
                else:
                    orders.append(item[0])
                    owners.append(item[1])
                    futures.append(item[2])
                    if item[3] is not None:
                        notify.add(item[3])
            new_ids: tuple[int, ...] = ()
            if orders:
                try:
                    results = self._store.insert_orders(orders, owners)
                except Exception as exc:
                    logger.error("could not store %d orders: %s", len(orders), exc)
                    settled += [(future, None, exc) for future in futures]
                else:
                    settled += [(f, *_ack(r)) for f, r in zip(futures, results, strict=True)]
                    new_ids = tuple(r.id for r in results if not r.duplicado)
            if settled:
                self._loop.call_soon_threadsafe(self._settle, settled, new_ids, notify)

    def _call(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, BaseException | None]:
        try:
            return fn(self._store, *args), None
        except Exception as exc:
            logger.error("database write failed: %s", exc)
            return None, exc

    def _settle(self, settled: Settled, new_ids: tuple[int, ...], notify: set[Callable[[], None]]) -> None:
        for future, result, error in settled:
            if future.done():  # cancelled: its connection went away
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        for callback in notify:
            callback()
        if new_ids:
            self._bus.publish(Event(RECEIVED, new_ids))


def _ack(stored: Stored) -> tuple[dict[str, Any] | None, BaseException | None]:
    if stored.ajeno:
        # Say nothing of the other order: only that the key is taken.
        return None, RequestError(
            PEDIDO_INVALIDO, "La referencia ya está en uso por otro pedido; use otra referencia."
        )
    return order_ack(stored.id, stored.estado, stored.duplicado), None
