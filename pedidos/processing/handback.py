"""What happens when a worker dies: what it held goes back to `pendiente`
(or counts a failure, or ends `fallido`), and another worker takes its place.

A mixin of `Processing` (supervisor.py), which brings the pool, the
dispatcher, the storage and the loop. A death is one of four kinds, each
counted as what it was: a crash (an attempt, `intentos` + 1), a call stopped at
`--limite-tarea` (a failed attempt, `fallos` + 1, recorded here before the
hand-back), a worker stopped by its node's lease (no attempt: lease.py), or a
death during a graceful stop (handed back, no replacement).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pedidos.domain import Estado
from pedidos.events import FAILED, REQUEUED, WORKER_DIED, WORKER_STARTED, Event, EventBus
from pedidos.logsetup import Repeating
from pedidos.processing.deadlines import Deadlines
from pedidos.processing.dispatch import Dispatcher
from pedidos.processing.pool import WorkerPool
from pedidos.processing.retry import RetryPolicy
from pedidos.storage.base import Claim, Storage
from pedidos.storage.lease import FENCED_EXIT
from pedidos.wording import count

logger = logging.getLogger(__name__)
# The database away: a dead worker's hand-back is retried once a second, and
# logged once per REPEAT_S (logsetup.py), not once per try for the whole outage.
_UNREACHABLE = Repeating(logger)
RETRY_S = 1.0


class HandBack:
    _loop: asyncio.AbstractEventLoop
    _bus: EventBus
    _storage: Storage
    _retry: RetryPolicy
    _stopping: bool
    _killing: bool
    _replacing: set[asyncio.Task[None]]
    _deadlines: Deadlines | None
    pool: WorkerPool
    dispatcher: Dispatcher
    _failed_attempt: Callable[[tuple[int, ...], int, str | None], Any]

    def _on_death(self, number: int, exitcode: int | None) -> None:
        # Also once the stop began (the monitor saw the death just before it
        # stopped): what it held is handed back; `_replace` starts no worker then.
        if self._killing:
            return
        task = self._loop.create_task(self._replace(number, exitcode))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    def _on_overtime(self, worker: int, claim: Claim) -> None:
        # Also during a stop: the pool's stop then sees the death, and
        # `_replace` records the failure (and starts no worker).
        if self._killing:
            return
        if self._stopping and self.pool.exited(worker):
            # It finished its call in time and left: during a stop its report
            # is read by the pool's stop, in slices, and may not have ended
            # the deadline yet.
            return
        logger.warning(
            "worker %d: order %s ran over the task time limit (%g s); stopping the worker",
            worker,
            ",".join(map(str, claim.ids)),
            self._deadlines.limit_s,  # type: ignore[union-attr]
        )
        self.pool.kill(worker)

    async def _fail_overtime(self, claim: Claim) -> int:
        """The orders of a worker killed over the time limit: a failed attempt
        each (not a crash), retried or `fallido` as the retry policy says.
        Returns how many were still its to fail."""
        limit = self._deadlines.limit_s  # type: ignore[union-attr]
        error = f"TiempoAgotado: la tarea pasó de {limit:g} s y se detuvo su worker"
        failed = 0
        for order_id in claim.ids:
            while True:
                try:
                    order = await self._storage.get(order_id)
                    fallos = order["fallos"] if order is not None else 0
                    retry_at = self._retry.retry_at(fallos + 1)
                    one = Claim(claim.worker, claim.at, (order_id,))
                    changed = await self._storage.fail(one, error, retry_at)
                    break
                except Exception as exc:
                    _UNREACHABLE.error(
                        "could not record the time limit of order %d: %s",
                        order_id,
                        exc,
                        key=("limit", order_id),
                    )
                    await asyncio.sleep(RETRY_S)
            if changed:
                failed += 1
                self._failed_attempt((order_id,), claim.worker, retry_at)
        return failed

    def _fenced(self, number: int, exitcode: int | None) -> bool:
        """Whether worker `number`, ended with `exitcode`, was stopped by its
        node's lease: its status says so and so does its mark in the lease (a
        task's own os._exit(FENCED_EXIT) leaves none)."""
        lease = self._storage.lease
        marked = lease is not None and lease.fenced(number)  # read always: the mark is cleared
        return marked and exitcode == FENCED_EXIT

    def _handed_back(self, number: int, changed: list[tuple[int, Estado]], how: str, over: int = 0) -> None:
        """Say what a dead worker's orders became: a log line and the events.
        `over`: failed attempts recorded for a call stopped at its time limit
        (before the hand-back, which then finds those orders no longer its)."""
        requeued = tuple(i for i, estado in changed if estado == Estado.PENDIENTE)
        failed = tuple(i for i, estado in changed if estado == Estado.FALLIDO)
        recorded = f"{count(over, 'failed attempt')} recorded, " if over else ""
        logger.warning(
            "worker %d %s; %s%s handed back, %d failed",
            number,
            how,
            recorded,
            count(len(requeued), "order"),
            len(failed),
        )
        self._bus.publish(Event(WORKER_DIED, requeued + failed, number))
        if failed:
            self._bus.publish(Event(FAILED, failed, number))
        if requeued:
            self._bus.publish(Event(REQUEUED, requeued, number))

    async def _replace(self, number: int, exitcode: int | None) -> None:
        """Hand back what the dead worker held, then start its replacement
        (none once the stop began)."""
        in_queue = self.dispatcher.worker_gone(number)
        overtime = self._deadlines.overtime(number) if self._deadlines is not None else None
        over = await self._fail_overtime(overtime) if overtime is not None else 0
        # A worker stopped by its node's lease (lease.py) failed no attempt;
        # if the node was reaped, the reaper counted one already.
        fenced = self._fenced(number, exitcode)
        while True:
            try:
                changed = await self._storage.hand_back(number, crashed=not fenced)
                break
            except Exception as exc:
                _UNREACHABLE.error(
                    "could not hand back the orders of worker %d: %s", number, exc, key=("hand back", number)
                )
                await asyncio.sleep(RETRY_S)
        how = (
            "stopped by its node's lease"
            if fenced
            else "stopped over the task time limit"
            if overtime is not None
            else "died while stopping"
            if self._stopping
            else "died"
        )
        self._handed_back(number, changed, f"{how} (exit code {exitcode})", over)
        if not self._stopping:
            self.dispatcher.add(in_queue)
            self.pool.spawn(number)
            self.dispatcher.worker_ready(number)
            self._bus.publish(Event(WORKER_STARTED, (), number))
