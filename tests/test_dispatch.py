"""`pedidos.dispatch`: with no work time, a worker's next chunk gathers the orders
that arrive shortly after its last one, unless a full chunk is ready."""

from __future__ import annotations

import asyncio

import pytest

from pedidos.processing.dispatch import Dispatcher

GATHER_S = 0.2


class Orders:
    """The pending orders as the database would hold them, and the dispatcher
    that feeds them to worker 1, recording what it sends."""

    def __init__(self, max_chunk: int = 100) -> None:
        self.pending: set[int] = set()
        self.sent: list[tuple[int, ...]] = []
        self.dispatcher = Dispatcher(
            self._send, self._read_pending, max_chunk=max_chunk, per_worker=1, gather_s=GATHER_S
        )
        self.dispatcher.worker_ready(1)

    def new(self, *ids: int) -> None:
        self.pending.update(ids)
        self.dispatcher.add(ids)

    def done(self, chunk: tuple[int, ...]) -> None:
        self.pending.difference_update(chunk)
        self.dispatcher.finished(1, chunk)

    def _send(self, number: int, chunk: tuple[int, ...]) -> None:
        assert number == 1
        self.sent.append(chunk)

    async def _read_pending(self, start: int, count: int) -> list[int]:
        return sorted(i for i in self.pending if i >= start)[:count]


async def until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_the_next_chunk_gathers_what_arrives_meanwhile():
    async def scenario() -> None:
        orders = Orders()
        loop = asyncio.get_running_loop()
        first_at = loop.time()  # at most when the first chunk went: the gathering counts from it
        orders.new(1)
        await until(lambda: orders.sent == [(1,)])  # an idle worker gets work at once
        orders.done((1,))
        for order_id in (2, 3, 4):
            orders.new(order_id)
        assert orders.sent == [(1,)]  # gathering
        await until(lambda: len(orders.sent) == 2)
        assert loop.time() - first_at >= GATHER_S * 0.9
        assert orders.sent[1] == (2, 3, 4)
        orders.dispatcher.close()

    asyncio.run(scenario())


def test_a_full_chunk_does_not_wait():
    async def scenario() -> None:
        orders = Orders(max_chunk=3)
        orders.new(1)
        await until(lambda: orders.sent == [(1,)])
        orders.done((1,))
        orders.new(2, 3, 4)
        assert orders.sent == [(1,), (2, 3, 4)]
        orders.dispatcher.close()

    asyncio.run(scenario())


def test_nothing_is_sent_after_close():
    async def scenario() -> None:
        orders = Orders()
        orders.new(1)
        await until(lambda: orders.sent == [(1,)])
        orders.done((1,))
        orders.new(2)
        orders.dispatcher.close()
        orders.new(3)
        # Twice the time it would have gathered: still nothing sent.
        with pytest.raises(AssertionError, match="not met in time"):
            await until(lambda: len(orders.sent) > 1, timeout=GATHER_S * 2)

    asyncio.run(scenario())


def test_a_database_that_refuses_every_read_is_logged_once_not_every_try(caplog):
    # While PostgreSQL cancelled every read (a lock held on `pedidos`), the
    # dispatcher logged an ERROR line at each of its tries, one every second or two.
    tries = []

    async def refused(start: int, count: int) -> list[int]:
        tries.append(start)
        raise RuntimeError("canceling statement due to statement timeout")

    async def main() -> None:
        dispatcher = Dispatcher(lambda number, chunk: None, refused, max_chunk=10)
        dispatcher.worker_ready(1)
        deadline = asyncio.get_running_loop().time() + 10
        while len(tries) < 3:
            assert asyncio.get_running_loop().time() < deadline, tries
            dispatcher.pump()  # as the supervisor does at each event
            await asyncio.sleep(0.05)
        dispatcher.close()

    with caplog.at_level("ERROR", logger="pedidos.processing.dispatch"):
        asyncio.run(main())
    lines = [r for r in caplog.records if "could not read pending orders" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]


class Workers:
    """Pending orders as the database would hold them, and a dispatcher feeding
    `workers` workers, whose queues the test empties by hand."""

    def __init__(self, workers: int = 2, max_chunk: int = 3, max_backlog: int = 10) -> None:
        self.pending: set[int] = set()
        self.queues: dict[int, list[tuple[int, ...]]] = {n: [] for n in range(1, workers + 1)}
        self.dispatcher = Dispatcher(
            self._send, self._read_pending, max_chunk=max_chunk, per_worker=1, max_backlog=max_backlog
        )
        for number in self.queues:
            self.dispatcher.worker_ready(number)

    def new(self, *ids: int) -> None:
        self.pending.update(ids)
        self.dispatcher.add(ids)

    def take(self, number: int) -> tuple[int, ...]:
        """The chunk at the head of the worker's queue, done: claimed and finished."""
        chunk = self.queues[number].pop(0)
        self.pending.difference_update(chunk)
        self.dispatcher.finished(number, chunk)
        return chunk

    def held(self) -> set[int]:
        return {i for chunks in self.queues.values() for chunk in chunks for i in chunk}

    def _send(self, number: int, chunk: tuple[int, ...]) -> None:
        self.queues[number].append(chunk)

    async def _read_pending(self, start: int, count: int) -> list[int]:
        found = sorted(i for i in self.pending if i >= start)[:count]
        await asyncio.sleep(0)  # a read takes a while: orders that arrive meanwhile are not in it
        return found


def test_a_backlog_larger_than_the_window_reaches_the_workers_whole():
    # Orders arrive in bursts larger than the window, some while a read of
    # the database is on its way: those left out must be read back, every one,
    # without waiting for a sweep.
    async def scenario() -> None:
        pool = Workers(max_backlog=10)
        done: list[int] = []
        for burst in range(4):
            pool.new(*range(burst * 25 + 1, burst * 25 + 26))
            await asyncio.sleep(0)
        while pool.pending:
            await until(lambda: any(pool.queues.values()))
            for number, chunks in pool.queues.items():
                if chunks:
                    done += pool.take(number)
            await asyncio.sleep(0)
        assert sorted(done) == list(range(1, 101))
        pool.dispatcher.close()

    asyncio.run(scenario())


def test_an_order_that_arrives_while_the_database_is_read_is_not_left_behind():
    async def scenario() -> None:
        pool = Workers(workers=1, max_chunk=10)
        pool.new(1, 2)  # left in the database for the scan that is due
        await asyncio.sleep(0)  # the scan's read has begun: it will find 1 and 2 only
        pool.new(3)
        await until(lambda: pool.held() == {1, 2})
        pool.take(1)
        await until(lambda: pool.held() == {3})  # with no sweep to find it
        pool.dispatcher.close()

    asyncio.run(scenario())


def test_orders_of_a_dead_worker_handed_back_are_sent_again():
    async def scenario() -> None:
        pool = Workers(workers=1)
        pool.new(1, 2)
        await until(lambda: pool.held() == {1, 2})
        pool.queues[1].clear()
        in_queue = pool.dispatcher.worker_gone(1)
        assert sorted(in_queue) == [1, 2]
        pool.dispatcher.add(in_queue)  # as the supervisor does once they are pending again
        pool.dispatcher.worker_ready(1)
        await until(lambda: pool.held() == {1, 2})
        pool.dispatcher.close()

    asyncio.run(scenario())


def test_an_order_left_in_a_finished_chunk_can_be_sent_again():
    async def scenario() -> None:
        pool = Workers(workers=1)
        pool.new(1, 2)
        await until(lambda: pool.held() == {1, 2})
        # The worker skipped the chunk's orders (their retry was not due yet).
        (chunk,) = pool.queues[1]
        pool.queues[1].clear()
        pool.dispatcher.finished(1, chunk)
        pool.dispatcher.add((1, 2))  # due now
        await until(lambda: pool.held() == {1, 2})
        pool.dispatcher.close()

    asyncio.run(scenario())


def test_an_order_released_is_sent_again_before_its_chunk_ends():
    async def scenario() -> None:
        pool = Workers(workers=2)
        pool.new(1)
        await until(lambda: pool.held() == {1})
        # A failed attempt of 1, whose retry is due before the worker reports
        # the end of its chunk: the other worker takes it.
        pool.dispatcher.released((1,))
        pool.dispatcher.add((1,))
        await until(lambda: sorted(len(chunks) for chunks in pool.queues.values()) == [1, 1])
        pool.dispatcher.close()

    asyncio.run(scenario())


def test_a_sweep_finds_orders_that_reached_the_database_another_way():
    async def scenario() -> None:
        pool = Workers(workers=2)
        pool.new(1)
        await until(lambda: pool.held() == {1})
        # Another node took in 2: no `add` here. Worker 2 idles while worker 1
        # holds order 1 (a long call): the sweep must look.
        pool.pending.add(2)
        pool.dispatcher.sweep()
        await until(lambda: pool.held() == {1, 2})
        # With nothing in hand at all, the sweep looks too.
        for number, chunks in pool.queues.items():
            while chunks:
                pool.take(number)
        pool.pending.add(4)
        pool.dispatcher.sweep()
        await until(lambda: pool.held() == {4})
        pool.dispatcher.close()

    asyncio.run(scenario())
