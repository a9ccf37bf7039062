"""`pedidos.store.Store` against a real SQLite file (contract §6 and §7)."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pedidos.protocol.validation import NewOrder
from pedidos.storage.sqlite.store import MAX_ATTEMPTS, Store, now

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")

# name, declared type, NOT NULL, default, primary key: contract §7
CONTRACT_COLUMNS = [
    ("id", "INTEGER", 0, None, 1),
    ("cliente", "TEXT", 1, None, 0),
    ("productos", "TEXT", 1, None, 0),
    ("direccion", "TEXT", 1, None, 0),
    ("referencia", "TEXT", 0, None, 0),
    ("estado", "TEXT", 1, None, 0),
    ("fecha_recibido", "TEXT", 1, None, 0),
    ("fecha_inicio", "TEXT", 0, None, 0),
    ("fecha_fin", "TEXT", 0, None, 0),
    ("worker", "INTEGER", 0, None, 0),
    ("intentos", "INTEGER", 1, "0", 0),
]
ORDER_KEYS = [c[0] for c in CONTRACT_COLUMNS]


def acks(results) -> list[tuple[int, str, bool]]:
    """(id, estado, duplicado) of each order `insert_orders` stored."""
    return [(r.id, r.estado, r.duplicado) for r in results]


def new(cliente: str = "Ana", referencia: str | None = None, productos=("pan", "agua")) -> NewOrder:
    return NewOrder(cliente, tuple(productos), "Calle 1", referencia)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "pedidos.db"


@pytest.fixture
def store(db: Path):
    s = Store(str(db))
    s.create_schema()
    yield s
    s.close()


def raw(db: Path, sql: str, *params):
    """Read the file with a connection of our own, as any other program would."""
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def assert_timestamp(value: str) -> datetime:
    assert TIMESTAMP.match(value), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


# --- the table ---------------------------------------------------------------------


def test_schema_columns_are_exactly_the_contract(store, db):
    columns = [(r[1], r[2], r[3], r[4], r[5]) for r in raw(db, "PRAGMA table_info(pedidos)")]
    # extra columns are free (contract §7); these keep their names, types and order
    assert columns[: len(CONTRACT_COLUMNS)] == CONTRACT_COLUMNS


def test_referencia_is_unique(store, db):
    unique = [
        raw(db, f"PRAGMA index_info('{name}')")
        for _, name, is_unique, *_ in raw(db, "PRAGMA index_list(pedidos)")
        if is_unique
    ]
    assert [[r[2] for r in info] for info in unique] == [["referencia"]]
    store.insert_orders([new(referencia="r")])
    with pytest.raises(sqlite3.IntegrityError):
        raw(
            db,
            "INSERT INTO pedidos (cliente, productos, direccion, referencia, estado, fecha_recibido) "
            "SELECT cliente, productos, direccion, referencia, estado, fecha_recibido FROM pedidos",
        )


def test_create_schema_twice_keeps_the_data(store, db):
    store.insert_orders([new()])
    again = Store(str(db))
    again.create_schema()
    assert again.get(1)["cliente"] == "Ana"
    again.close()


def test_wal_mode_and_synchronous_full(store, db):
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]
    with store.transaction() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    other = Store(str(db))
    with other.transaction() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    other.close()


def test_timestamp_format():
    stamp = now()
    assert_timestamp(stamp)
    assert datetime.fromisoformat(stamp).tzinfo is not None


# --- intake ------------------------------------------------------------------------------


def test_insert_batch_returns_ids_in_order(store, db):
    results = acks(store.insert_orders([new("A"), new("B"), new("C")]))
    assert results == [(1, "pendiente", False), (2, "pendiente", False), (3, "pendiente", False)]
    assert [o["cliente"] for o in store.list_orders(None, None, 0, 10)] == ["A", "B", "C"]


def test_stored_row_is_the_contract_row(store, db):
    store.insert_orders([new("Juan Pérez", "ref-1", ["pan", "agua ñ"])])
    order = store.get(1)
    assert list(order) == ORDER_KEYS
    assert order["cliente"] == "Juan Pérez"
    assert order["productos"] == ["pan", "agua ñ"]
    assert order["direccion"] == "Calle 1"
    assert order["referencia"] == "ref-1"
    assert order["estado"] == "pendiente"
    assert_timestamp(order["fecha_recibido"])
    assert order["fecha_inicio"] is None and order["fecha_fin"] is None
    assert order["worker"] is None and order["intentos"] == 0
    # the column holds a JSON array of strings, readable by any program
    (productos,) = raw(db, "SELECT productos FROM pedidos WHERE id = 1")[0]
    assert json.loads(productos) == ["pan", "agua ñ"]


def test_referencia_dedupe_across_and_within_batches(store):
    first = acks(store.insert_orders([new("A", "r1"), new("B", None)]))
    assert first == [(1, "pendiente", False), (2, "pendiente", False)]
    again = store.insert_orders([new("A", "r1"), new("C", "r2"), new("C", "r2"), new("E", None)])
    assert acks(again) == [
        (1, "pendiente", True),
        (3, "pendiente", False),
        (3, "pendiente", True),
        (4, "pendiente", False),
    ]
    assert not any(r.taken for r in again)
    assert store.counts()["pendiente"] == 4


def test_a_different_order_under_a_stored_referencia_is_taken(store):
    store.insert_orders([new("A", "r1")], ["owner-a"])
    others = [
        new("other", "r1"),
        new("A", "r1", productos=("pan",)),
        NewOrder("A", ("pan", "agua"), "Calle 2", "r1"),
    ]
    for other in others:
        (result,) = store.insert_orders([other], ["owner-a"])
        assert (result.id, result.taken) == (1, True), other
    # the same order from another owner is taken too: it is not that owner's to see
    (result,) = store.insert_orders([new("A", "r1")], ["owner-b"])
    assert result.taken
    # an admin (no owner) retrying the same order gets the duplicate
    (result,) = store.insert_orders([new("A", "r1")], [None])
    assert (result.id, result.duplicado, result.taken) == (1, True, False)
    # within one batch: the second, different order under a new referencia is taken
    batch = store.insert_orders([new("B", "r2"), new("B2", "r2"), new("B", "r2")])
    assert [(r.id, r.duplicado, r.taken) for r in batch] == [
        (2, False, False),
        (2, True, True),
        (2, True, False),
    ]
    assert store.get(1)["cliente"] == "A" and store.get(2)["cliente"] == "B"
    assert store.counts()["pendiente"] == 2


def test_duplicate_reports_the_stored_estado(store):
    store.insert_orders([new(referencia="r")])
    store.claim([1], 1)
    store.finish([1], 1)
    assert acks(store.insert_orders([new(referencia="r")])) == [(1, "listo", True)]


def test_orders_without_referencia_never_dedupe(store):
    assert [r.id for r in store.insert_orders([new()] * 3)] == [1, 2, 3]


def test_failed_batch_stores_nothing(store, db):
    bad = NewOrder(None, ("x",), "d", None)  # type: ignore[arg-type]  # NOT NULL violated
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_orders([new("A"), bad])
    assert raw(db, "SELECT COUNT(*) FROM pedidos") == [(0,)]
    assert acks(store.insert_orders([new("B")])) == [(1, "pendiente", False)]


def test_insert_is_durable_for_other_connections(store, db):
    store.insert_orders([new("A")])
    assert raw(db, "SELECT cliente, estado FROM pedidos") == [("A", "pendiente")]


def test_transaction_rolls_back_on_error_and_takes_the_lock(db):
    taken = []

    class Lock:
        def __enter__(self):
            taken.append("enter")

        def __exit__(self, *exc):
            taken.append("exit")

    s = Store(str(db), Lock())
    s.create_schema()
    with pytest.raises(RuntimeError), s.transaction() as conn:
        conn.execute(
            "INSERT INTO pedidos (cliente, productos, direccion, estado, fecha_recibido) "
            "VALUES ('A', '[]', 'd', 'pendiente', 'x')"
        )
        raise RuntimeError("boom")
    assert raw(db, "SELECT COUNT(*) FROM pedidos") == [(0,)]
    assert taken == ["enter", "exit", "enter", "exit"]  # create_schema, then the failed one
    s.close()


def test_concurrent_writers_with_a_shared_lock(db):
    Store(str(db)).create_schema()
    lock = threading.Lock()
    errors = []

    def write(n: int) -> None:
        s = Store(str(db), lock)
        try:
            for i in range(20):
                s.insert_orders([new(f"t{n}", f"t{n}-{i}"), new(f"t{n}")])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert raw(db, "SELECT COUNT(*), COUNT(DISTINCT id) FROM pedidos") == [(160, 160)]


# --- processing --------------------------------------------------------------------------------


def test_claim_takes_only_pending_orders(store):
    store.insert_orders([new("A"), new("B"), new("C"), new("D")])
    store.cancel(2)
    store.claim([4], 2)
    started, taken = store.claim([1, 2, 3, 4, 99], 1)
    assert taken == [1, 3]
    assert_timestamp(started)
    for order_id in (1, 3):
        order = store.get(order_id)
        assert order["estado"] == "en proceso"
        assert order["worker"] == 1
        assert order["fecha_inicio"] == started
        assert order["fecha_fin"] is None
    assert store.get(2)["estado"] == "cancelado"
    assert store.get(4)["worker"] == 2
    # nobody takes an order twice
    assert store.claim([1, 3, 4], 2)[1] == []
    assert store.claim([1, 3], 1)[1] == []


def test_claim_many_ids_at_once(store):
    store.insert_orders([new(f"c{i}") for i in range(1200)])
    _, taken = store.claim(list(range(1, 1201)), 1)
    assert taken == list(range(1, 1201))
    store.finish(taken, 1)
    assert store.counts()["listo"] == 1200


def test_finish_marks_listo_only_what_the_worker_holds(store):
    store.insert_orders([new("A"), new("B"), new("C")])
    store.claim([1], 1)
    store.claim([2], 2)
    finished = store.finish([1, 2, 3], 1)
    assert_timestamp(finished)
    one = store.get(1)
    assert one["estado"] == "listo" and one["fecha_fin"] == finished and one["worker"] == 1
    assert datetime.fromisoformat(one["fecha_inicio"]) <= datetime.fromisoformat(one["fecha_fin"])
    assert datetime.fromisoformat(one["fecha_recibido"]) <= datetime.fromisoformat(one["fecha_inicio"])
    assert store.get(2)["estado"] == "en proceso"  # held by worker 2
    assert store.get(3)["estado"] == "pendiente"  # never taken
    assert store.get(3)["fecha_fin"] is None


def test_crashed_attempts_count_and_the_third_is_fallido(store):
    store.insert_orders([new()])
    for attempt in range(1, MAX_ATTEMPTS):
        assert store.claim([1], 1)[1] == [1]
        assert store.release(1, count_attempt=True) == [(1, "pendiente")]
        order = store.get(1)
        assert order["intentos"] == attempt
        assert order["estado"] == "pendiente"
        assert order["worker"] is None and order["fecha_inicio"] is None
    assert MAX_ATTEMPTS == 3
    store.claim([1], 2)
    assert store.release(2, count_attempt=True) == [(1, "fallido")]
    order = store.get(1)
    assert order["estado"] == "fallido" and order["intentos"] == 3
    assert store.claim([1], 1)[1] == []  # never taken again


def test_graceful_release_does_not_count(store):
    store.insert_orders([new()])
    for _ in range(MAX_ATTEMPTS + 2):
        store.claim([1], 1)
        assert store.release(1, count_attempt=False) == [(1, "pendiente")]
    order = store.get(1)
    assert order["estado"] == "pendiente" and order["intentos"] == 0


def test_graceful_release_after_crashes_keeps_the_count(store):
    store.insert_orders([new()])
    store.claim([1], 1)
    store.release(1, count_attempt=True)
    store.claim([1], 1)
    store.release(1, count_attempt=False)
    assert store.get(1)["intentos"] == 1
    assert store.get(1)["estado"] == "pendiente"


def test_release_by_worker_or_all(store):
    store.insert_orders([new("A"), new("B"), new("C")])
    store.claim([1], 1)
    store.claim([2], 2)
    store.claim([3], 2)
    assert store.release(1, count_attempt=True) == [(1, "pendiente")]
    assert store.get(2)["estado"] == "en proceso"
    store.claim([1], 1)
    assert sorted(store.release(None, count_attempt=True)) == [
        (1, "pendiente"),
        (2, "pendiente"),
        (3, "pendiente"),
    ]
    assert store.counts()["en proceso"] == 0
    assert store.release(None, count_attempt=True) == []


def test_release_leaves_finished_orders_alone(store):
    store.insert_orders([new("A"), new("B")])
    store.claim([1, 2], 1)
    store.finish([1], 1)
    assert store.release(None, count_attempt=True) == [(2, "pendiente")]
    assert store.get(1)["estado"] == "listo" and store.get(1)["intentos"] == 0


# --- cancel ---------------------------------------------------------------------------------------


def test_cancel_only_pending(store):
    store.insert_orders([new("A"), new("B"), new("C")])
    order, cancelled = store.cancel(1)
    assert cancelled is True and order["estado"] == "cancelado" and order["id"] == 1
    order, cancelled = store.cancel(1)
    assert cancelled is False and order["estado"] == "cancelado"
    store.claim([2], 1)
    order, cancelled = store.cancel(2)
    assert cancelled is False and order["estado"] == "en proceso"
    store.finish([2], 1)
    assert store.cancel(2) == (store.get(2), False)
    assert store.cancel(99) == (None, False)
    assert store.claim([1], 1)[1] == []  # a cancelled order is never processed


# --- reads ----------------------------------------------------------------------------------------


def test_list_filters(store):
    store.insert_orders([new("Ana"), new("Beto"), new("Ana"), new("Ana"), new("Beto")])
    store.claim([3], 1)
    store.finish([3], 1)
    store.cancel(5)

    def ids(estado=None, cliente=None, desde_id=0, limite=100):
        return [o["id"] for o in store.list_orders(estado, cliente, desde_id, limite)]

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
    assert list(store.list_orders(None, None, 0, 1)[0]) == ORDER_KEYS


def test_counts_every_estado(store):
    assert store.counts() == {"pendiente": 0, "en proceso": 0, "listo": 0, "cancelado": 0, "fallido": 0}
    store.insert_orders([new() for _ in range(6)])
    store.claim([1, 2], 1)
    store.finish([1], 1)
    store.cancel(3)
    store.claim([4], 2)
    for _ in range(MAX_ATTEMPTS):
        store.claim([4], 2)
        store.release(2, count_attempt=True)
    assert store.counts() == {"pendiente": 2, "en proceso": 1, "listo": 1, "cancelado": 1, "fallido": 1}


def test_pending_ids(store):
    store.insert_orders([new() for _ in range(6)])
    store.cancel(2)
    store.claim([4], 1)
    assert store.pending_ids(0, 100) == [1, 3, 5, 6]
    assert store.pending_ids(3, 100) == [3, 5, 6]
    assert store.pending_ids(0, 2) == [1, 3]


def test_get_missing_is_none(store):
    assert store.get(1) is None
    assert store.get(2**63 - 1) is None


def test_timestamps_are_utc_now(store):
    before = datetime.now(timezone.utc)
    store.insert_orders([new()])
    started, _ = store.claim([1], 1)
    finished = store.finish([1], 1)
    after = datetime.now(timezone.utc)
    order = store.get(1)
    for stamp in (order["fecha_recibido"], started, finished):
        assert before <= assert_timestamp(stamp) <= after
