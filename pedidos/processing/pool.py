"""The worker processes: starting them, hearing from them, noticing their death.

Each worker has its own task queue and its own pipe back. A process killed
while it reads a shared `multiprocessing.Queue` dies holding the queue's
internal lock and blocks every other reader; with one queue per worker, a
death costs only that worker's queue, which the pool replaces with the worker.

One monitor thread waits on every pipe and every process's death at once and
hands what it saw to the event loop in one call. A death is seen through the
process's pidfd where there is one (Linux): the sentinel is a pipe, and a
program the worker's call left running (a shell's `&`, a fork) holds its end
open, so the worker's death went unseen for as long as that program lived.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from pedidos.processing.proctree import handle, kill_tree
from pedidos.processing.worker import Report, WorkerConfig, worker_main

logger = logging.getLogger(__name__)

STOP_POLL_S = 0.05  # how often a stop that waits for a worker checks for `kill_now`


@dataclass
class WorkerSlot:
    """What the pool keeps of one worker."""

    number: int
    process: Any  # multiprocessing.Process
    tasks: Any  # multiprocessing.Queue
    events: Connection
    pidfd: int | None = None  # proctree.handle: signals reach this process or none
    gone: bool = field(default=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid


class WorkerPool:
    def __init__(
        self,
        size: int,
        config: WorkerConfig,
        loop: asyncio.AbstractEventLoop,
        on_messages: Callable[[list[Report]], None],
        on_death: Callable[[int, int | None], None],
    ) -> None:
        self.size = size
        self.config = config
        # spawn: the server starts workers while threads and an event loop
        # run, where fork would copy locks held by other threads.
        self._ctx = multiprocessing.get_context("spawn")
        # Set once, when the pool stops: a flag in shared memory that nothing
        # locks. A multiprocessing.Event reads its flag under a lock that every
        # worker shares: a worker killed inside `is_set()` left it held for
        # good, and every other worker, each replacement and the stop blocked.
        self._stop = self._ctx.Value("b", 0, lock=False)
        self._kill_now = threading.Event()
        self._loop = loop
        self._on_messages = on_messages
        self._on_death = on_death
        self.slots: dict[int, WorkerSlot] = {}
        self._slots_guard = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._monitor = threading.Thread(target=self._watch, name="pedidos-monitor", daemon=True)
        self._watching = True

    def start(self) -> None:
        for number in range(1, self.size + 1):
            self.spawn(number)
        self._monitor.start()

    def spawn(self, number: int) -> WorkerSlot:
        tasks = self._ctx.Queue()
        # Items left in a dead or stopped worker's queue must not keep the
        # server waiting at exit for a reader that will never come.
        tasks.cancel_join_thread()
        receiver, sender = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main,
            args=(number, os.getpid(), self.config, tasks, sender, self._stop),
            name=f"pedidos-worker-{number}",
            daemon=True,
        )
        process.start()
        sender.close()
        slot = WorkerSlot(number, process, tasks, receiver, handle(process.pid))
        with self._slots_guard:
            old = self.slots.get(number)
            self.slots[number] = slot
        if old is not None:
            _close(old)
        os.write(self._wake_w, b"w")
        logger.info("worker %d started (pid %d)", number, process.pid)
        return slot

    def alive(self) -> int:
        return sum(1 for slot in self.slots.values() if not slot.gone)

    def kill(self, number: int) -> None:
        """Stop worker `number` at once (SIGKILL): its death is then noticed
        and handled as any other."""
        # Under the guard: during a stop (a call over its time limit) this
        # runs on the event loop while `stop` closes the slots in its thread.
        with self._slots_guard:
            slot = self.slots.get(number)
            if slot is not None and not slot.gone:
                kill_tree(slot.process.pid, slot.pidfd)

    def exited(self, number: int) -> bool:
        """Whether worker `number` has ended, as far as its pidfd tells (never
        reaping it: during a stop only the stop's thread may). Without a
        pidfd (not Linux) this says False."""
        with self._slots_guard:
            slot = self.slots.get(number)
            if slot is None or slot.gone:
                return True
            if slot.pidfd is None:
                return False
            # Readable once it ended. poll, not select: a worker started while
            # a thousand connections are open has a pidfd past select's 1023.
            poller = select.poll()
            poller.register(slot.pidfd, select.POLLIN)
            return bool(poller.poll(0))

    def send(self, number: int, chunk: tuple[int, ...]) -> None:
        self.slots[number].tasks.put(chunk)

    def stop(self, timeout: float, on_crash: Callable[[int, int | None], None] | None = None) -> list[int]:
        """Ask every worker to finish its order in hand and exit; kill those
        still running after `timeout`. Returns the numbers that were killed.
        `on_crash(number, exitcode)` is called, in this thread, for a worker that dies
        of something else meanwhile (the monitor no longer reports deaths):
        what it held must be freed for the others to finish theirs.
        Blocking: run it off the event loop."""
        self._stop.value = 1
        # Only one thread may reap a child: stop the monitor first, or its
        # join and the one below race, and the loser sees a dead worker alive.
        self._watching = False
        os.write(self._wake_w, b"s")
        if self._monitor.is_alive():
            self._monitor.join()
        slots = list(self.slots.values())
        for slot in slots:
            if not slot.gone:
                slot.tasks.put(None)
        killed = []
        deadline = self._loop.time() + timeout
        running = [slot for slot in slots if not slot.gone]
        # All at once, in slices: `kill_now` (a second signal) must not wait
        # for the deadline, and a crash must be seen while the others wait.
        while running and not self._kill_now.is_set():
            # The reports too, now that the monitor is gone: a claim made as
            # the stop began must still start its --limite-tarea deadline. Read
            # before the deaths, so that a dead worker's claim comes first.
            self._hand_on(running)
            for slot in [slot for slot in running if not slot.process.is_alive()]:
                running.remove(slot)
                if slot.process.exitcode != 0 and on_crash is not None:
                    on_crash(slot.number, slot.process.exitcode)
            left = deadline - self._loop.time()
            if not running or left <= 0:
                break
            running[0].process.join(min(left, STOP_POLL_S))
        for slot in slots:
            if slot.process.is_alive():
                if not self._kill_now.is_set():
                    logger.warning("worker %d did not stop in time; killing it", slot.number)
                kill_tree(slot.process.pid, slot.pidfd)
                slot.process.join()
                killed.append(slot.number)
        with self._slots_guard:
            for slot in slots:
                _close(slot)
        os.close(self._wake_r)
        os.close(self._wake_w)
        return killed

    def _hand_on(self, slots: list[WorkerSlot]) -> None:
        """Hand what `slots` reported to the loop (from `stop`'s thread)."""
        messages: list[Report] = []
        for slot in slots:
            messages += _drain(slot.events)
        if messages:
            self._loop.call_soon_threadsafe(self._on_messages, messages)

    def kill_now(self) -> None:
        """Make a running `stop` kill the workers at once (thread-safe)."""
        self._kill_now.set()

    def _watch(self) -> None:
        while self._watching:
            with self._slots_guard:
                live = [slot for slot in self.slots.values() if not slot.gone]
            by_key: dict[Any, tuple[str, WorkerSlot]] = {}
            for slot in live:
                by_key[slot.events] = ("events", slot)
                by_key[slot.pidfd if slot.pidfd is not None else slot.process.sentinel] = ("death", slot)
            ready = wait([self._wake_r, *by_key], timeout=1.0)
            messages: list[Report] = []
            deaths: list[tuple[int, int | None]] = []
            for key in ready:
                if key == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                kind, slot = by_key[key]
                if kind == "events":
                    messages += _drain(slot.events)
            for key in ready:
                if key in by_key and by_key[key][0] == "death":
                    slot = by_key[key][1]
                    messages += _drain(slot.events)  # what it said before dying
                    slot.process.join()
                    slot.gone = True
                    deaths.append((slot.number, slot.process.exitcode))
            # Deaths even once the stop began: `stop` no longer sees a worker
            # whose death this loop took (`gone`), and what it held must go back.
            # The reports too: a claim made as the stop began starts its
            # --limite-tarea deadline.
            if deaths or messages:
                self._loop.call_soon_threadsafe(self._deliver, messages, deaths)

    def _deliver(self, messages: list[Report], deaths: list[tuple[int, int | None]]) -> None:
        if messages:
            self._on_messages(messages)
        for number, exitcode in deaths:
            self._on_death(number, exitcode)


def _drain(conn: Connection) -> list[Report]:
    messages = []
    try:
        while conn.poll():
            messages.append(conn.recv())
    except (EOFError, OSError):
        pass  # the worker is gone; its sentinel reports that
    return messages


def _close(slot: WorkerSlot) -> None:
    slot.events.close()
    slot.tasks.close()
    slot.gone = True  # a later kill() must not fall back to a pid that may be another's
    if slot.pidfd is not None:
        os.close(slot.pidfd)
        slot.pidfd = None
