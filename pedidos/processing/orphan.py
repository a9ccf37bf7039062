"""A worker whose server died ends at once, with the programs its call started.

A server killed with `kill -9` (or crashed) leaves its workers behind. One
that is waiting for work notices by itself and exits; one in the middle of a
call or of the simulated work used to run it to the end. Meanwhile a
restarted server (or another node, on PostgreSQL) hands the same order back
and a worker of its own starts it: one order, two workers at once, against
"each order is processed by one worker at a time". The orphan's late
writes were refused, but its side effects (a mail sent twice, a program run
twice) were not. So it ends as soon as its server is gone: the work in hand
is an interrupted attempt, which the next start redoes, as after a crash.

On Linux the kernel tells the worker the moment its server dies
(`PR_SET_PDEATHSIG`), long before any new server can have started. The
signal also comes when the thread of the server that started the worker ends
while the server lives on, so the handler checks that the server is really
gone. A Python handler runs only once the main thread is back in the
interpreter, and a call inside C code that retries on EINTR (`os.system`, a
database driver's query) may not be back for long: a thread looks every
`PARENT_CHECK_S` too, on every system, and is all there is off Linux.

On a database shared by many nodes the server may also be alive and yet gone
for the service: paused, or cut off from the database past its lease, while
another node redoes its orders. A worker at work then ends the same way
(`LeaseWatch`; why, in storage/lease.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from pedidos.processing.proctree import kill_descendants
from pedidos.storage.lease import FENCE_CHECK_S, FENCED_EXIT, NodeLease

logger = logging.getLogger(__name__)

PARENT_CHECK_S = 0.5  # how often a worker looks whether its server is alive (besides the kernel's notice)
ORPHAN_SIGNAL = signal.SIGUSR2  # the kernel's notice; unused by the server and its workers otherwise
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_server(server_pid: int) -> None:
    """In a worker, first thing after its signal set-up: end this process the
    moment `server_pid` is gone (if it is gone already, now)."""

    def on_notice(_signum: int, _frame: Any) -> None:
        if os.getppid() != server_pid:
            _end(_GONE)

    signal.signal(ORPHAN_SIGNAL, on_notice)
    _ask_the_kernel()
    threading.Thread(target=_watch, args=(server_pid,), name="pedidos-orphan-watch", daemon=True).start()
    if os.getppid() != server_pid:  # it died before the notice was asked for
        _end(_GONE)


def _ask_the_kernel() -> None:
    """Linux: the notice at the server's death. Elsewhere (no prctl) the thread alone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(ORPHAN_SIGNAL), 0, 0, 0)


class LeaseWatch:
    """In a worker of a node on a shared database: ends this process when its
    node's lease runs out, or the node registers anew, while it is
    `working()` on what it claimed (lease.py)."""

    def __init__(self, lease: NodeLease, worker: int) -> None:
        self.lease = lease
        self._worker = worker
        self._working: int | None = None  # the generation claimed under, while at work
        # Taken to decide to end and to leave `working()`: a call that has just
        # returned is not ended on its way to record its result.
        self._deciding = threading.Lock()
        self._at_work = threading.Event()
        threading.Thread(target=self._watch, name="pedidos-lease-watch", daemon=True).start()

    @contextlib.contextmanager
    def working(self, generation: int) -> Iterator[None]:
        """Around a call or the simulated work on orders claimed under `generation`."""
        if not self.lease.holds(generation):  # not started yet: the watch would come too late
            self._fence()
        self._working = generation
        self._at_work.set()
        try:
            yield
        finally:
            with self._deciding:
                self._at_work.clear()
                self._working = None

    def _watch(self) -> None:
        while True:
            self._at_work.wait()
            with self._deciding:
                generation = self._working
                if generation is not None and not self.lease.holds(generation):
                    self._fence()
            time.sleep(FENCE_CHECK_S)

    def _fence(self) -> None:
        self.lease.fencing(self._worker)
        _end(_LEASE_LOST, FENCED_EXIT)


def _watch(server_pid: int) -> None:
    while os.getppid() == server_pid:
        time.sleep(PARENT_CHECK_S)
    _end(_GONE)


_GONE = "the server is gone; this worker ends, and the programs its call started have"
_LEASE_LOST = (
    "this node's lease ran out under this worker (its server paused, or cut off from the database), "
    "and another node may redo its orders: it ends, and the programs its call started have"
)


def _end(why: str, status: int = 1) -> None:
    # The programs first and the exit whatever happens: a log write may block
    # (nobody reads stderr any more) or fail (re-entered from the handler).
    # Again after the log line: the call runs on meanwhile in the main thread,
    # and may have started a program since.
    try:
        kill_descendants(os.getpid())
        logger.warning("%s", why)
        kill_descendants(os.getpid())
    finally:
        os._exit(status)
