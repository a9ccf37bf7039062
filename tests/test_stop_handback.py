"""Processing.stop and the deaths around it, with a stand-in pool and storage:
a worker dead just before the stop, or seen dead by the monitor once it began,
or stopped by its node's lease during it, has what it held handed back while
the others finish theirs (on SQLite the hand-back frees the write lock they
need), and as its death was."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import threading
import time
from typing import Any

import pytest
from conftest import wait_for

from pedidos.events import EventBus
from pedidos.processing.pool import WorkerPool, WorkerSlot
from pedidos.processing.supervisor import Processing
from pedidos.processing.worker import WorkerConfig
from pedidos.storage.lease import FENCED_EXIT


class FencedLease:
    def __init__(self, numbers: set[int]) -> None:
        self.numbers = numbers

    def fenced(self, number: int) -> bool:
        return number in self.numbers


class Storage:
    def __init__(self, lease: Any = None) -> None:
        self.lease = lease
        self.handed: list[tuple[int, bool]] = []
        self.event = threading.Event()

    async def pending_ids(self, from_id: int, limit: int) -> list[int]:
        return []

    async def hand_back(self, worker: int, crashed: bool) -> list[Any]:
        self.handed.append((worker, crashed))
        self.event.set()
        return []


class Pool:
    """Stands in for WorkerPool: `stop` runs `during(on_crash)` in its thread,
    then waits (as for the other workers) until a hand-back frees them."""

    def __init__(self, storage: Storage, during: Any = None) -> None:
        self.storage = storage
        self.during = during
        self.handed_while_stopping = False

    def stop(self, timeout: float, on_crash: Any = None) -> list[int]:
        if self.during is not None:
            self.during(on_crash)
        self.handed_while_stopping = self.storage.event.wait(3)
        return []

    def kill_now(self) -> None:
        pass


def stopped(
    storage: Storage, during: Any = None, dead_before: bool = False, second_signal_after: float | None = None
) -> tuple[list[Any], bool, float]:
    """Run a Processing's stop with a stand-in pool (`during(on_crash, p)` in its
    thread); `dead_before`: worker 1 died just before it. What was handed back,
    whether during the stop's wait for the others, and how long the stop took."""

    async def main() -> tuple[list[Any], bool, float]:
        p = Processing(1, WorkerConfig(None, (0.0, 0.0)), EventBus(), storage)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        hook = None if during is None else (lambda on_crash: during(on_crash, p, loop))
        p.pool = Pool(storage, hook)  # type: ignore[assignment]
        if dead_before:
            p._on_death(1, -9)
        if second_signal_after is not None:
            loop.call_later(second_signal_after, p.kill_now)
        started = time.monotonic()
        await p.stop(5)
        return storage.handed, p.pool.handed_while_stopping, time.monotonic() - started  # type: ignore[attr-defined]

    return asyncio.run(main())


class Hanging(Storage):
    """A hand-back that does not end (a hung disk); the others need nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.event.set()

    async def hand_back(self, worker: int, crashed: bool) -> list[Any]:
        await asyncio.sleep(60)
        return []


def test_a_worker_dead_just_before_the_stop_is_handed_back_during_it():
    """Its replacement had begun (the monitor saw it die), and the stop
    cancelled it before its hand-back: what it held, the write lock perhaps,
    stayed held while the others waited to be killed."""
    handed, during, _ = stopped(Storage(), dead_before=True)
    assert handed == [(1, True)] and during


def test_a_death_the_monitor_reports_once_the_stop_began_is_handed_back_during_it():
    def report(on_crash: Any, p: Processing, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(p._on_death, 1, -9)

    handed, during, _ = stopped(Storage(), report)
    assert handed == [(1, True)] and during


def test_a_worker_its_lease_stopped_during_the_stop_counts_no_crash():
    """FENCED_EXIT with its mark in the lease: no failed attempt, as outside a stop."""
    handed, _, _ = stopped(Storage(FencedLease({1})), lambda on_crash, p, loop: on_crash(1, FENCED_EXIT))
    assert handed == [(1, False)]


def test_a_second_signal_during_a_stop_time_hand_back_ends_it_at_once():
    _, _, took = stopped(Hanging(), lambda on_crash, p, loop: on_crash(1, -9), second_signal_after=0.3)
    assert took < 2


def test_a_second_signal_ends_the_wait_for_a_hand_back_begun_before_the_stop():
    """A worker dead just before the stop: its hand-back hangs (a hung disk);
    a second signal must end the stop at once, not after HAND_BACK_S."""
    _, _, took = stopped(Hanging(), dead_before=True, second_signal_after=0.3)
    assert took < 2


def test_whether_a_worker_has_exited_is_told_by_a_pidfd_of_any_number():
    """`WorkerPool.exited` (asked by an overtime during a stop) with a pidfd
    numbered past select()'s 1023: a worker replaced while a thousand
    connections are open gets one. select() raised ValueError there, and the
    call over its limit went on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2048:
        if hard != resource.RLIM_INFINITY and hard < 2048:
            pytest.skip("the descriptor limit is under 2048")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd here")
    child = subprocess.Popen(["sleep", "60"])
    pidfd = os.pidfd_open(child.pid)
    high = os.dup2(pidfd, 1500)
    os.close(pidfd)
    loop = asyncio.new_event_loop()
    pool = WorkerPool(1, WorkerConfig(None, (0.0, 0.0)), loop, print, print)  # type: ignore[arg-type]
    try:
        pool.slots[1] = WorkerSlot(1, child, None, None, high)  # type: ignore[arg-type]
        assert not pool.exited(1)
        child.kill()
        wait_for(lambda: pool.exited(1), timeout=10)  # exited, not reaped
        assert child.returncode is None
    finally:
        child.kill()
        child.wait()
        os.close(high)
        os.close(pool._wake_r)
        os.close(pool._wake_w)
        loop.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
