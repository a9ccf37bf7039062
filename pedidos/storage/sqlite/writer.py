"""The event loop's side of the writer process (writer_process.py).

`Intake` (storage/intake.py) gathers what the loop submits, once per loop
iteration; this sends each batch to the writer process through pipe
transports that never block the loop, and hands the answers back. If the
writer process dies, the batches it had not answered fail (their clients get
an error, never an ack for an order that may not be stored) and a new writer
process starts.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any

from pedidos.storage.base import Ack, OutcomeUnknown
from pedidos.storage.intake import Answer, Batch, Intake
from pedidos.storage.sqlite.lock import WRITER, WriteLock
from pedidos.storage.sqlite.writer_process import Reply, Request, writer_main
from pedidos.wording import count

logger = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 30.0
_HEADER = struct.Struct("!i")  # a multiprocessing.Connection frame: length, then the bytes


class Writer:
    def __init__(
        self,
        db_path: str,
        files: tuple[tuple[str, tuple[int, int]], ...],
        lock: WriteLock,
        loop: asyncio.AbstractEventLoop,
        ack: Ack,
        on_stored: Callable[[tuple[int, ...]], None] | None,
        log_level: int = logging.INFO,
        log_format: str = "text",
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        """`on_commit(seconds)`: each group commit of new orders, with the
        time its transaction took in the writer process."""
        self._db_path = db_path
        # The database and its -wal and -shm, each with the identity it had when
        # the server opened it: the writer acknowledges nothing once one changes.
        self._files = files
        self._lock = lock
        self._ack = ack
        self._log_level = log_level
        self._log_format = log_format
        self._loop = loop
        self.on_commit = on_commit
        self._ctx = multiprocessing.get_context("spawn")
        self.intake = Intake(loop, self._send, on_stored)
        # The hot path: a new order goes from the service straight to the batcher.
        self.submit = self.intake.submit
        self.run = self.intake.run
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
                self._files,
                os.getpid(),
                requests_r,
                answers_w,
                self._lock,
                self._ack,
                self._log_level,
                self._log_format,
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
        self.intake.flush()  # what was submitted while it started

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Commit what was already submitted, then end the writer process;
        kill it if it takes longer than `timeout`."""
        self._stopping = True
        if self._restarting is not None:
            # Not cancelled: cut short inside `start`, it would leave a writer
            # process that nobody closes. It starts none once it sees `_stopping`.
            await self._restarting
        self.intake.flush()
        if self._pipe is not None:
            self._pipe.close()  # end of input: the writer answers what it has and exits
        if self._gone is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._gone), timeout)
            except asyncio.TimeoutError:
                logger.error("the writer did not stop in time; killing it")
                self._process.kill()
        if self._process is not None:
            await self._loop.run_in_executor(None, self._process.join)
        # Sent and never answered (the writer was killed, or died): maybe committed.
        self.intake.fail_in_flight(OutcomeUnknown("the writer stopped without answering"))
        self.intake.fail_in_flight(RuntimeError("the server stopped"), unsent=True)

    def _send(self, batch: Batch) -> bool:
        """Write a batch down the pipe; False while there is no writer to take it."""
        if self._pipe is None or self._pipe.is_closing():
            return False  # `start` sends it
        data = pickle.dumps(Request(batch.orders, batch.calls), pickle.HIGHEST_PROTOCOL)
        self._pipe.write(_HEADER.pack(len(data)) + data)
        return True

    def _lost(self) -> None:
        """The writer process closed its pipe: it stopped, or died."""
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if self._pipe is not None:
            self._pipe.close()
        self._pipe = None
        if self._stopping:
            return
        lost = self.intake.fail_in_flight(OutcomeUnknown("the writer process died"))
        if lost:
            logger.error(
                "the writer process died with %s in hand: they are answered that "
                "their outcome is unknown (committed or not)",
                count(lost, "request"),
            )
        self._restarting = self._loop.create_task(self._restart())

    async def _restart(self) -> None:
        await self._loop.run_in_executor(None, self._process.join)
        logger.error("the writer process died (exit code %s); starting a new one", self._process.exitcode)
        try:
            await self._loop.run_in_executor(None, self._lock.release_of, WRITER)  # if it died holding it
        except Exception:  # a new writer must start whatever happened here
            logger.exception("could not free the database lock the writer may have held")
        await asyncio.sleep(RESTART_DELAY_S)
        if self._stopping:
            return
        try:
            await self.start()
        except Exception:
            logger.exception("could not start a new writer process")


class _Answers(asyncio.Protocol):
    """Reads the writer's framed answers off its pipe."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        answers: list[Answer] = []
        commits: list[float] = []
        while len(buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf)
            if len(buf) < _HEADER.size + size:
                break
            reply: Reply = pickle.loads(buf[_HEADER.size : _HEADER.size + size])
            del buf[: _HEADER.size + size]
            answers += reply.answers
            if reply.commit_s is not None:
                commits.append(reply.commit_s)
        if answers:
            self._writer.intake.answered(answers)
        on_commit = self._writer.on_commit
        if on_commit is not None:
            for seconds in commits:
                on_commit(seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._writer._lost()
