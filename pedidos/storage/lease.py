"""A node's lease as its worker processes see it (PostgreSQL, contract section 9).

Once a node has not renewed its lease for `--lease` seconds, another node
declares it dead and hands its orders to its own workers. A worker of the
first node still in the middle of one of them (its server paused, or cut off
from the database) would go on running it meanwhile: one order in two workers
at once, against "each order is processed by one worker of one node at a
time", and a task's side effects done twice over. The claim itself is safe
(it checks the lease in the database), and so are the late writes (each
checks its claim token); the running call is not. So the server publishes in
shared memory until when its last renewal holds, a margin short of when the
others may reap it, and a worker holding orders past that moment ends at once
with the programs its call started, as an orphaned worker does
(processing/orphan.py): an interrupted attempt, which the other node redoes.

The moment is on CLOCK_MONOTONIC (`time.monotonic()`), one clock for every
process of a machine, and taken when the renewal was *sent*: the database
starts the lease later than that, never earlier. A paused server cannot
publish, and its workers' own watch notices.
"""

from __future__ import annotations

import multiprocessing
import time

FENCE_CHECK_S = 0.05  # how often a worker holding orders looks at its node's lease
MAX_MARGIN_S = 1.0


def margin(lease: float) -> float:
    """How long before the others may reap this node its workers stop: the
    watch's period and a process's exit, with room to spare. A quarter of
    the lease at most: a node renews three times per lease (nodes.py), so
    its workers stop only after at least two renewals in a row failed."""
    return min(MAX_MARGIN_S, lease / 4)


class NodeLease:
    """Until when this node's claims are its own. Picklable while a worker
    process is spawned (it is shared memory), and only then."""

    def __init__(self, lease: float) -> None:
        self.lease = lease
        # 0: nothing holds before the node's name is taken (registration).
        self._until = multiprocessing.get_context("spawn").RawValue("d", 0.0)

    def renewed(self, sent_at: float) -> None:
        """A registration or renewal sent at `sent_at` (time.monotonic()) committed."""
        self._until.value = max(self._until.value, sent_at + self.lease - margin(self.lease))

    @property
    def until(self) -> float:
        return self._until.value

    def holds(self) -> bool:
        return time.monotonic() < self._until.value
