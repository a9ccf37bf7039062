"""The storage interface (pedidos/storage/base.py), written once for every backend.

huey's StorageTests pattern: each test gets a started backend from the
`storage` fixture, parametrized over `BACKENDS`, and speaks only through the
interface: `Storage` on an event loop, and `WorkerStore`s opened with the
backend's picklable opener, as a worker process would. A new backend adds
itself to `BACKENDS` and its database to `database_url`, and must pass all of it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import ORDER_KEYS, TASK_KEYS, StorageHarness

from pedidos.domain import CRASH_ERROR, ESTADOS, MAX_ATTEMPTS, Estado, NewOrder, Receipt
from pedidos.storage import open_storage
from pedidos.storage.base import Recovery, StorageError

BACKENDS = ["sqlite", "postgresql"]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
ROW_KEYS = ORDER_KEYS + TASK_KEYS  # every order a backend reads


def order_keys(h: StorageHarness) -> tuple[str, ...]:
    """The contract's columns and the task fields; on a shared database (section 9) also `nodo`."""
    return ROW_KEYS + (("nodo",) if h.url.startswith(("postgresql://", "postgres://")) else ())


def new(cliente: str = "Ana", referencia: str | None = None, productos=("pan", "agua")) -> NewOrder:
    return NewOrder(cliente, tuple(productos), "Calle 1", referencia)


def assert_timestamp(value: str) -> datetime:
    assert TIMESTAMP.match(value), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "pedidos.db")
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")  # a new database on the session's cluster
    raise AssertionError(request.param)  # pragma: no cover


@pytest.fixture
def h(database_url: str) -> Iterator[StorageHarness]:
    harness = StorageHarness(database_url).start()
    try:
        yield harness
    finally:
        harness.close()


def ids_of(receipts: list[Receipt]) -> list[tuple[int, str, bool]]:
    return [(r.id, r.estado, r.duplicado) for r in receipts]


# --- intake --------------------------------------------------------------------------


def test_submit_stores_in_order_and_tells_on_stored(h):
    assert ids_of(h.submit(new("A"), new("B"), new("C"))) == [
        (1, "pendiente", False),
        (2, "pendiente", False),
        (3, "pendiente", False),
    ]
    assert ids_of(h.submit(new("D"))) == [(4, "pendiente", False)]
    assert h.stored == [1, 2, 3, 4]
    assert [o["cliente"] for o in h.list_orders(None, None, 0, 10)] == ["A", "B", "C", "D"]


def test_stored_row_is_the_contract_row(h):
    h.submit(new("Juan Pérez", "ref-1", ["pan", "agua ñ", 'comillas " y \\']))
    order = h.get(1)
    assert tuple(order) == order_keys(h)
    assert order["cliente"] == "Juan Pérez"
    assert order["productos"] == ["pan", "agua ñ", 'comillas " y \\']
    assert order["direccion"] == "Calle 1"
    assert order["referencia"] == "ref-1"
    assert order["estado"] == "pendiente" and type(order["estado"]) is str
    assert_timestamp(order["fecha_recibido"])
    assert order["fecha_inicio"] is None and order["fecha_fin"] is None
    assert order["worker"] is None and order["intentos"] == 0


def test_referencia_dedupe_across_and_within_batches(h):
    assert ids_of(h.submit(new("A", "r1"), new("B"))) == [(1, "pendiente", False), (2, "pendiente", False)]
    again = h.submit(new("A", "r1"), new("C", "r2"), new("C", "r2"), new("E"))
    assert ids_of(again) == [
        (1, "pendiente", True),
        (3, "pendiente", False),
        (3, "pendiente", True),
        (4, "pendiente", False),
    ]
    assert not any(r.taken for r in again)
    assert h.get(1)["cliente"] == "A"  # the stored order was not replaced
    assert h.counts()["pendiente"] == 4
    assert h.stored == [1, 2, 3, 4]  # duplicates are not new


def test_a_different_order_under_a_stored_referencia_is_taken(h):
    h.submit(new("A", "r1"), owner="owner-a")
    others = [
        new("other", "r1"),
        new("A", "r1", productos=("pan",)),
        NewOrder("A", ("pan", "agua"), "Calle 2", "r1"),
    ]
    for other in others:
        (result,) = h.submit(other, owner="owner-a")
        assert (result.id, result.taken, result.referencia) == (1, True, "r1"), other
    # the same order from another owner is taken too: it is not that owner's to see
    (result,) = h.submit(new("A", "r1"), owner="owner-b")
    assert result.taken
    # an admin (no owner) retrying the same order gets the duplicate
    (result,) = h.submit(new("A", "r1"))
    assert (result.id, result.duplicado, result.taken) == (1, True, False)
    # within one batch: the second, different order under a new referencia is taken
    batch = h.submit(new("B", "r2"), new("B2", "r2"), new("B", "r2"))
    assert [(r.id, r.duplicado, r.taken) for r in batch] == [
        (2, False, False),
        (2, True, True),
        (2, True, False),
    ]
    assert h.get(1)["cliente"] == "A" and h.get(2)["cliente"] == "B"
    assert h.counts()["pendiente"] == 2
    assert h.get(1, "owner-a")["cliente"] == "A"
    assert h.get(1, "owner-b") is None


def test_duplicate_reports_the_stored_estado(h):
    h.submit(new(referencia="r"))
    worker = h.worker(1)
    worker.finish(worker.claim([1], 1))
    assert ids_of(h.submit(new(referencia="r"))) == [(1, "listo", True)]


def test_orders_without_referencia_never_dedupe(h):
    assert [r.id for r in h.submit(new(), new(), new())] == [1, 2, 3]


def test_ids_keep_growing_across_batches_and_restarts(h):
    first = [r.id for r in h.submit(*[new(f"c{i}") for i in range(250)])]
    assert first == list(range(1, 251))
    h.stop()
    h.start()
    assert [r.id for r in h.submit(new(), new())] == [251, 252]


def test_an_owner_sees_only_its_orders(h):
    h.submit(new("A"), owner="ana")
    h.submit(new("B"), owner="beto")
    assert h.get(1, "ana")["cliente"] == "A"
    assert h.get(2, "ana") is None
    assert h.get(2)["cliente"] == "B"  # no owner: every order
    assert h.cancel(2, "ana") == (None, False)
    assert h.get(2)["estado"] == "pendiente"


# --- processing ----------------------------------------------------------------------


def test_claim_takes_only_pending_orders(h):
    h.submit(new("A"), new("B"), new("C"), new("D"))
    h.cancel(2)
    one, two = h.worker(1), h.worker(2)
    two.claim([4], 2)
    claim = one.claim([1, 2, 3, 4, 99], 1)
    assert claim.ids == (1, 3) and claim.worker == 1
    assert_timestamp(claim.at)
    for order_id in (1, 3):
        order = h.get(order_id)
        assert order["estado"] == "en proceso"
        assert order["worker"] == 1
        assert order["fecha_inicio"] == claim.at
        assert order["fecha_fin"] is None
    assert h.get(2)["estado"] == "cancelado"
    assert h.get(4)["worker"] == 2
    # nobody takes an order twice
    assert two.claim([1, 3, 4], 2).ids == ()
    assert one.claim([1, 3], 1).ids == ()


def test_claim_many_ids_at_once(h):
    h.submit(*[new(f"c{i}") for i in range(1200)])
    worker = h.worker(1)
    claim = worker.claim(list(range(1200, 0, -1)), 1)
    assert claim.ids == tuple(range(1, 1201))
    assert worker.finish(claim).ids == claim.ids
    assert h.counts()["listo"] == 1200


def test_finish_marks_listo_only_what_the_claim_holds(h):
    h.submit(new("A"), new("B"), new("C"))
    one, two = h.worker(1), h.worker(2)
    claim = one.claim([1], 1)
    two.claim([2], 2)
    forged = claim._replace(ids=(1, 2, 3))  # more than it claimed
    finished = one.finish(forged)
    assert finished.ids == (1,)
    assert_timestamp(finished.at)
    first = h.get(1)
    assert first["estado"] == "listo" and first["fecha_fin"] == finished.at and first["worker"] == 1
    assert datetime.fromisoformat(first["fecha_inicio"]) <= datetime.fromisoformat(first["fecha_fin"])
    assert datetime.fromisoformat(first["fecha_recibido"]) <= datetime.fromisoformat(first["fecha_inicio"])
    assert h.get(2)["estado"] == "en proceso"  # held by worker 2
    assert h.get(3)["estado"] == "pendiente" and h.get(3)["fecha_fin"] is None  # never taken


def test_a_stale_claim_changes_nothing(h):
    h.submit(new("A"))
    old = h.worker(1)
    stale = old.claim([1], 1)
    assert h.hand_back(1, True) == [(1, "pendiente")]  # its worker was declared dead
    fresh = h.worker(1).claim([1], 1)  # its replacement, with the same number
    assert fresh.ids == (1,) and fresh.at != stale.at
    assert old.finish(stale).ids == ()
    order = h.get(1)
    assert order["estado"] == "en proceso" and order["fecha_inicio"] == fresh.at
    assert order["fecha_fin"] is None and order["intentos"] == 1


def test_crashed_attempts_count_and_the_last_is_fallido(h):
    h.submit(new())
    worker = h.worker(1)
    for attempt in range(1, MAX_ATTEMPTS):
        assert worker.claim([1], 1).ids == (1,)
        assert h.hand_back(1, True) == [(1, Estado.PENDIENTE)]
        order = h.get(1)
        assert order["intentos"] == attempt
        assert order["estado"] == "pendiente"
        assert order["worker"] is None and order["fecha_inicio"] is None
        assert order["error"] is None  # a crash records no exception
    assert MAX_ATTEMPTS == 3
    h.worker(2).claim([1], 2)
    assert h.hand_back(2, True) == [(1, "fallido")]
    order = h.get(1)
    assert order["estado"] == "fallido" and order["intentos"] == 3
    assert order["error"] == CRASH_ERROR  # a fallido order says why
    assert worker.claim([1], 1).ids == ()  # never taken again


def test_graceful_hand_back_does_not_count(h):
    h.submit(new())
    worker = h.worker(1)
    for _ in range(MAX_ATTEMPTS + 2):
        worker.claim([1], 1)
        assert h.hand_back(1, False) == [(1, "pendiente")]
    order = h.get(1)
    assert order["estado"] == "pendiente" and order["intentos"] == 0
    assert order["error"] is None  # a graceful stop is no failure


def test_graceful_hand_back_after_crashes_keeps_the_count(h):
    h.submit(new())
    worker = h.worker(1)
    worker.claim([1], 1)
    h.hand_back(1, True)
    worker.claim([1], 1)
    h.hand_back(1, False)
    assert h.get(1)["intentos"] == 1
    assert h.get(1)["estado"] == "pendiente"


def test_hand_back_takes_only_that_workers_unfinished_orders(h):
    h.submit(new("A"), new("B"), new("C"))
    one, two = h.worker(1), h.worker(2)
    one.finish(one.claim([1], 1))
    one.claim([2], 1)
    two.claim([3], 2)
    assert h.hand_back(1, True) == [(2, "pendiente")]
    assert h.get(1)["estado"] == "listo" and h.get(1)["intentos"] == 0
    assert h.get(3)["estado"] == "en proceso"
    assert h.hand_back(1, True) == []


def test_start_recovers_what_a_crash_left_in_process(h):
    h.submit(new("A"), new("B"), new("C"))
    two = h.worker(2)
    for _ in range(MAX_ATTEMPTS - 1):  # order 3 is on its last attempt
        two.claim([3], 2)
        h.hand_back(2, True)
    two.claim([3], 2)
    h.worker(1).claim([1, 2], 1)
    h.stop()  # as a crash leaves it: nothing handed back
    h.start()
    assert h.recovery == Recovery(requeued=(1, 2), failed=(3,))
    assert [h.get(i)["estado"] for i in (1, 2, 3)] == ["pendiente", "pendiente", "fallido"]
    assert h.get(1)["intentos"] == 1
    h.stop()
    h.start()
    assert h.recovery == Recovery()


def _work_in_a_process(opener: Any, server_pid: int, ids: list[int], out: Any) -> None:
    store = opener(7, server_pid)
    try:
        claim = store.claim(ids, 7)
        out.put((claim.ids, store.finish(claim).ids))
    finally:
        store.close()


def test_a_spawned_worker_process_opens_its_own_store(h):
    h.submit(new("A"), new("B"))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    process = ctx.Process(
        target=_work_in_a_process, args=(h.storage.worker_opener(), os.getpid(), [1, 2], out)
    )
    process.start()
    try:
        assert out.get(timeout=60) == ((1, 2), (1, 2))
    finally:
        process.join(60)
    assert process.exitcode == 0
    assert [h.get(i)["worker"] for i in (1, 2)] == [7, 7]
    assert h.counts()["listo"] == 2


# --- commands ------------------------------------------------------------------------


def test_cancel_only_pending(h):
    h.submit(new("A"), new("B"), new("C"))
    order, cancelled = h.cancel(1)
    assert cancelled is True and order["estado"] == "cancelado" and order["id"] == 1
    order, cancelled = h.cancel(1)
    assert cancelled is False and order["estado"] == "cancelado"
    worker = h.worker(1)
    claim = worker.claim([2], 1)
    order, cancelled = h.cancel(2)
    assert cancelled is False and order["estado"] == "en proceso"
    worker.finish(claim)
    assert h.cancel(2) == (h.get(2), False)
    assert h.cancel(99) == (None, False)
    assert worker.claim([1], 1).ids == ()  # a cancelled order is never processed


def test_list_filters(h):
    h.submit(new("Ana"), new("Beto"), new("Ana"), new("Ana"), new("Beto"))
    worker = h.worker(1)
    worker.finish(worker.claim([3], 1))
    h.cancel(5)

    def ids(estado=None, cliente=None, desde_id=0, limite=100):
        return [o["id"] for o in h.list_orders(estado, cliente, desde_id, limite)]

    assert ids() == [1, 2, 3, 4, 5]
    assert ids(cliente="Ana") == [1, 3, 4]
    assert ids(cliente="ana") == []
    assert ids(estado="listo") == [3]
    assert ids(estado="pendiente") == [1, 2, 4]
    assert ids(estado="pendiente", cliente="Beto") == [2]
    assert ids(estado="cancelado") == [5]
    assert ids(desde_id=3) == [4, 5]
    assert ids(limite=2) == [1, 2]
    assert ids(desde_id=1, limite=2, cliente="Ana") == [3, 4]
    assert ids(desde_id=5) == []
    assert tuple(h.list_orders(None, None, 0, 1)[0]) == order_keys(h)


def test_counts_every_estado(h):
    assert h.counts() == dict.fromkeys(ESTADOS, 0)
    h.submit(*[new() for _ in range(6)])
    one, two = h.worker(1), h.worker(2)
    claim = one.claim([1, 2], 1)
    one.finish(claim._replace(ids=(1,)))
    h.cancel(3)
    for _ in range(MAX_ATTEMPTS):
        two.claim([4], 2)
        h.hand_back(2, True)
    counts = h.counts()
    assert counts == {"pendiente": 2, "en proceso": 1, "listo": 1, "cancelado": 1, "fallido": 1}
    assert all(type(k) is str for k in counts)


def test_pending_ids(h):
    h.submit(*[new() for _ in range(6)])
    h.cancel(2)
    h.worker(1).claim([4], 1)
    assert h.pending_ids(0, 100) == [1, 3, 5, 6]
    assert h.pending_ids(3, 100) == [3, 5, 6]
    assert h.pending_ids(0, 2) == [1, 3]


def test_get_missing_is_none(h):
    assert h.get(1) is None
    assert h.get(2**63 - 1) is None


def test_timestamps_are_utc_now(h):
    before = datetime.now(timezone.utc)
    h.submit(new())
    worker = h.worker(1)
    claim = worker.claim([1], 1)
    finished = worker.finish(claim)
    after = datetime.now(timezone.utc)
    order = h.get(1)
    assert order["fecha_inicio"] == claim.at and order["fecha_fin"] == finished.at
    for stamp in (order["fecha_recibido"], claim.at, finished.at):
        assert before <= assert_timestamp(stamp) <= after


# --- tasks (contract section 11) -------------------------------------------------------


def later(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def test_finish_stores_each_orders_resultado(h):
    h.submit(new("A"), new("B"))
    worker = h.worker(1)
    claim = worker.claim([1, 2], 1)
    done = worker.finish(claim, {1: '{"albaran": "A-1", "ñ": [1, 2.5, null]}'})
    assert done.ids == (1, 2)
    assert h.get(1)["resultado"].load() == {"albaran": "A-1", "ñ": [1, 2.5, None]}
    assert h.get(2)["resultado"] is None  # missing from the mapping: null
    for order_id in (1, 2):
        order = h.get(order_id)
        assert order["estado"] == "listo" and order["error"] is None and order["reintentar_despues"] is None
    assert h.worker(2).finish(claim, {1: '"again"'}).ids == ()  # no longer held
    assert h.get(1)["resultado"].load()["albaran"] == "A-1"


def test_a_failed_attempt_waits_for_its_retry_time(h):
    h.submit(new("A"), new("B"))
    worker = h.worker(1)
    claim = worker.claim([1], 1)
    retry_at = later(60)
    assert worker.fail(claim, "ValueError: no hay pan", retry_at) == [(1, Estado.PENDIENTE)]
    order = h.get(1)
    assert order["estado"] == "pendiente" and order["reintentar_despues"] == retry_at
    assert order["error"] == "ValueError: no hay pan"
    assert order["intentos"] == 1 and order["fallos"] == 1
    assert order["worker"] is None and order["fecha_inicio"] is None
    # Not handed out, not taken, before its time; the others are.
    assert h.pending_ids(0, 10) == [2]
    assert worker.claim([1, 2], 1).ids == (2,)
    assert h.get(1)["estado"] == "pendiente"
    assert worker.fail(claim, "stale", None) == []  # the old claim holds nothing now


def test_cancelling_an_order_waiting_for_its_retry_clears_the_wait(h):
    """A cancelled order waits for no try: `reintentar_despues` is null, as
    the docs say of every order not waiting for one."""
    h.submit(new("A"))
    worker = h.worker(1)
    worker.fail(worker.claim([1], 1), "ConnectionError: caído", later(60))
    order, cancelled = h.cancel(1)
    assert cancelled is True and order["estado"] == "cancelado"
    assert order["reintentar_despues"] is None and h.get(1)["reintentar_despues"] is None
    assert order["error"] == "ConnectionError: caído"  # why it had been failing stays


def test_a_retry_that_is_due_is_taken_and_the_wait_cleared(h):
    h.submit(new("A"))
    worker = h.worker(1)
    worker.fail(worker.claim([1], 1), "ValueError: x", later(-0.001))
    assert h.pending_ids(0, 10) == [1]
    claim = worker.claim([1], 1)
    assert claim.ids == (1,)
    order = h.get(1)
    assert order["estado"] == "en proceso" and order["reintentar_despues"] is None
    assert order["error"] == "ValueError: x"  # what the task is told of its last try
    assert worker.get(1) == order  # a worker reads the same order it hands its task
    worker.finish(claim, {1: "1"})
    order = h.get(1)
    assert order["estado"] == "listo" and order["resultado"].load() == 1
    assert order["error"] == "ValueError: x" and order["intentos"] == 1 and order["fallos"] == 1


def test_the_last_failed_attempt_is_fallido(h):
    h.submit(new("A"))
    worker = h.worker(1)
    claim = worker.claim([1], 1)
    assert worker.fail(claim, "RuntimeError: fin", None) == [(1, Estado.FALLIDO)]
    order = h.get(1)
    assert order["estado"] == "fallido" and order["error"] == "RuntimeError: fin"
    assert order["reintentar_despues"] is None and order["fecha_fin"] is None
    assert order["worker"] == 1 and order["fecha_inicio"] == claim.at
    assert h.pending_ids(0, 10) == [] and worker.claim([1], 1).ids == ()


def test_failures_do_not_count_toward_the_crash_limit(h):
    h.submit(new("A"))
    worker = h.worker(1)
    for _ in range(MAX_ATTEMPTS):
        worker.fail(worker.claim([1], 1), "E: x", later(-0.001))
    for crash in range(1, MAX_ATTEMPTS + 1):
        worker.claim([1], 1)
        changed = h.hand_back(1, True)
        assert changed == [(1, Estado.FALLIDO if crash == MAX_ATTEMPTS else Estado.PENDIENTE)]
    order = h.get(1)
    assert order["intentos"] == 2 * MAX_ATTEMPTS and order["fallos"] == MAX_ATTEMPTS


def test_the_server_fails_a_claim_whose_worker_it_stopped(h):
    h.submit(new("A"), new("B"))
    claim = h.worker(1).claim([1, 2], 1)
    one = claim._replace(ids=(1,))
    assert h.fail(one, "TiempoAgotado: x", later(30)) == [(1, Estado.PENDIENTE)]
    assert h.get(1)["fallos"] == 1 and h.get(1)["error"] == "TiempoAgotado: x"
    assert h.fail(one, "again", None) == []  # no longer held
    assert h.get(2)["estado"] == "en proceso"  # not in that claim
    assert h.hand_back(1, True) == [(2, Estado.PENDIENTE)]


def test_retry_puts_only_a_fallido_order_back_with_fresh_attempts(h):
    h.submit(new("A"), new("B"), new("C"), owner="ana")
    worker = h.worker(1)
    worker.fail(worker.claim([1], 1), "RuntimeError: fin", None)
    worker.finish(worker.claim([2], 1), {2: '"hecho"'})
    assert h.retry(1, "beto") == (None, False)  # someone else's
    order, retried = h.retry(1, "ana")
    assert retried and order == h.get(1)
    assert order["estado"] == "pendiente" and order["intentos"] == 0 and order["fallos"] == 0
    assert order["worker"] is None and order["fecha_inicio"] is None and order["fecha_fin"] is None
    assert order["resultado"] is None and order["reintentar_despues"] is None
    assert order["error"] == "RuntimeError: fin"  # until an attempt replaces it
    assert h.pending_ids(0, 10) == [1, 3]
    for order_id, estado in [(1, "pendiente"), (2, "listo"), (3, "pendiente")]:
        order, retried = h.retry(order_id)
        assert not retried and order["estado"] == estado
    assert h.retry(99) == (None, False)


def test_get_by_referencia(h):
    h.submit(new("A", "ana-0001"), new("B"), owner="ana")
    assert h.get_by_referencia("ana-0001") == h.get(1)
    assert h.get_by_referencia("ana-0001", "ana") == h.get(1)
    assert h.get_by_referencia("ana-0001", "beto") is None
    assert h.get_by_referencia("ANA-0001") is None and h.get_by_referencia("nada") is None


# --- choosing a backend -------------------------------------------------------------


def test_a_postgresql_url_that_cannot_be_reached_is_refused_in_one_line(dead_port):
    async def start() -> None:
        await open_storage(f"postgresql://nobody:s3cret@127.0.0.1:{dead_port}/pedidos").start()

    with pytest.raises(StorageError, match="cannot use the database") as refused:
        asyncio.run(start())
    assert "\n" not in str(refused.value) and "s3cret" not in str(refused.value)
