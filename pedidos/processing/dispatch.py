"""Which worker gets which pending order, and when.

The database holds the backlog; this keeps only a bounded window of it in
memory (`max_backlog` ids) and at most `per_worker` chunks in each worker's
queue. Ids that do not fit are left in the database and read back in batches
when the window drains, so a million pending orders never means a million
items in memory or in a queue.

An id may reach a worker twice (after a restart of the scan, say); that is
harmless, because a worker only claims orders that are still `pendiente`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from pedidos.logsetup import Repeating

logger = logging.getLogger(__name__)
unreadable = Repeating(logger)  # tried again every second or two while the database refuses

ReadPending = Callable[[int, int], Awaitable[list[int]]]
IDLE_SCAN_S = 1.0  # a worker idles while others hold orders: look in the database this often at most


class Dispatcher:
    def __init__(
        self,
        send: Callable[[int, tuple[int, ...]], None],
        read_pending: ReadPending,
        max_chunk: int,
        per_worker: int = 2,
        max_backlog: int = 10_000,
        gather_s: float = 0.0,
    ) -> None:
        self._send = send
        self._read_pending = read_pending
        self._max_chunk = max_chunk
        self._per_worker = per_worker
        self._max_backlog = max_backlog
        self._backlog: deque[int] = deque()
        self._known: set[int] = set()  # in the backlog or sent to a worker
        self._outstanding: dict[int, deque[tuple[int, ...]]] = {}
        # Pending ids from `_scan_from` on may be in the database only.
        self._scan_from: int | None = 0
        self._dropped_min: int | None = None
        self._refill: asyncio.Task[None] | None = None
        # A worker's next chunk waits this long after its last one unless a
        # full chunk is ready: fewer, larger chunks, each costing the same
        # two commits and two messages whatever its size.
        self._gather_s = gather_s
        self._last_sent: dict[int, float] = {}
        self._wake: asyncio.TimerHandle | None = None
        self._idle_scan_at = 0.0  # loop time of the next scan allowed with orders in hand

    def worker_ready(self, number: int) -> None:
        self._outstanding.setdefault(number, deque())
        self.pump()

    def worker_gone(self, number: int) -> list[int]:
        """Forget what was sent to a dead worker: those ids, to add back later."""
        ids = [i for chunk in self._outstanding.pop(number, ()) for i in chunk]
        self._known.difference_update(ids)
        return ids

    def add(self, ids: Iterable[int]) -> None:
        """Orders that became pending: new ones, or ones handed back."""
        known = self._known
        new = [order_id for order_id in dict.fromkeys(ids) if order_id not in known]
        room = 0 if self._scan_from is not None else max(0, self._max_backlog - len(self._backlog))
        taken, left = new[:room], new[room:]
        self._backlog.extend(taken)
        known.update(taken)
        if left:
            # Leave them in the database: the scan reads them back in order.
            low = min(left)
            self._scan_from = low if self._scan_from is None else min(self._scan_from, low)
            self._dropped_min = low if self._dropped_min is None else min(self._dropped_min, low)
        self.pump()

    def finished(self, number: int, chunk: tuple[int, ...]) -> None:
        """Worker `number` is done with `chunk` (processed or skipped)."""
        chunks = self._outstanding.get(number)
        if chunks and chunk in chunks:
            chunks.remove(chunk)
        self._known.difference_update(chunk)
        self.pump()

    def released(self, ids: Iterable[int]) -> None:
        """A worker let go of these ids before the end of their chunk (a
        failed attempt): they may be added again, however soon that comes."""
        self._known.difference_update(ids)

    def sweep(self) -> None:
        """Look in the database again when a worker has nothing to do: catches
        pending orders that reached the table some other way (another node took
        them in). Not only when nothing at all is in hand: a worker on a long
        or hung call would keep its order in hand, and this node from ever
        seeing the others' orders while its other workers idle."""
        if self._scan_from is None and not self._backlog:
            now = asyncio.get_running_loop().time()
            if not self._known:
                self._scan_from = 0
            elif now >= self._idle_scan_at and any(not chunks for chunks in self._outstanding.values()):
                # At most every IDLE_SCAN_S: on PostgreSQL every other node's
                # new orders call this, and between two chunks a worker looks idle.
                self._idle_scan_at = now + IDLE_SCAN_S
                self._scan_from = 0
        # Also restarts a scan whose read failed (a database away for a while)
        # when nothing else happens that would.
        self.pump()

    def pump(self) -> None:
        self._feed_workers()
        if (
            self._scan_from is not None
            and self._refill is None
            and len(self._backlog) < self._max_backlog // 2
        ):
            self._refill = asyncio.get_running_loop().create_task(self._refill_from_store())

    def _feed_workers(self) -> None:
        # Level by level: every idle worker gets work before a busy one gets
        # its next chunk queued behind the one in hand.
        now = asyncio.get_running_loop().time() if self._gather_s else 0.0
        for level in range(self._per_worker):
            for number, chunks in self._outstanding.items():
                if not self._backlog:
                    return
                if len(chunks) <= level:
                    ready_at = self._last_sent.get(number, -self._gather_s) + self._gather_s
                    if now < ready_at and len(self._backlog) < self._max_chunk:
                        self._wake_at(ready_at)
                        continue
                    size = min(self._chunk_size(), len(self._backlog))
                    chunk = tuple(self._backlog.popleft() for _ in range(size))
                    chunks.append(chunk)
                    self._last_sent[number] = now
                    self._send(number, chunk)

    def busy_workers(self) -> int:
        """How many workers have orders sent to them and not finished."""
        return sum(1 for chunks in self._outstanding.values() if chunks)

    def close(self) -> None:
        """Send nothing more: the workers are stopping."""
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        self._outstanding.clear()

    def _wake_at(self, when: float) -> None:
        if self._wake is None:
            self._wake = asyncio.get_running_loop().call_at(when, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self.pump()

    def _chunk_size(self) -> int:
        workers = max(1, len(self._outstanding))
        share = -(-len(self._backlog) // (workers * self._per_worker))
        return max(1, min(self._max_chunk, share))

    async def _refill_from_store(self) -> None:
        try:
            while self._scan_from is not None and len(self._backlog) < self._max_backlog // 2:
                start, want = self._scan_from, self._max_backlog // 2
                self._dropped_min = None
                ids = await self._read_pending(start, want)
                next_from = ids[-1] + 1 if len(ids) == want else None
                if self._dropped_min is not None:
                    # Ids that arrived during the read may be missing from it.
                    next_from = min(self._dropped_min, next_from or self._dropped_min)
                for order_id in ids:
                    if order_id not in self._known:
                        self._backlog.append(order_id)
                        self._known.add(order_id)
                self._scan_from = next_from
                self._feed_workers()
        except Exception as exc:
            unreadable.error("could not read pending orders, retrying: %s", exc, key=type(exc))
            await asyncio.sleep(1.0)
        finally:
            self._refill = None
