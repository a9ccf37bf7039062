"""The server's side of processing: the pool, the dispatcher and the events
between them, and the stop; what happens when a worker dies is handback.py's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from datetime import datetime, timezone

from pedidos.events import (
    FAILED,
    FINISHED,
    RECEIVED,
    REQUEUED,
    RETRIED,
    RETRYING,
    STARTED,
    WORKER_IDLE,
    Event,
    EventBus,
)
from pedidos.processing.deadlines import Deadlines
from pedidos.processing.dispatch import Dispatcher
from pedidos.processing.handback import HandBack
from pedidos.processing.pool import STOP_POLL_S, WorkerPool
from pedidos.processing.worker import CLAIMED, DONE, Report, WorkerConfig
from pedidos.processing.worker import FAILED as FAILED_ATTEMPT
from pedidos.storage.base import Claim, Storage
from pedidos.wording import count

logger = logging.getLogger(__name__)

SWEEP_S = 2.0
BATCH_CHUNK = 1000  # ids per chunk at most when orders take no time
# With no work time, a worker's next chunk gathers for up to this long: fewer
# chunks, each costing the server one queue put and two messages, and the
# worker two commits. Measured with `python3 -m pedidos.bench --only intake,e2e`:
# the server's helper threads from 12% to 5% of a core, the workers from 28% to 18%.
GATHER_S = 0.01
# A stop hands back what the workers it had to kill held: one quick write, but
# a database that hangs (a writer stuck in fsync on a dead disk) would hold the
# stop for ever. Past this the next start takes those orders up, as after a crash.
HAND_BACK_S = 5.0


class Processing(HandBack):
    def __init__(
        self,
        workers: int,
        config: WorkerConfig,
        bus: EventBus,
        storage: Storage,
        task_limit_s: float | None = None,
    ) -> None:
        """`task_limit_s`: `--limite-tarea`, for a `config.task` (None: no limit)."""
        self._loop = asyncio.get_running_loop()
        self._retry = config.retry
        self._bus = bus
        self._storage = storage
        self._stopping = False
        self._killing = False
        self._handing_back: asyncio.Task[None] | None = None
        self.pool = WorkerPool(workers, config, self._loop, self._on_messages, self._on_death)
        # Simulated work goes one order at a time, with the next one already
        # queued so that no worker idles. Orders that take no time go in
        # chunks of whatever piled up while the worker did its last one: like
        # group commit, the busier the server, the fewer commits per order.
        # A task's call may take any time (or hang until --limite-tarea, or
        # for ever without it): an order queued behind it would wait as long
        # while other workers idle, so a task's worker gets its next order
        # only once it is free (a round trip through the server between two calls).
        instant = config.task is None and config.work_time[1] == 0
        self.dispatcher = Dispatcher(
            self.pool.send,
            storage.pending_ids,
            max_chunk=BATCH_CHUNK if instant else 1,
            per_worker=1 if instant or config.task is not None else 2,
            gather_s=GATHER_S if instant else 0.0,
        )
        self._sweeper: asyncio.TimerHandle | None = None
        self._replacing: set[asyncio.Task[None]] = set()
        self._retries: set[asyncio.TimerHandle] = set()  # orders waiting for their retry time
        self._deadlines = None
        if config.task is not None and task_limit_s:
            self._deadlines = Deadlines(self._loop, task_limit_s, self._on_overtime)
        bus.subscribe(self._on_event)

    def start(self) -> None:
        self.pool.start()
        for number in self.pool.slots:
            self.dispatcher.worker_ready(number)
        self._sweep()

    async def stop(self, timeout: float) -> None:
        """Let each worker finish the chunk in hand; hand back what the slow
        ones held, without counting it as an attempt. After `kill_now`, hand
        back nothing: the next start takes those orders up, as after a crash."""
        self._stopping = True
        busy = self.dispatcher.busy_workers()
        self.dispatcher.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        # The deadlines of the calls in hand run on: a stop lets a call finish,
        # not outlast `--limite-tarea`. One over it is stopped and counts a
        # failure, as at any other time (`_on_overtime`), instead of holding the
        # stop up to its timeout and going back uncounted, or ending `listo`.
        for handle in self._retries:
            handle.cancel()
        # The replacements under way start no worker now, but their hand-back
        # goes on while the others finish: a worker dead just before the stop
        # may hold the SQLite write lock, which the others need.
        if busy and timeout > 0:
            logger.info(
                "waiting for %s to finish %s orders (up to %g s)",
                count(busy, "worker"),
                "its" if busy == 1 else "their",
                timeout,
            )
        killed = await self._loop.run_in_executor(None, self.pool.stop, timeout, self._crashed_while_stopping)
        if self._deadlines is not None:
            self._deadlines.close()
        if self._killing:
            for task in list(self._replacing):
                task.cancel()
            if killed:
                logger.warning(
                    "stopped without waiting: %s killed; the orders in hand go back to pending "
                    "at the next start",
                    count(len(killed), "worker"),
                )
            return
        if killed:
            self._handing_back = self._loop.create_task(self._hand_back_stopped(killed))
        pending = {*self._replacing, *([self._handing_back] if killed else [])}
        if not pending:
            return
        await asyncio.wait(pending, timeout=HAND_BACK_S)
        for task in list(self._replacing):
            task.cancel()
        if killed and not self._handing_back.done():
            self._handing_back.cancel()
            logger.error(
                "the database did not take back the orders of %s within %g s; the next start takes them up",
                count(len(killed), "worker"),
                HAND_BACK_S,
            )

    async def _hand_back_stopped(self, killed: list[int]) -> None:
        for number in killed:
            try:
                await self._storage.hand_back(number, crashed=False)
            except Exception as exc:
                logger.error("could not hand back the orders of worker %d: %s", number, exc)

    def _crashed_while_stopping(self, number: int, exitcode: int | None) -> None:
        """From the pool's stop, in its thread: worker `number` died while the
        others finish theirs. What it held goes back now, as after any death:
        it may have died holding the SQLite write lock, which the others need
        to record what they finish (or they wait until they are killed, and
        their orders are done again at the next start)."""
        # As any death (`_replace`): one stopped by its node's lease, or over
        # the time limit, failed no attempt by dying.
        handing = asyncio.run_coroutine_threadsafe(self._replace(number, exitcode), self._loop)
        deadline = time.monotonic() + HAND_BACK_S
        while not handing.done() and not self._killing and time.monotonic() < deadline:
            concurrent.futures.wait([handing], timeout=STOP_POLL_S)
        if not handing.done():
            handing.cancel()
            logger.error("the orders of worker %d were not handed back; the next start takes them up", number)

    def kill_now(self) -> None:
        """A second signal: end the workers now, whatever they hold, and stop
        waiting for the database to take back what they held."""
        self._killing = True
        self.pool.kill_now()
        if self._handing_back is not None:
            self._handing_back.cancel()
        for task in list(self._replacing):
            task.cancel()

    def _sweep(self) -> None:
        self.dispatcher.sweep()
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def _on_event(self, event: Event) -> None:
        if event.kind in (RECEIVED, REQUEUED, RETRIED) and not self._stopping:
            self.dispatcher.add(event.ids)

    def _on_messages(self, reports: list[Report]) -> None:
        # Also during a stop (read then by the pool's stop): a call claimed as
        # the stop began is held to --limite-tarea too. The dispatcher is
        # closed by then, and left alone.
        for report in reports:
            if report.kind == CLAIMED:
                if report.taken:
                    self._bus.publish(Event(STARTED, report.taken, report.worker, report.at))
                    if self._deadlines is not None and report.at is not None:
                        self._deadlines.started(Claim(report.worker, report.at, report.taken))
            elif report.kind == FAILED_ATTEMPT:
                if not self._stopping:
                    self.dispatcher.released(report.taken)
                self._failed_attempt(report.taken, report.worker, report.at)
            elif report.kind == DONE:
                if self._deadlines is not None:
                    self._deadlines.ended(report.worker)
                if not self._stopping:
                    self.dispatcher.finished(report.worker, report.chunk)
                if report.taken:
                    self._bus.publish(Event(FINISHED, report.taken, report.worker, report.at))
                else:  # nothing listo, yet the worker is free: the panel must hear it
                    self._bus.publish(Event(WORKER_IDLE, (), report.worker))

    def _failed_attempt(self, ids: tuple[int, ...], worker: int, retry_at: str | None) -> None:
        """A task failed on `ids`: `fallido` now (retry_at None), or wanted
        again at `retry_at`; the dispatcher hears of them only then."""
        if retry_at is None:
            self._bus.publish(Event(FAILED, ids, worker))
            return
        self._bus.publish(Event(RETRYING, ids, worker, retry_at))
        wait = (datetime.fromisoformat(retry_at) - datetime.now(timezone.utc)).total_seconds()
        handle: asyncio.TimerHandle | None = None

        def due() -> None:
            self._retries.discard(handle)  # type: ignore[arg-type]
            if not self._stopping:
                self.dispatcher.add(ids)

        handle = self._loop.call_later(max(0.0, wait), due)
        self._retries.add(handle)
