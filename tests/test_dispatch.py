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
