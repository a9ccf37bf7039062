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
others may reap it, and a worker working on an order past that moment ends at
once with the programs its call started, as an orphaned worker does
(processing/orphan.py), with exit status FENCED_EXIT.

Ending short of the lease means ending sometimes when no one reaped the node
(a renewal held up past the margin, a node alone through a database outage).
The server then hands the orders back uncounted: a fenced call is no failed
attempt. When the node *was* reaped, the reaper counted the attempt already.

The deadline may move on again once the node registers anew, and a worker that
did not look in time (a task inside one long C call holds the interpreter
lock its watch needs) would then see a lease that holds. So a registration
after a lost lease also counts a new `generation`: work claimed under an older
one ends whatever the deadline says.

The clock is CLOCK_BOOTTIME where there is one (it goes on while the machine
is suspended, as the database's does; CLOCK_MONOTONIC stops), one clock for
every process of a machine, read when the renewal was *sent*: the database
starts the lease later than that, never earlier.
"""

from __future__ import annotations

import multiprocessing
import time

FENCE_CHECK_S = 0.05  # how often a worker at work looks at its node's lease
MAX_MARGIN_S = 1.0
CLAIM_HEADROOM_S = 0.5  # a worker claims only with this much of the lease left (less for short leases)
FENCED_EXIT = 75  # a worker's exit status when its node's lease ran out under it (EX_TEMPFAIL)
FENCE_SLOTS = 4096  # workers numbered past this are never told apart from a crash (none are)

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)  # Linux


def now() -> float:
    """The machine's clock for leases, in seconds."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


def margin(lease: float) -> float:
    """How long before the others may reap this node its workers stop: the
    watch's period and a process's exit, with room to spare; a quarter of the
    lease at most."""
    return min(MAX_MARGIN_S, lease / 4)


class NodeLease:
    """Until when this node's claims are its own, and under which registration.
    Picklable while a worker process is spawned (it is shared memory), and only then."""

    def __init__(self, lease: float) -> None:
        self.lease = lease
        context = multiprocessing.get_context("spawn")
        # 0: nothing holds before the node's name is taken (registration).
        self._until = context.RawValue("d", 0.0)
        self._generation = context.RawValue("q", 0)
        # A mark per worker number, set by the watch before it ends the worker:
        # the server tells that end from a task's own os._exit(FENCED_EXIT),
        # which must count as a crash. One writer per slot, so no lock (a lock
        # held by a process killed while holding it would be held for good).
        self._fenced = context.RawArray("b", FENCE_SLOTS)

    def renewed(self, sent_at: float) -> None:
        """A registration or renewal sent at `sent_at` (`now()`) committed."""
        self._until.value = max(self._until.value, sent_at + self.lease - margin(self.lease))

    def lost(self) -> None:
        """The node was declared dead: whatever its workers claimed before is no longer theirs."""
        self._generation.value += 1

    def fencing(self, worker: int) -> None:
        """In worker number `worker`, about to end for this lease."""
        if 0 <= worker < FENCE_SLOTS:
            self._fenced[worker] = 1

    def fenced(self, worker: int) -> bool:
        """In the server, once worker `worker` is gone: whether the watch ended it (and forget it)."""
        if not 0 <= worker < FENCE_SLOTS or not self._fenced[worker]:
            return False
        self._fenced[worker] = 0
        return True

    @property
    def generation(self) -> int:
        return int(self._generation.value)

    def holds(self, generation: int, headroom: float = 0.0) -> bool:
        """Whether work claimed under `generation` may go on for `headroom` s more."""
        return self._generation.value == generation and now() + headroom < self._until.value

    def claim_headroom(self) -> float:
        return min(CLAIM_HEADROOM_S, self.lease / 8)
