"""The PostgreSQL backend's pieces, against a real PostgreSQL (tests/pgcluster.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pgcluster import with_options

from pedidos.storage.base import Claim, Recovery, StorageError
from pedidos.storage.postgres import agreement
from pedidos.storage.postgres.backend import PostgresStorage
from pedidos.storage.postgres.hints import HINT_GAP_S
from pedidos.storage.postgres.link import LOOK_S, DatabaseUnavailable, StatementCancelled
from pedidos.storage.postgres.settings import COMMAND_TIMEOUT_S, shown
from pedidos.storage.postgres.sql import NEW_CHANNEL
from pedidos.storage.postgres.worker import PgWorkerStore

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def order(n: int, ref: str | None = None, cliente: str = "Ana") -> tuple:
    return (cliente, ("pan", f"agua {n}"), "Calle 1", ref)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def rows(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


async def started(url: str, nodo: str = "a", **kwargs) -> PostgresStorage:
    storage = PostgresStorage(url, nodo, **kwargs)
    await storage.start()
    return storage


def test_orders_submitted_together_share_one_commit_and_get_ids_in_order(pg_url):
    async def main():
        stored: list[list[int]] = []
        storage = await started(pg_url, on_stored=stored.append)
        try:
            futures = [storage.submit(order(n), None) for n in range(50)]
            results = await asyncio.gather(*futures)
            got = await storage.get(results[7].id)
        finally:
            await storage.stop()
        return results, stored, got

    results, stored, got = run(main())
    ids = [r.id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert stored == [tuple(ids)]  # one batch, one commit
    assert all(r.estado == "pendiente" and not r.duplicado for r in results)
    assert got["productos"] == ["pan", "agua 7"] and got["nodo"] is None
    assert ISO.match(got["fecha_recibido"]) and got["fecha_inicio"] is None
    same = rows(pg_url, "SELECT xmin::text, count(*) FROM pedidos GROUP BY 1")
    assert len(same) == 1 and same[0][1] == 50  # all 50 rows in one transaction


def test_a_referencia_is_stored_once_and_other_content_is_refused(pg_url):
    async def main():
        storage = await started(pg_url)
        try:
            first = await storage.submit(order(1, "r-1"), None)
            batch = await asyncio.gather(
                storage.submit(order(1, "r-1"), None),  # a retry: same content
                storage.submit(order(2, "r-1"), None),  # another order, same key
                storage.submit(order(3, "r-2"), None),
                storage.submit(order(3, "r-2"), None),  # twice in one batch
                storage.submit(order(1, "r-1"), "someone"),  # another owner
            )
        finally:
            await storage.stop()
        return first, batch

    first, (retry, other, new, twice, foreign) = run(main())
    assert (retry.id, retry.duplicado, retry.taken) == (first.id, True, False)
    assert (other.id, other.duplicado, other.taken) == (first.id, True, True)
    assert not new.duplicado and (twice.id, twice.duplicado, twice.taken) == (new.id, True, False)
    assert foreign.taken
    assert rows(pg_url, "SELECT count(*) FROM pedidos")[0][0] == 2


def test_two_nodes_receiving_one_referencia_at_once_store_one_order(pg_url):
    async def main():
        a, b = await started(pg_url, "a"), await started(pg_url, "b")
        try:
            results = []
            for n in range(20):
                results.append(
                    await asyncio.gather(a.submit(order(n, f"x{n}"), None), b.submit(order(n, f"x{n}"), None))
                )
        finally:
            await a.stop()
            await b.stop()
        return results

    for ra, rb in run(main()):
        assert ra.id == rb.id and sorted([ra.duplicado, rb.duplicado]) == [False, True]
    assert rows(pg_url, "SELECT count(*), count(DISTINCT referencia) FROM pedidos") == [(20, 20)]


def test_a_finish_from_a_claim_taken_away_changes_nothing(pg_url):
    async def main():
        storage = await started(pg_url)
        try:
            ids = [r.id for r in await asyncio.gather(*(storage.submit(order(n), None) for n in range(3)))]
            store, other = storage.worker_opener()(1, os.getpid()), storage.worker_opener()(2, os.getpid())
            claim = await asyncio.to_thread(store.claim, ids, 1)
            again = await asyncio.to_thread(other.claim, ids, 2)  # nothing left to take
            moved = await storage.hand_back(1, crashed=True)
            second = await asyncio.to_thread(other.claim, ids[:2], 2)
            stale = await asyncio.to_thread(store.finish, claim)
            fresh = await asyncio.to_thread(other.finish, second)
            store.close()
            other.close()
            return ids, claim, again, moved, stale, fresh, [await storage.get(i) for i in ids]
        finally:
            await storage.stop()

    ids, claim, again, moved, stale, fresh, orders = run(main())
    assert claim.ids == tuple(ids) and again.ids == ()
    assert moved == [(i, "pendiente") for i in ids]
    assert stale == (None, ())  # the old claim was handed back, then taken again
    assert fresh[1] == tuple(ids[:2]) and ISO.match(fresh[0])
    assert [o["estado"] for o in orders] == ["listo", "listo", "pendiente"]
    assert [o["intentos"] for o in orders] == [1, 1, 1]
    assert [o["worker"] for o in orders] == [2, 2, None] and orders[0]["nodo"] == "a"


def test_a_dead_node_is_reaped_once_even_by_two_nodes_at_once_and_cannot_claim(pg_url):
    async def main():
        dead = await started(pg_url, "dead", lease=0.3)
        ids = [r.id for r in await asyncio.gather(*(dead.submit(order(n), None) for n in range(4)))]
        store = dead.worker_opener()(1, os.getpid())
        claim = await asyncio.to_thread(store.claim, ids[:3], 1)
        await dead.nodes._renewal.stop()  # it stops renewing: as if paused
        b = await started(pg_url, "b")  # the default lease: alive throughout
        c = await started(pg_url, "c")
        b.health._since = c.health._since = time.monotonic() - 10  # up long enough to reap
        for node in (b.nodes, c.nodes):  # and renewing on time long enough
            node._renewed_at, node._on_time_since = time.monotonic(), time.monotonic() - 10
        # Until the dead node's lease ran out (or b or c, ticking on their own, reaped it).
        alive = "SELECT count(*) FROM nodos WHERE nodo = 'dead' AND vence >= clock_timestamp()"
        deadline = time.monotonic() + 10
        while rows(pg_url, alive) != [(0,)]:
            assert time.monotonic() < deadline, "the dead node's lease never ran out"
            await asyncio.sleep(0.05)
        await asyncio.gather(b.nodes.tick(), c.nodes.tick())
        late = await asyncio.to_thread(store.claim, ids[3:], 1)
        stale = await asyncio.to_thread(store.finish, claim)
        store.close()
        orders = [await b.get(i) for i in ids]
        live = await b.live_nodes()
        for s in (b, c):
            await s.stop()
        await dead._close()
        return claim, late, stale, orders, live

    claim, late, stale, orders, live = run(main())
    assert len(claim.ids) == 3 and late.ids == ()
    assert stale == (None, ())
    assert [(o["estado"], o["intentos"], o["nodo"]) for o in orders] == [("pendiente", 1, None)] * 3 + [
        ("pendiente", 0, None)  # the dead node's worker could not claim it
    ]
    assert [n["nodo"] for n in live] == ["b", "c"]


def test_a_taken_name_refuses_a_second_live_node_and_start_recovers_only_its_own(pg_url):
    async def main():
        a = await started(pg_url, "a")
        b = await started(pg_url, "b")
        ids = [r.id for r in await asyncio.gather(*(a.submit(order(n), None) for n in range(2)))]
        for storage, order_id in ((a, ids[0]), (b, ids[1])):
            store = storage.worker_opener()(1, os.getpid())
            assert (await asyncio.to_thread(store.claim, [order_id], 1)).ids == (order_id,)
            store.close()
        with pytest.raises(StorageError, match="taken by a live node"):
            await started(pg_url, "b")
        # `a` dies (no hand back) and starts again at once, same host: its
        # old row belongs to a dead pid of this host, so it is taken over.
        await a.nodes._renewal.stop()
        await a._close()
        await asyncio.to_thread(rows_exec, pg_url, "UPDATE nodos SET pid = 999999 WHERE nodo = 'a'")
        again = PostgresStorage(pg_url, "a")
        recovered = await again.start()
        orders = [await again.get(i) for i in ids]
        await again.stop()
        await b.stop()
        return ids, recovered, orders

    ids, recovered, orders = run(main())
    assert recovered == Recovery((ids[0],), ())
    assert [(o["estado"], o["nodo"], o["intentos"]) for o in orders] == [
        ("pendiente", None, 1),
        ("en proceso", "b", 0),  # another live node's work is never taken
    ]


def rows_exec(url: str, query: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query)


def test_hints_reach_other_nodes_and_a_graceful_hand_back_counts_no_attempt(pg_url):
    async def main():
        news, dones = [], []
        a = await started(pg_url, "a")
        b = await started(pg_url, "b", on_new=lambda: news.append(1), on_done=dones.append)
        await asyncio.wait_for(b.listener.connected.wait(), 5)
        news.clear()
        dones.clear()
        ids = [r.id for r in await asyncio.gather(*(a.submit(order(n), None) for n in range(2)))]
        deadline = time.monotonic() + 5
        while not news and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        store = a.worker_opener()(1, os.getpid())
        claim = await asyncio.to_thread(store.claim, ids, 1)
        await asyncio.to_thread(store.finish, claim._replace(ids=claim.ids[:1]))
        store.close()
        while not dones and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        moved = await a.hand_back(None, crashed=False)
        order_back = await a.get(ids[1])
        await a.stop()
        await b.stop()
        return news, dones, moved, order_back, ids

    news, dones, moved, order_back, ids = run(main())
    assert news and dones[0] == (ids[0],)
    assert moved == [(ids[1], "pendiente")] and order_back["intentos"] == 0


def test_the_password_is_never_shown():
    assert "s3cret" not in shown("postgresql://u:s3cret@db.example:5433/shop?sslmode=require")
    assert shown("postgresql://u:s3cret@db.example:5433/shop") == "postgresql://u@db.example:5433/shop"


def test_while_postgresql_is_down_orders_are_refused_then_taken_again(pg_cluster):
    async def main():
        storage = await started(pg_cluster.url(), "a")
        try:
            first = await storage.submit(order(1), None)
            await asyncio.to_thread(pg_cluster.halt)
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                await storage.submit(order(2), None)
            # At once: one try at a new connection, which the stopped database
            # refuses (tries for 2 s held the first orders of an outage 1.6 s).
            assert time.monotonic() - began < 0.5
            with pytest.raises(DatabaseUnavailable) as refused:
                await storage.submit(order(3), None)  # refused at once now
            assert refused.value.maybe_done is False  # never sent: surely not stored
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                await storage.get(first.id)
            assert time.monotonic() - began < 0.5
            await asyncio.to_thread(pg_cluster.boot)
            deadline = time.monotonic() + 10

            async def once_back(call):
                # Intake and reads reconnect each on its own connection, each with its
                # own backoff: either may come back first.
                while True:
                    try:
                        return await call()
                    except DatabaseUnavailable:
                        assert time.monotonic() < deadline, "did not resume"
                        await asyncio.sleep(0.05)

            later = await once_back(lambda: storage.submit(order(4), None))
            return first, later, await once_back(lambda: storage.get(first.id))
        finally:
            await storage.stop()

    first, later, got = run(main())
    assert later.id > first.id and got["id"] == first.id


def test_an_idle_node_takes_its_first_order_after_a_restart_of_postgresql(pg_cluster):
    async def main():
        storage = await started(pg_cluster.url(), "a")
        try:
            await storage.submit(order(1), None)
            await asyncio.to_thread(pg_cluster.halt)  # while the node is idle: it notices nothing
            await asyncio.to_thread(pg_cluster.boot)
            # The first order after the restart: its connection, closed by the
            # restart, is replaced before the INSERT goes out, not refused.
            after = await storage.submit(order(2), None)
            return after, await storage.get(after.id)
        finally:
            await storage.stop()

    after, got = run(main())
    assert after.estado == "pendiente" and got["id"] == after.id


def test_the_first_order_after_a_restart_is_taken_though_another_link_saw_it(pg_cluster):
    """A lease renewal in flight when PostgreSQL went down marks the whole node
    unreachable, and its links reconnect with a backoff of up to a second: the
    first order after the database is back looks for itself instead of being
    refused for what is left of that backoff (seen as this file's idle-node
    test failing one run in fifty)."""

    async def main():
        storage = await started(pg_cluster.url(), "a")
        try:
            await storage.submit(order(1), None)
            await asyncio.to_thread(pg_cluster.halt)
            storage.health.failed(OSError("seen by the lease's link"))  # as a renewal cut short
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailable) as refused:
                await storage.submit(order(2), None)
            assert time.monotonic() - began < 2, "refused after a wait, not at once"
            assert refused.value.maybe_done is False
            await asyncio.to_thread(pg_cluster.boot)
            after = await storage.submit(order(3), None)
            return after, await storage.get(after.id), storage.health.up
        finally:
            await storage.stop()

    after, got, up = run(main())
    assert after.estado == "pendiente" and got["id"] == after.id and up


def test_a_look_that_times_out_never_marks_the_database_away(pg_url, monkeypatch):
    """A look for an order (`Link.revive`) slower than LOOK_S (a far database's
    handshake) while another link brought the node back marked it away again,
    and nothing marked it back: every order refused for good (an audit, with
    a proxy that made connecting take 0.3 s)."""

    async def main():
        storage = await started(pg_url, "a")
        try:
            storage.health.failed(OSError("a link lost its connection"))
            real = storage._intake_link._connect

            async def slow():  # another link comes back while this look waits
                storage.health.ok()
                await asyncio.sleep(LOOK_S * 4)
                return await real()

            monkeypatch.setattr(storage._intake_link, "_connect", slow)
            with pytest.raises(DatabaseUnavailable):
                await storage.submit(order(1), None)  # this one's look timed out
            monkeypatch.setattr(storage._intake_link, "_connect", real)
            up = storage.health.up
            taken = await storage.submit(order(2), None)
            return up, taken
        finally:
            await storage.stop()

    up, taken = run(main())
    assert up, "the look marked the database away"
    assert taken.estado == "pendiente"


@pytest.mark.parametrize("restart", [True, False], ids=["after-a-restart", "idle-timeout"])
def test_a_reap_on_a_connection_found_closed_waits_only_after_a_restart(pg_url, restart):
    """A reap whose connection was found closed by a restart of the database,
    unseen by a node whose connections sat idle, went out once the database was
    back and declared dead a node whose renewal was on its way (an audit: 1
    restart in 8 with a 1 s lease): it decides again once back for a lease.
    A connection closed without a restart (PostgreSQL's idle_session_timeout,
    a proxy's, pg_terminate_backend) is no reason to wait: counted as one, it
    put off every reap while a client's commands kept finding them closed."""
    from pedidos.storage.postgres.link import _closed_while_idle

    async def main():
        dead = await started(pg_url, "dead", lease=0.3)
        await dead.nodes._renewal.stop()  # its lease runs out
        b = await started(pg_url, "b")
        await b.nodes._reaping.stop()  # this test reaps by hand
        b.health._since = time.monotonic() - 10  # up long enough to reap
        b.nodes._renewed_at, b.nodes._on_time_since = time.monotonic(), time.monotonic() - 10
        expired = "SELECT count(*) FROM nodos WHERE nodo = 'dead' AND vence < clock_timestamp()"
        deadline = time.monotonic() + 10
        while rows(pg_url, expired) != [(1,)]:
            assert time.monotonic() < deadline, "the dead node's lease never ran out"
            await asyncio.sleep(0.05)
        if restart:  # the server it connects to next started after the one it saw
            b.health._server_started = "a server that has since restarted"
        link = b.nodes._link
        rows(pg_url, f"SELECT pg_terminate_backend({link._conn.info.backend_pid})")
        while not _closed_while_idle(link._conn):
            assert time.monotonic() < deadline, "the connection never saw its end"
            await asyncio.sleep(0.01)
        await b.nodes.reap()
        left = rows(pg_url, "SELECT count(*) FROM nodos WHERE nodo = 'dead'")
        up_for = b.health.up_for()
        await b.stop()
        await dead._close()
        return left, up_for

    left, up_for = run(main())
    if restart:
        assert left == [(1,)], "reaped on a connection just found closed by a restart"
        assert up_for < 5  # the database counts as back just now
    else:
        assert left == [(0,)], "a connection closed while idle put the reap off"
        assert up_for > 5


def test_a_connection_closed_without_being_lost_is_replaced(pg_url):
    """A connection closed by a path other than a failed statement (a failed
    ROLLBACK after a cancel) stayed in its link: the reconnection, which looked
    only for none, ended at once, and the link refused for good."""

    async def main():
        storage = await started(pg_url, "a")
        try:
            storage._main._conn.pgconn.finish()  # closed, and still the link's
            deadline = time.monotonic() + 10
            while True:
                try:
                    async with storage._main.use() as conn:
                        return (await (await conn.execute("SELECT 1")).fetchone())[0]
                except DatabaseUnavailable:
                    assert time.monotonic() < deadline, "the link never came back"
                    await asyncio.sleep(0.05)
        finally:
            await storage.stop()

    assert run(main()) == 1


def test_an_order_right_after_an_outage_is_taken_though_the_intake_link_is_still_away(pg_cluster):
    """The node is back (another link reconnected first) while the intake's own
    reconnection still backs off (up to a second): the order tries a connection
    of its own rather than being refused meanwhile (a review)."""

    async def main():
        storage = await started(pg_cluster.url(), "a")
        try:
            await storage.submit(order(1), None)
            await asyncio.to_thread(pg_cluster.halt)
            for n in range(2, 5):  # the intake sees it away; its backoff grows
                with pytest.raises(DatabaseUnavailable):
                    await storage.submit(order(n), None)
                await asyncio.sleep(0.4)
            await asyncio.to_thread(pg_cluster.boot)
            deadline = time.monotonic() + 10
            while not storage.health.up:  # the lease's link, renewing every second
                assert time.monotonic() < deadline, "the node never came back"
                await asyncio.sleep(0.01)
            return await storage.submit(order(9), None)
        finally:
            await storage.stop()

    assert run(main()).estado == "pendiente"


def test_new_order_hints_are_spaced_out_not_one_per_batch(pg_url):
    """Orders committed one batch after another: the first is hinted at once,
    the rest share hints at most one per HINT_GAP_S (a NOTIFY transaction per
    small batch cost PostgreSQL a third more CPU per order)."""
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NEW_CHANNEL}")

        async def main() -> float:
            a = await started(pg_url, "a")
            began = time.monotonic()
            for n in range(60):  # request/response: each order a batch of its own
                await a.submit(order(n), None)
            took = time.monotonic() - began
            await a.stop()
            return took

        took = run(main())
        heard = list(listener.notifies(timeout=0.5))
    assert heard, "no hint for new orders"
    assert len(heard) <= took / HINT_GAP_S + 2, (len(heard), took)


def test_a_node_refused_for_its_options_is_never_a_live_node_to_one_starting_meanwhile(pg_url, monkeypatch):
    """B, with another task than the live A, is refused; C, with A's options,
    starting while B compares, joins: a refused node was never a live node (it
    once was, for as long as it compared, and C refused to start beside it)."""
    same = {"--tarea": "m:f", "--reintentos": 3, "--limite-tarea": None, "--sin-notify": None}
    other = {**same, "--tarea": "m:g"}
    comparing = threading.Event()
    compare = agreement.compare

    def slow(mine, others):
        if mine == other:
            comparing.set()
            time.sleep(1.5)  # in B's thread: C starts meanwhile
        return compare(mine, others)

    monkeypatch.setattr(agreement, "compare", slow)
    refused: list[str] = []

    def start_b() -> None:
        async def b():
            with pytest.raises(StorageError) as exc:
                await started(pg_url, "B", ajustes=other)
            refused.append(str(exc.value))

        run(b())

    async def main():
        a = await started(pg_url, "A", ajustes=same)
        b = threading.Thread(target=start_b)
        b.start()
        try:
            assert await asyncio.to_thread(comparing.wait, 10)
            c = await started(pg_url, "C", ajustes=same)
            await c.stop()
        finally:
            await asyncio.to_thread(b.join, 20)
            await a.stop()

    run(main())
    assert len(refused) == 1 and "'A'" in refused[0] and "--tarea m:g" in refused[0]
    assert rows(pg_url, "SELECT nodo FROM nodos") == []


def test_a_node_starting_on_a_current_schema_locks_no_table(pg_url):
    """Another node's transaction writing to `pedidos` (its intake, a claim) must not
    hold up a node that starts, nor be held up by it: the schema is looked at, and
    created only where something is missing. (CREATE INDEX IF NOT EXISTS and ALTER
    TABLE lock the table before they look: seen as a deadlock in the soak.)"""
    from pedidos.storage.postgres.schema import migrate

    async def scenario():
        first = await started(pg_url, "a")  # creates it all
        await first.stop()
        with psycopg.connect(pg_url) as busy:  # a writer mid-transaction, on another node
            busy.execute("LOCK TABLE pedidos IN ROW EXCLUSIVE MODE")
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                await conn.execute("SET lock_timeout = '2s'")
                await migrate(conn)  # would wait for the lock, then time out
                second = await started(pg_url, "b")
                await second.stop()
            busy.rollback()

    run(scenario())
    # A database missing a column the migration adds gets it, at the next start.
    rows_exec(pg_url, "ALTER TABLE pedidos DROP COLUMN reintentar_despues")
    rows_exec(pg_url, "ALTER TABLE nodos DROP COLUMN ajustes")

    async def again():
        storage = await started(pg_url, "c")
        await storage.stop()

    run(again())
    for table, column in (("pedidos", "reintentar_despues"), ("nodos", "ajustes")):
        assert rows(
            pg_url,
            f"SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass "
            f"AND attname = '{column}' AND NOT attisdropped",
        ) == [(1,)]


def test_a_start_that_must_wait_to_change_the_schema_does_not_hold_up_other_nodes(pg_url, caplog):
    # A node starting on a database with an index missing queued its DDL's lock
    # behind another program's open write transaction; every other node's
    # INSERT then queued behind that request: no order taken anywhere for as
    # long as the other transaction lasted (35 s in an audit).
    async def scenario() -> list[float]:
        a = await started(pg_url, "a")
        try:
            rows_exec(pg_url, "DROP INDEX pedidos_cliente")
            with psycopg.connect(pg_url) as busy:  # a write transaction left open
                busy.execute("LOCK TABLE pedidos IN ROW EXCLUSIVE MODE")
                b_start = asyncio.ensure_future(started(pg_url, "b"))
                waiting = "SELECT count(*) FROM pg_locks WHERE relation = 'pedidos'::regclass AND NOT granted"
                deadline = time.monotonic() + 10
                while rows(pg_url, waiting) == [(0,)]:  # b's DDL asks for its lock
                    assert time.monotonic() < deadline and not b_start.done()
                    await asyncio.sleep(0.02)
                took = []
                for n in range(4):  # across the DDL's tries and the pauses between
                    began = time.monotonic()
                    await asyncio.wait_for(a.submit(order(n), None), 5)
                    took.append(time.monotonic() - began)
                    await asyncio.sleep(0.3)
                assert not b_start.done()
                busy.rollback()
            b = await asyncio.wait_for(b_start, 10)
            await b.stop()
            return took
        finally:
            await a.stop()

    with caplog.at_level(logging.WARNING):
        took = run(scenario())
    assert max(took) < 2.0, took  # each waited at most for one try of the DDL (0.5 s)
    assert caplog.text.count("waits for another transaction on its tables") == 1, caplog.text
    assert rows(pg_url, "SELECT to_regclass('pedidos_cliente') IS NOT NULL") == [(True,)]


def test_a_referencia_constraint_dropped_by_hand_is_put_back_at_the_next_start(pg_url):
    # Without it every order with a `referencia` failed (ON CONFLICT has
    # nothing to match), and no start put it back.
    async def first():
        storage = await started(pg_url, "a")
        await storage.stop()

    run(first())
    rows_exec(pg_url, "ALTER TABLE pedidos DROP CONSTRAINT pedidos_referencia_key")

    async def again():
        storage = await started(pg_url, "b")
        try:
            stored = await storage.submit(order(1, ref="r-1"), None)
            repeated = await storage.submit(order(1, ref="r-1"), None)
            return stored, repeated
        finally:
            await storage.stop()

    stored, repeated = run(again())
    assert repeated.id == stored.id and repeated.duplicado, (stored, repeated)
    assert rows(pg_url, "SELECT count(*) FROM pedidos WHERE referencia = 'r-1'") == [(1,)]
    # Another program stored one twice meanwhile: the start says so, and stops.
    rows_exec(pg_url, "DROP INDEX pedidos_referencia_key")
    rows_exec(
        pg_url,
        "INSERT INTO pedidos (cliente, productos, direccion, referencia, estado, fecha_recibido) "
        "VALUES ('Ana', '[\"pan\"]', 'Calle 1', 'r-1', 'listo', now())",
    )
    with pytest.raises(StorageError, match="could not create unique index"):
        run(started(pg_url, "c"))


def test_a_storm_of_notifications_is_passed_on_at_most_once_per_gap(pg_url):
    # Any role that may connect can NOTIFY on the nodes' channels, and every
    # hint passed on costs the node queries: 1,000 a second cost ~2,800
    # queries a second in an audit. What comes within a gap is gathered.
    from pedidos.storage.postgres.listen import Listener
    from pedidos.storage.postgres.settings import conninfo
    from pedidos.storage.postgres.sql import DONE_CHANNEL

    news: list[float] = []
    dones: list[tuple[int, ...] | None] = []

    async def scenario() -> float:
        listener = Listener(conninfo(pg_url), lambda: news.append(time.monotonic()), dones.append)
        listener.start()
        try:
            await asyncio.wait_for(listener.connected.wait(), 5)
            await asyncio.sleep(0.1)  # past the calls every (re)connection makes
            news.clear()
            dones.clear()
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as spammer:
                began = time.monotonic()
                for n in range(300):  # each in a transaction of its own: delivered one by one
                    await spammer.execute(f"NOTIFY {NEW_CHANNEL}")
                    await spammer.execute(f"NOTIFY {DONE_CHANNEL}, '{n}'")
            deadline = time.monotonic() + 5
            while not dones or dones[-1] is None or 299 not in dones[-1]:  # the last one comes too
                assert time.monotonic() < deadline, dones[-3:]
                await asyncio.sleep(0.01)
            return time.monotonic() - began  # from the first sent to the last passed on
        finally:
            await listener.stop()

    took = run(scenario())
    most = took / HINT_GAP_S + 3
    assert 1 <= len(news) <= most and 1 <= len(dones) <= most, (len(news), len(dones), took)
    assert sorted(i for ids in dones if ids for i in ids) == list(range(300))  # none left out


def test_a_zombie_pid_is_no_live_node():
    # A node killed a moment ago lingers as a zombie until reaped: its name
    # must be free for the node started again in its place.
    import subprocess
    import sys

    from conftest import wait_for

    from pedidos.storage.postgres.nodes import _running

    child = subprocess.Popen([sys.executable, "-c", "pass"])  # not reaped until wait()
    try:

        def zombie() -> bool:
            stat = Path(f"/proc/{child.pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] == "Z"

        wait_for(zombie)
        assert _running(child.pid) is False
        assert _running(os.getpid()) is True
    finally:
        child.wait()
    assert _running(child.pid) is False


def test_a_connection_past_descriptor_1024_is_checked_like_any_other():
    # A node serving many clients opens its database connections on high
    # descriptors after a reconnection; select() would refuse them, and every
    # use would then look like a closed connection.
    import fcntl
    import resource
    import socket

    from pedidos.storage.postgres.link import _closed_while_idle

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 2048), hard), hard))
    ours, theirs = socket.socketpair()
    high = fcntl.fcntl(ours.fileno(), fcntl.F_DUPFD, 1500)
    try:

        class Conn:
            def fileno(self) -> int:
                return high

        assert _closed_while_idle(Conn()) is False  # type: ignore[arg-type]
        theirs.close()  # the server's end goes away
        assert _closed_while_idle(Conn()) is True  # type: ignore[arg-type]
    finally:
        os.close(high)
        ours.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def two_claimed(storage: PostgresStorage) -> tuple[list[int], PgWorkerStore, Claim]:
    """Two new orders, claimed by a worker store of this node (worker 1)."""
    ids = [r.id for r in await asyncio.gather(*(storage.submit(order(n), None) for n in range(2)))]
    store = storage.worker_opener()(1, os.getpid())
    return ids, store, await asyncio.to_thread(store.claim, ids, 1)


def test_a_finish_whose_connection_breaks_after_its_commit_is_a_finish(pg_url):
    # The connection broke after FINISH committed, at the hint that follows
    # (PostgreSQL restarted at that moment): the worker took its own finish for
    # a failure, wrote it again, found nothing `en proceso` and logged that the
    # orders "were taken away from this worker", which nobody had done.
    async def main():
        storage = await started(pg_url)
        try:
            ids, store, claim = await two_claimed(storage)
            hint_done = store._hint_done

            def cut_then_hint(conn, done):
                rows_exec(pg_url, f"SELECT pg_terminate_backend({conn.info.backend_pid})")
                hint_done(conn, done)

            store._hint_done = cut_then_hint
            finished = await asyncio.to_thread(store.finish, claim)
            store.close()
            return ids, finished, [await storage.get(i) for i in ids]
        finally:
            await storage.stop()

    ids, finished, orders = run(main())
    assert finished.ids == tuple(ids) and ISO.match(finished.at), finished
    assert [o["estado"] for o in orders] == ["listo", "listo"]


def test_every_connection_of_a_node_gives_up_on_a_silent_path(pg_url):
    # Keepalives notice an idle connection whose peer vanished; a statement
    # whose bytes the path stopped carrying needs TCP_USER_TIMEOUT, on the
    # workers' connections too (their statements have no other deadline).
    store = PgWorkerStore(pg_url, "A", "token")
    try:
        fd = store._connection().pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == COMMAND_TIMEOUT_S * 1000
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        store.close()


def test_postgresql_cancels_a_slow_statement_before_the_node_gives_its_connection_up(pg_url, monkeypatch):
    # A statement past COMMAND_TIMEOUT_S (a listing over millions of rows, a
    # wait for another program's lock) cost the node its connection: new orders
    # were refused until it had reconnected. PostgreSQL now cancels it first,
    # unless the URL asks for a shorter limit.
    async def limits(url: str) -> list[str]:
        storage = await started(url)
        try:
            shown = []
            for link in (storage._main, storage._intake_link, storage._lease_link):
                async with link.use() as conn:
                    shown.append((await (await conn.execute("SHOW statement_timeout")).fetchone())[0])
            return shown
        finally:
            await storage.stop()

    assert run(limits(pg_url)) == ["9s"] * 3
    assert run(limits(with_options(pg_url, "-c statement_timeout=1500"))) == ["1500ms"] * 3
    assert run(limits(with_options(pg_url, "-c statement_timeout=1min"))) == ["9s"] * 3

    async def slow(statement: str) -> tuple[bool, tuple]:
        storage = await started(pg_url)
        try:
            with pytest.raises(StatementCancelled) as cancelled:
                async with storage._main.use() as conn:
                    await conn.execute(statement)
            assert not cancelled.value.maybe_done
            up = storage.health.up
            async with storage._main.use() as conn:  # the same connection, still fine
                again = await (await conn.execute("SELECT 1")).fetchone()
            return up, again
        finally:
            await storage.stop()

    # The node's own limit, made short: cancelled by PostgreSQL, not cut by the node.
    monkeypatch.setattr("pedidos.storage.postgres.settings.STATEMENT_TIMEOUT_S", 0.3)
    assert run(slow("SELECT pg_sleep(5)")) == (True, (1,))
    # Cancelled inside a transaction of the statement's own text (as a hint's
    # BEGIN ... COMMIT): the failed transaction is rolled back, not left to
    # fail every later statement of that connection.
    assert run(slow("BEGIN; SELECT pg_sleep(5); COMMIT")) == (True, (1,))

    async def left() -> tuple:
        # A user cancelled inside such a transaction (a client that left while
        # its hint was sent): the next user of the link must not inherit it.
        storage = await started(pg_url)
        try:

            async def hint_like() -> None:
                async with storage._main.use() as conn:
                    await conn.execute("BEGIN; SELECT 1; SELECT pg_sleep(2); COMMIT")

            task = asyncio.ensure_future(hint_like())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with storage._main.use() as conn:
                return await (await conn.execute("SELECT 1")).fetchone()
        finally:
            await storage.stop()

    monkeypatch.undo()  # the node's own 9 s: the cancellation comes first
    assert run(left()) == (1,)


def test_a_finish_whose_answer_was_lost_is_counted_done_when_it_is_tried_again(pg_url, caplog):
    # FINISH committed and the connection broke before its answer came: the
    # worker wrote it again, found nothing `en proceso` and logged that the
    # orders "were taken away from this worker; its result is dropped", when
    # its own first try had recorded them.
    class AnswerLost:
        def __init__(self, conn: psycopg.Connection) -> None:
            self.conn = conn

        def execute(self, query, params=None):
            self.conn.execute(query, params)  # autocommit: committed here
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    async def main():
        storage = await started(pg_url)
        try:
            ids, store, claim = await two_claimed(storage)
            real = store._connection
            store._connection = lambda: AnswerLost(real())
            with pytest.raises(DatabaseUnavailable):
                await asyncio.to_thread(store.finish, claim, {ids[0]: '"uno"'})
            store._connection = real
            finished = await asyncio.to_thread(store.finish, claim, {ids[0]: '"otro"'})
            store.close()
            return ids, finished, [await storage.get(i) for i in ids]
        finally:
            await storage.stop()

    with caplog.at_level(logging.WARNING):
        ids, finished, orders = run(main())
    assert finished.ids == tuple(ids), finished
    assert [o["estado"] for o in orders] == ["listo", "listo"]
    assert orders[0]["resultado"].load() == "uno" and finished.at == orders[0]["fecha_fin"], (
        finished,
        orders,
    )
    assert "taken away" not in caplog.text, caplog.text


def test_a_lost_finish_that_commits_while_its_retry_waits_is_still_counted_done(pg_url, caplog):
    # The lost FINISH was still alive on the server, waiting for a row lock
    # like its retry: it committed `listo` while the retry waited, and a
    # retry reading `listo` rows in its own snapshot found none of them.
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s"

    async def main():
        storage = await started(pg_url)
        blocker = psycopg.connect(pg_url)
        first = psycopg.connect(pg_url, autocommit=True)
        try:
            ids, store, claim = await two_claimed(storage)
            blocker.execute("SELECT 1 FROM pedidos WHERE id = ANY(%s) FOR UPDATE", (ids,))
            real = store._connection

            class AnswerLost:  # the statement goes on without its client
                def execute(self, query, params=None):
                    threading.Thread(target=first.execute, args=(query, params), daemon=True).start()
                    raise psycopg.OperationalError("server closed the connection unexpectedly")

            store._connection = lambda: AnswerLost()
            with pytest.raises(DatabaseUnavailable):
                store.finish(claim)
            store._connection = real
            retry = asyncio.ensure_future(asyncio.to_thread(store.finish, claim))
            deadline = time.monotonic() + 10
            while (
                rows(pg_url, waiting, ("%UPDATE pedidos%",))[0][0] < 2
            ):  # both FINISHes wait for the blocker
                assert time.monotonic() < deadline and not retry.done(), "the two never both waited"
                await asyncio.sleep(0.02)
            blocker.commit()
            finished = await retry
            store.close()
            return ids, finished, [await storage.get(i) for i in ids]
        finally:
            blocker.close()  # whatever happened: nothing waits on it
            first.close()
            await storage.stop()

    with caplog.at_level(logging.WARNING):
        ids, finished, orders = run(main())
    assert finished.ids == tuple(ids), finished
    assert [o["estado"] for o in orders] == ["listo", "listo"]
    assert "taken away" not in caplog.text, caplog.text


class _Refusing:
    """A connection whose every statement fails as a cancelled one does."""

    closed = broken = False

    def __init__(self, log: list[str]) -> None:
        self._log = log

    def execute(self, *_args: object) -> None:
        self._log.append("claim")
        if len(self._log) > 10:  # the loop this test is about: stop it, and fail
            raise AssertionError(f"claimed again and again: {self._log}")
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("kept", [True, False])
def test_a_claim_that_keeps_failing_is_tried_once_more_at_most(kept):
    # One more try is for a connection dropped while idle; a statement that
    # fails every time (cancelled, a full disk) looped here for ever, each turn
    # putting back and claiming again, the worker deaf to its stop.
    store = PgWorkerStore("postgresql://u@127.0.0.1:1/db", "a", "token")
    log: list[str] = []
    store._conn = _Refusing(log) if kept else None  # type: ignore[assignment]

    def connection() -> _Refusing:  # as the real one: a new connection when there is none
        if store._conn is None:
            store._conn = _Refusing(log)  # type: ignore[assignment]
        return store._conn  # type: ignore[return-value]

    def unclaim(worker: int) -> None:  # as the real one: it answers, on a connection it keeps
        connection()
        log.append("unclaim")

    store._connection = connection  # type: ignore[method-assign]
    store._unclaim = unclaim  # type: ignore[method-assign]
    with pytest.raises(DatabaseUnavailable, match="canceling statement"):
        store.claim([1, 2], 1)
    assert log == ["claim", "unclaim"] * (2 if kept else 1)


def test_a_stop_on_a_database_that_refuses_writes_still_closes_cleanly(pg_url, caplog):
    # An administrator made the database read-only (`default_transaction_read_only`,
    # a standby): the node's last write, giving its name up, fails. The stop
    # went no further (an exception out of main, exit 1, connections left open).
    async def main():
        storage = await started(pg_url, "solo-lectura")
        await storage._main._conn.execute("SET default_transaction_read_only = on")
        await storage.stop()
        return storage

    with caplog.at_level(logging.ERROR):
        storage = run(main())
    assert "node solo-lectura could not give up its name" in caplog.text, caplog.text
    assert all(link._conn is None or link._conn.closed for link in (storage._main, storage._intake_link))
    assert rows(pg_url, "SELECT count(*) FROM nodos WHERE nodo = 'solo-lectura'") == [(1,)]  # reaped later


def test_a_database_refusing_every_batch_alike_is_one_log_line(pg_url, caplog):
    # Read-only (or a full disk, or a constraint gone): every batch fails the
    # same way while it lasts; an audit counted 753 such lines in 20 s.
    async def main():
        storage = await started(pg_url, "lectura")
        try:
            await storage._intake_link._conn.execute("SET default_transaction_read_only = on")
            outcomes = []
            for n in range(20):  # one batch each
                outcomes += await asyncio.gather(storage.submit(order(n), None), return_exceptions=True)
            return outcomes
        finally:
            await storage._intake_link._conn.execute("SET default_transaction_read_only = off")
            await storage.stop()

    with caplog.at_level(logging.ERROR):
        outcomes = run(main())
    assert all(isinstance(o, Exception) for o in outcomes), outcomes
    said = [r.getMessage() for r in caplog.records if "could not store" in r.getMessage()]
    assert len(said) == 1 and "read-only" in said[0], said
