"""PostgreSQL intake with more than one batch in flight (storage/postgres/intake.py),
against a real PostgreSQL.

A batch is held in flight on purpose by another transaction that inserted, and
has not committed, a `referencia` the batch also carries: the batch's INSERT
draws the id of that row and then waits on it, until the test lets it go.
"""

from __future__ import annotations

import asyncio
import time

import psycopg

from pedidos.storage.base import StorageUnavailable
from pedidos.storage.postgres.backend import PostgresStorage
from pedidos.storage.postgres.intake import LANES

DEADLINE_S = 10.0


def order(n: int, ref: str | None = None) -> tuple:
    return ("Ana", ("pan", f"agua {n}"), "Calle 1", ref)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def sender():
    """A connection's `notify`: each call makes another sender."""
    return lambda: None


async def started(url: str, nodo: str = "a") -> PostgresStorage:
    storage = PostgresStorage(url, nodo)
    await storage.start()
    return storage


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


class Blocker:
    """Another client's transaction holding `referencia` uncommitted."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> Blocker:
        self.conn = await psycopg.AsyncConnection.connect(self.url)
        await self.conn.execute(
            "INSERT INTO pedidos (cliente, productos, direccion, referencia, estado, fecha_recibido) "
            "VALUES ('Otro', '[]', 'x', 'bloqueo', 'pendiente', now())"
        )
        return self

    async def waiting(self) -> None:
        """Until a batch waits on the held row."""

        async def some() -> bool:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
                return (await cur.fetchone())[0] > 0

        await until(some, "no batch waits on the held row")

    async def release(self) -> None:
        await self.conn.rollback()

    async def __aexit__(self, *exc) -> None:
        await self.conn.close()


def test_a_second_batch_commits_while_one_waits_and_a_senders_ids_keep_their_order(pg_url):
    assert LANES >= 2

    async def main():
        storage = await started(pg_url)
        a, b = sender(), sender()
        try:
            async with Blocker(pg_url) as blocker:
                # One batch: the held referencia first (it draws its id and waits),
                # then a's first order, whose id is not drawn yet.
                held = storage.submit(order(0, "bloqueo"), None, sender())
                a1 = storage.submit(order(1), None, a)
                await blocker.waiting()
                a2 = storage.submit(order(2), None, a)
                other = await asyncio.wait_for(storage.submit(order(3), None, b), DEADLINE_S)
                a2_early = a2.done()  # it must wait for a1: its id would come first
                await blocker.release()
                results = await asyncio.gather(held, a1, a2)
        finally:
            await storage.stop()
        return other, a2_early, results

    other, a2_early, (held, a1, a2) = run(main())
    assert not other.duplicado and not a2_early
    assert held.id < a1.id < a2.id, "a sender's orders get ids in the order it sent them"


def test_one_referencia_in_two_batches_in_flight_is_stored_once_by_the_first(pg_url):
    async def main():
        storage = await started(pg_url)
        try:
            async with Blocker(pg_url) as blocker:
                held = storage.submit(order(0, "bloqueo"), None, sender())
                first = storage.submit(order(1, "r-1"), None, sender())
                taken_first = storage.submit(order(2, "r-2"), None, sender())
                await blocker.waiting()
                # Other senders, while the batch with the same referencias waits.
                retry = storage.submit(order(1, "r-1"), None, sender())
                taken = storage.submit(order(9, "r-2"), None, sender())
                free = await asyncio.wait_for(storage.submit(order(5, "r-5"), None, sender()), DEADLINE_S)
                early = retry.done() or taken.done()
                await blocker.release()
                results = await asyncio.gather(held, first, taken_first, retry, taken)
        finally:
            await storage.stop()
        return free, early, results

    free, early, (held, first, taken_first, retry, taken) = run(main())
    assert not free.duplicado and not early
    assert not first.duplicado and (retry.id, retry.duplicado, retry.taken) == (first.id, True, False)
    assert not taken_first.duplicado and (taken.id, taken.duplicado, taken.taken) == (
        taken_first.id,
        True,
        True,
    )
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute("SELECT referencia, productos FROM pedidos ORDER BY referencia").fetchall()
    assert stored == [
        ("bloqueo", ["pan", "agua 0"]),
        ("r-1", ["pan", "agua 1"]),
        ("r-2", ["pan", "agua 2"]),
        ("r-5", ["pan", "agua 5"]),
    ]


def test_postgresql_stopped_with_batches_in_flight_acks_only_stored_orders(pg_cluster):
    """Senders submit one order after another (request/response) until
    PostgreSQL stops; every ack has its row, the refusals say unavailable, and
    intake resumes once it is back."""
    senders = 16

    async def main():
        storage = await started(pg_cluster.url())
        acked: dict[str, int] = {}
        refused: list[BaseException] = []
        most_in_flight = 0
        stop = asyncio.Event()

        async def client(k: int) -> None:
            notify, n = sender(), 0
            while not stop.is_set():
                await asyncio.sleep(k * 0.0005)  # apart, as clients on a network are
                ref = f"c{k}-{n}"
                n += 1
                try:
                    acked[ref] = (await storage.submit(order(n, ref), None, notify)).id
                except StorageUnavailable as exc:  # servidor_ocupado
                    refused.append(exc)
                    await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(client(k)) for k in range(senders)]
        try:
            deadline = time.monotonic() + DEADLINE_S
            while len(acked) < 300 or most_in_flight < 2:
                assert time.monotonic() < deadline, f"{len(acked)} acks, {most_in_flight} in flight"
                most_in_flight = max(most_in_flight, len(storage.intake._flying))
                await asyncio.sleep(0)
            await asyncio.to_thread(pg_cluster.halt)
            await until(lambda: _now(bool(refused)), "no refusal while PostgreSQL is down")
            before = len(acked)
            await asyncio.to_thread(pg_cluster.boot)
            await until(lambda: _now(len(acked) > before + 50), "intake did not resume")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await storage.stop()
        return acked, refused

    acked, refused = run(main())
    with psycopg.connect(pg_cluster.url()) as conn:
        stored = dict(conn.execute("SELECT referencia, id FROM pedidos").fetchall())
    missing = {ref for ref in acked if stored.get(ref) != acked[ref]}
    assert not missing, f"acknowledged without their row: {sorted(missing)[:10]}"
    assert refused


async def _now(value: bool) -> bool:
    return value


def test_orders_submitted_together_still_share_one_batch(pg_url):
    async def main():
        stored: list[tuple[int, ...]] = []
        storage = PostgresStorage(pg_url, "a", on_stored=stored.append)
        await storage.start()
        try:
            await asyncio.gather(*(storage.submit(order(n), None, sender()) for n in range(40)))
        finally:
            await storage.stop()
        return stored

    assert [len(ids) for ids in run(main())] == [40]


def test_text_comes_back_exactly_as_sent_through_the_batch_document(pg_url):
    tricky = 'Pérez "comillas" \\ barra \t tab \u2028 ñ 😀 {"no": "json"}'
    sent = [
        (tricky, (tricky, "[1, 2]", "null"), tricky, None),
        ("Ana", ("pan",), "Calle 1", tricky),
        ("Ana", ("pan",), "Calle 1", tricky),  # the same referencia again, same batch
    ]

    async def main():
        storage = await started(pg_url)
        try:
            results = await asyncio.gather(*(storage.submit(o, "dueño ñ", sender()) for o in sent))
            got = [await storage.get(r.id) for r in results]
        finally:
            await storage.stop()
        return results, got

    results, got = run(main())
    assert [r.duplicado for r in results] == [False, False, True] and results[1].id == results[2].id
    assert (got[0]["cliente"], got[0]["productos"], got[0]["direccion"]) == (
        tricky,
        [tricky, "[1, 2]", "null"],
        tricky,
    )
    assert got[1]["referencia"] == tricky and got[0]["referencia"] is None
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT DISTINCT propietario FROM pedidos").fetchall() == [("dueño ñ",)]
