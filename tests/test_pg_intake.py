"""PostgreSQL intake (storage/postgres/intake.py): the batch as one JSON
document, PostgreSQL stopped under load, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import psycopg

from pedidos.storage.base import StorageUnavailable
from pedidos.storage.postgres.backend import PostgresStorage

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


def test_postgresql_stopped_under_load_acks_only_stored_orders(pg_cluster):
    """Senders submit one order after another (request/response) until
    PostgreSQL stops; every ack has its row, the refusals say unavailable, and
    intake resumes once it is back."""
    senders = 16

    async def main():
        storage = await started(pg_cluster.url())
        acked: dict[str, int] = {}
        refused: list[BaseException] = []
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
            while len(acked) < 300:
                assert time.monotonic() < deadline, f"only {len(acked)} acks"
                await asyncio.sleep(0.01)
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
        (tricky, (tricky, "[1, 2]", "null"), "dir " + tricky, None),
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
        "dir " + tricky,
    )
    assert got[1]["referencia"] == tricky and got[0]["referencia"] is None
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT DISTINCT propietario FROM pedidos").fetchall() == [("dueño ñ",)]


def test_an_order_with_a_nul_character_is_refused_and_the_others_of_its_batch_are_stored(pg_url):
    """PostgreSQL's text cannot hold NUL: were it let through, the whole batch's
    INSERT would fail, and every client's order in it with it."""
    from pedidos.protocol.replies import RequestError
    from pedidos.protocol.validation import parse_request

    good = [{"cliente": f"C{n}", "productos": ["pan"], "direccion": "Calle 1"} for n in range(5)]
    bad = {"cliente": "Ana\x00", "productos": ["pan"], "direccion": "Calle 1"}

    async def main() -> list[int]:
        storage = await started(pg_url)
        try:
            futures = []
            for value in (*good[:2], bad, *good[2:]):  # submitted together: one batch
                try:
                    futures.append(storage.submit(parse_request(value), None, sender()))
                except RequestError as refusal:
                    assert "'cliente'" in refusal.mensaje
            done = await asyncio.wait_for(asyncio.gather(*futures), DEADLINE_S)
            return [receipt.id for receipt in done]
        finally:
            await storage.stop()

    ids = run(main())
    assert len(ids) == 5
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pedidos").fetchone() == (5,)


def test_an_error_after_the_insert_committed_is_not_told_as_nothing_stored(pg_url, monkeypatch):
    """A batch whose referencia lost a race to another transaction reads the
    winner after its INSERT committed. An error of that read on a live
    connection was told as a database refusing writes, "el pedido no se
    guardó", to every order of the batch: those without a referencia were
    stored, and a client that trusted it sent them twice."""
    from pedidos.server.failures import MAYBE_STORED, reply_of
    from pedidos.storage.postgres import intake

    async def failing_read(conn, refs):  # a real error, on a connection still up
        await conn.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(intake, "_by_referencia", failing_read)
    waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"

    async def main():
        storage = await started(pg_url)
        try:
            with psycopg.connect(pg_url) as other:  # the race's winner, not committed yet
                other.execute(
                    "INSERT INTO pedidos (cliente, productos, direccion, referencia, estado, "
                    "fecha_recibido) VALUES ('Eva', '[\"sal\"]', 'Calle 9', 'r-race', 'pendiente', now())"
                )
                futures = [storage.submit(order(1), None, sender()), storage.submit(order(2, "r-race"), None)]
                with psycopg.connect(pg_url) as look:
                    await until(lambda: _true(look.execute(waiting).fetchone() != (0,)), "the INSERT waits")
                other.commit()
            await asyncio.wait(futures, timeout=DEADLINE_S)
            return futures
        finally:
            await storage.stop()

    futures = run(main())
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pedidos WHERE referencia IS NULL").fetchone() == (1,)
    for future in futures:
        error = future.exception()
        assert isinstance(error, StorageUnavailable) and error.maybe_done, repr(error)
        assert reply_of(future, "test")["mensaje"] == MAYBE_STORED


async def _true(value: bool) -> bool:
    return value
