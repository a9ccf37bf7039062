"""`--limite-tarea`: which worker has been on one call for too long.

The server, not the worker, keeps the time: a task stuck in C code or in an
endless loop cannot be trusted to notice its own deadline. A worker reports
each claim when it makes it (one order at a time with a task); if its report
that the chunk is done has not come within the limit, the worker is killed
and replaced as after a crash, and the order counts a failed attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pedidos.storage.base import Claim


class Deadlines:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit_s: float,
        on_overtime: Callable[[int, Claim], None],
    ) -> None:
        self.limit_s = limit_s
        self._loop = loop
        self._on_overtime = on_overtime
        self._running: dict[int, tuple[Claim, asyncio.TimerHandle]] = {}
        self._over: dict[int, Claim] = {}  # workers killed over the limit: the claim they held

    def started(self, claim: Claim) -> None:
        self.ended(claim.worker)
        handle = self._loop.call_later(self.limit_s, self._expired, claim)
        self._running[claim.worker] = (claim, handle)

    def ended(self, worker: int) -> None:
        running = self._running.pop(worker, None)
        if running is not None:
            running[1].cancel()

    def overtime(self, worker: int) -> Claim | None:
        """The claim a worker was killed over, once its death is noticed."""
        self.ended(worker)
        return self._over.pop(worker, None)

    def close(self) -> None:
        for worker in list(self._running):
            self.ended(worker)

    def _expired(self, claim: Claim) -> None:
        running = self._running.get(claim.worker)
        if running is None or running[0] != claim:
            return
        del self._running[claim.worker]
        self._over[claim.worker] = claim
        self._on_overtime(claim.worker, claim)
