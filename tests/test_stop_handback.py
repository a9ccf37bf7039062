"""Processing.stop and the deaths around it, with a stand-in pool and storage:
a worker dead just before the stop, or seen dead by the monitor once it began,
or stopped by its node's lease during it, has what it held handed back while
the others finish theirs (on SQLite the hand-back frees the write lock they
need), and as its death was."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from pedidos.events import EventBus
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


async def processing(storage: Storage) -> Processing:
    return Processing(1, WorkerConfig(None, (0.0, 0.0)), EventBus(), storage)  # type: ignore[arg-type]


def test_a_worker_dead_just_before_the_stop_is_handed_back_during_it():
    """Its replacement had begun (the monitor saw it die), and the stop
    cancelled it before its hand-back: what it held, the write lock perhaps,
    stayed held while the others waited to be killed."""

    async def main() -> tuple[list[Any], bool]:
        storage = Storage()
        p = await processing(storage)
        p.pool = Pool(storage)  # type: ignore[assignment]
        p._on_death(1, -9)
        await p.stop(5)
        return storage.handed, p.pool.handed_while_stopping  # type: ignore[attr-defined]

    handed, during = asyncio.run(main())
    assert handed == [(1, True)]
    assert during


def test_a_death_the_monitor_reports_once_the_stop_began_is_handed_back_during_it():
    async def main() -> tuple[list[Any], bool]:
        storage = Storage()
        p = await processing(storage)
        loop = asyncio.get_running_loop()
        p.pool = Pool(storage, lambda on_crash: loop.call_soon_threadsafe(p._on_death, 1, -9))  # type: ignore[assignment]
        await p.stop(5)
        return storage.handed, p.pool.handed_while_stopping  # type: ignore[attr-defined]

    handed, during = asyncio.run(main())
    assert handed == [(1, True)]
    assert during


def test_a_worker_its_lease_stopped_during_the_stop_counts_no_crash():
    """FENCED_EXIT with its mark in the lease: no failed attempt, as outside a stop."""

    async def main() -> list[Any]:
        storage = Storage(FencedLease({1}))
        p = await processing(storage)
        p.pool = Pool(storage, lambda on_crash: on_crash(1, FENCED_EXIT))  # type: ignore[assignment]
        await p.stop(5)
        return storage.handed

    assert asyncio.run(main()) == [(1, False)]


def test_a_second_signal_during_a_stop_time_hand_back_ends_it_at_once():
    class Hanging(Storage):
        async def hand_back(self, worker: int, crashed: bool) -> list[Any]:
            await asyncio.sleep(60)
            return []

    async def main() -> float:
        storage = Hanging()
        p = await processing(storage)
        loop = asyncio.get_running_loop()
        p.pool = Pool(storage, lambda on_crash: on_crash(1, -9))  # type: ignore[assignment]
        storage.event.set()  # the others need nothing
        loop.call_later(0.3, p.kill_now)
        started = time.monotonic()
        await p.stop(5)
        return time.monotonic() - started

    assert asyncio.run(main()) < 2


def test_a_second_signal_ends_the_wait_for_a_hand_back_begun_before_the_stop():
    """A worker dead just before the stop: its hand-back hangs (a hung disk);
    a second signal must end the stop at once, not after HAND_BACK_S."""

    class Hanging(Storage):
        async def hand_back(self, worker: int, crashed: bool) -> list[Any]:
            await asyncio.sleep(60)
            return []

    async def main() -> float:
        storage = Hanging()
        p = await processing(storage)
        p.pool = Pool(storage)  # type: ignore[assignment]
        storage.event.set()  # the others need nothing
        p._on_death(1, -9)
        asyncio.get_running_loop().call_later(0.3, p.kill_now)
        started = time.monotonic()
        await p.stop(5)
        return time.monotonic() - started

    assert asyncio.run(main()) < 2
