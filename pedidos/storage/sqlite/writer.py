"""The event loop's side of the writer process (writer_process.py).

Orders that arrive while the writer commits wait for its next transaction, so a
burst of orders shares one transaction and one fsync (group commit), and the
event loop never waits on the disk. Each order's future resolves only after its
row is committed.

The loop sends what it gathered once per loop iteration, not once per order,
through pipe transports that never block it. If the writer process dies, the
batches it had not answered fail (their clients get an error, never an ack for
an order that may not be stored) and a new writer process starts.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from pedidos.domain import NewOrder
from pedidos.storage.base import Ack
from pedidos.storage.sqlite.lock import WRITER, WriteLock
from pedidos.storage.sqlite.writer_process import Answer, Batch, writer_main

logger = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 30.0
_HEADER = struct.Struct("!i")  # a multiprocessing.Connection frame: length, then the bytes


class _Batch:
    """What the loop gathered between two hand-offs, and who waits for it."""

    __slots__ = ("orders", "futures", "notify", "calls", "call_futures")

    def __init__(self) -> None:
        self.orders: list[tuple[Any, ...]] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.notify: set[Callable[[], None]] = set()
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.call_futures: list[asyncio.Future[Any]] = []


class Writer:
    def __init__(
        self,
        db_path: str,
        lock: WriteLock,
        loop: asyncio.AbstractEventLoop,
        ack: Ack,
        on_stored: Callable[[tuple[int, ...]], None] | None,
        log_level: int = logging.INFO,
    ) -> None:
        self._db_path = db_path
        self._lock = lock
        self._ack = ack
        self._on_stored = on_stored
        self._log_level = log_level
        self._loop = loop
        self._ctx = multiprocessing.get_context("spawn")
        self._batch = _Batch()
        self._in_flight: deque[_Batch] = deque()  # sent, in order, not yet answered
        self._process: Any = None
        self._pipe: asyncio.WriteTransport | None = None
        self._gone: asyncio.Future[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        requests_r, requests_w = self._ctx.Pipe(duplex=False)
        answers_r, answers_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=writer_main,
            args=(
                self._db_path,
                os.getpid(),
                requests_r,
                answers_w,
                self._lock,
                self._ack,
                self._log_level,
            ),
            name="pedidos-writer",
            daemon=True,
        )
        process.start()
        requests_r.close()
        answers_w.close()
        # The loop's ends as plain files for asyncio's pipe transports.
        send = open(os.dup(requests_w.fileno()), "wb", buffering=0)  # noqa: SIM115
        receive = open(os.dup(answers_r.fileno()), "rb", buffering=0)  # noqa: SIM115
        requests_w.close()
        answers_r.close()
        self._gone = self._loop.create_future()
        self._pipe, _ = await self._loop.connect_write_pipe(asyncio.BaseProtocol, send)
        await self._loop.connect_read_pipe(lambda: _Answers(self), receive)
        self._process = process
        logger.info("writer started (pid %d)", process.pid)
        self._hand_off()  # what was submitted while it started

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def stop(self) -> None:
        """Commit what was already submitted, then end the writer process."""
        self._stopping = True
        if self._restarting is not None:
            # Not cancelled: cut short inside `start`, it would leave a writer
            # process that nobody closes. It starts none once it sees `_stopping`.
            await self._restarting
        self._hand_off()
        if self._pipe is not None:
            self._pipe.close()  # end of input: the writer answers what it has and exits
        if self._gone is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._gone), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                logger.error("the writer did not stop in time; killing it")
                self._process.kill()
        if self._process is not None:
            await self._loop.run_in_executor(None, self._process.join)
        self._fail_in_flight(RuntimeError("the server stopped"))

    def submit(
        self,
        order: NewOrder,
        owner: str | None = None,
        notify: Callable[[], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Store an order: resolves to `ack(receipt)` once committed.

        `notify` is called once per batch for all the orders that named it,
        after their futures resolve: a connection with a hundred orders in
        one commit is woken once, not a hundred times."""
        future = self._loop.create_future()
        batch = self._batch
        if not batch.futures and not batch.call_futures:
            self._loop.call_soon(self._hand_off)
        batch.orders.append((*order, owner))
        batch.futures.append(future)
        if notify is not None:
            batch.notify.add(notify)
        return future

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run `fn(store, *args)` in the writer, before the orders of its batch.
        `fn` must be picklable: a function or a `Store` method."""
        future = self._loop.create_future()
        batch = self._batch
        if not batch.futures and not batch.call_futures:
            self._loop.call_soon(self._hand_off)
        batch.calls.append((fn, args))
        batch.call_futures.append(future)
        return future

    def _hand_off(self) -> None:
        batch = self._batch
        if not (batch.futures or batch.call_futures) or self._pipe is None or self._pipe.is_closing():
            return  # nothing to send, or no writer yet: `start` sends it
        self._batch = _Batch()
        data = pickle.dumps(Batch(batch.orders, batch.calls), pickle.HIGHEST_PROTOCOL)
        self._pipe.write(_HEADER.pack(len(data)) + data)
        self._in_flight.append(batch)

    def _answered(self, answers: list[Answer]) -> None:
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

    def _lost(self) -> None:
        """The writer process closed its pipe: it stopped, or died."""
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if self._pipe is not None:
            self._pipe.close()
        self._pipe = None
        if self._stopping:
            return
        self._fail_in_flight(RuntimeError("the writer process died"))
        self._restarting = self._loop.create_task(self._restart())

    async def _restart(self) -> None:
        await self._loop.run_in_executor(None, self._process.join)
        logger.error("the writer process died (exit code %s); starting a new one", self._process.exitcode)
        self._lock.release_of(WRITER)  # if it died holding it
        await asyncio.sleep(RESTART_DELAY_S)
        if self._stopping:
            return
        try:
            await self.start()
        except Exception:
            logger.exception("could not start a new writer process")

    def _fail_in_flight(self, error: BaseException) -> None:
        """Fail every batch sent and not answered (and, when stopping, the one
        never sent): none of their orders gets an ack."""
        batches = [*self._in_flight, self._batch] if self._stopping else [*self._in_flight]
        self._in_flight.clear()
        notify: set[Callable[[], None]] = set()
        for batch in batches:
            for future in (*batch.futures, *batch.call_futures):
                _resolve(future, None, error)
            notify |= batch.notify
        for callback in notify:
            callback()


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Answers(asyncio.Protocol):
    """Reads the writer's framed answers off its pipe."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        answers: list[Answer] = []
        while len(buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf)
            if len(buf) < _HEADER.size + size:
                break
            answers += pickle.loads(buf[_HEADER.size : _HEADER.size + size])
            del buf[: _HEADER.size + size]
        if answers:
            self._writer._answered(answers)

    def connection_lost(self, exc: Exception | None) -> None:
        self._writer._lost()
