"""The SQLite backend's own `Store` against a real file: what is particular to
SQLite (the table's declared types, WAL, synchronous, the write lock, the
hand-off of batches to its writer).
What every backend promises is in test_storage.py."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import TASK_KEYS

from pedidos.domain import NewOrder, RawJSON
from pedidos.protocol.replies import encode_line
from pedidos.storage.base import OutcomeUnknown
from pedidos.storage.intake import Intake
from pedidos.storage.sqlite import writer_process
from pedidos.storage.sqlite.lock import WriteLock
from pedidos.storage.sqlite.opener import SqliteOpener
from pedidos.storage.sqlite.store import Store, now, python_json_functions
from pedidos.storage.sqlite.writer_process import Request

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
ORDER_KEYS = [c[0] for c in CONTRACT_COLUMNS] + list(TASK_KEYS)


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


def test_a_database_from_before_tasks_gains_their_columns_and_keeps_its_orders(db):
    """An existing file made by the seed's schema (the contract's columns only)."""
    columns = ", ".join(
        f"{name} {kind}{' NOT NULL' if notnull else ''}" for name, kind, notnull, *_ in CONTRACT_COLUMNS
    )
    old = sqlite3.connect(db)
    old.execute(f"CREATE TABLE pedidos ({columns.replace('id INTEGER', 'id INTEGER PRIMARY KEY', 1)})")
    old.execute(
        "INSERT INTO pedidos (cliente, productos, direccion, estado, fecha_recibido, intentos) "
        "VALUES ('Ana', '[\"pan\"]', 'Calle 1', 'fallido', ?, 3)",
        (now(),),
    )
    old.commit()
    old.close()
    store = Store(str(db))
    try:
        store.create_schema()
        store.create_schema()  # twice: each column is added once
        order = store.get(1)
        assert order["estado"] == "fallido" and order["intentos"] == 3
        assert [order[k] for k in TASK_KEYS] == [0, None, None, None]
        assert store.retry(1)[1] is True
    finally:
        store.close()
    names = [row[1] for row in raw(db, "PRAGMA table_info(pedidos)")]
    assert names[: len(CONTRACT_COLUMNS)] == [c[0] for c in CONTRACT_COLUMNS]
    assert set(TASK_KEYS) <= set(names)


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


def test_a_workers_store_commits_without_its_own_fsync(store, db):
    worker = SqliteOpener(str(db), WriteLock())(1, 0)
    with worker.transaction() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: see backend.py
    worker.close()


def test_ids_of_a_batch_over_several_statements_are_consecutive(store, db):
    store.insert_orders([new()])
    results = store.insert_orders([new(f"c{i}") for i in range(350)])
    assert [r.id for r in results] == list(range(2, 352))
    assert raw(db, "SELECT MIN(id), MAX(id), COUNT(*) FROM pedidos") == [(1, 351, 351)]


def test_timestamp_format():
    stamp = now()
    assert_timestamp(stamp)
    assert datetime.fromisoformat(stamp).tzinfo is not None


# --- intake ------------------------------------------------------------------------------


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


def test_requests_failed_for_a_client_that_left_leave_no_traceback_in_the_log():
    # A writer that never answered, then a stop: the orders' futures fail with
    # no one left to read them; asyncio must not log them when they are freed.
    unhandled: list[dict] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
        intake = Intake(loop, send=lambda batch: True, on_stored=None)
        intake.submit(NewOrder("Ana", ["pan"], "Calle 1", None))
        await asyncio.sleep(0)  # the batch goes to the (silent) writer
        assert intake.fail_in_flight(OutcomeUnknown("the writer stopped without answering")) == 1
        gc.collect()

    asyncio.run(scenario())
    assert unhandled == []


# What another program may have written in `resultado`, and what a reply shows.
FOREIGN_RESULTADOS = [
    ('{\n  "albaran": "A-1",\n  "lineas": [1, 2]\n}', {"albaran": "A-1", "lineas": [1, 2]}),
    ("\r\n[true]\r\n", [True]),
    ("no es json", "no es json"),
    ('{"a": 1', '{"a": 1'),
    ("NaN", "NaN"),  # Python's json reads it; it is not JSON
    (42, 42),  # stored as '42' (the column is TEXT)
    (b"caja 7", "caja 7"),  # a blob: its bytes as text
    ('"ya es texto"', "ya es texto"),
    ("[1]\x00x", "[1]\x00x"),  # JSON to SQLite's json_valid, which stops at the NUL
]


@pytest.mark.parametrize("functions", ["sqlite", "python"])
def test_a_resultado_another_program_wrote_reads_back_as_json_on_one_line(db, functions):
    # A reply splices `resultado` in unparsed: text that is not JSON, or JSON
    # over many lines, must not break the reply or its line. "python": the
    # functions a SQLite built without its own JSON ones is given.
    store = Store(str(db))
    try:
        store.create_schema()
        if functions == "python":
            python_json_functions(store._conn)
        store.insert_orders([new() for _ in FOREIGN_RESULTADOS])
        conn = sqlite3.connect(str(db))
        with conn:
            for order_id, (stored, _) in enumerate(FOREIGN_RESULTADOS, 1):
                conn.execute("UPDATE pedidos SET resultado = ? WHERE id = ?", (stored, order_id))
        conn.close()
        for order_id, (_, shown) in enumerate(FOREIGN_RESULTADOS, 1):
            order = store.get(order_id)
            assert isinstance(order["resultado"], RawJSON) and order["resultado"].load() == shown
            line = encode_line({"ok": True, "pedido": order})
            assert line.count(b"\n") == 1 and json.loads(line)["pedido"]["resultado"] == shown, line
        assert [o["resultado"].load() for o in store.list_orders(None, None, 0, 100)] == [
            shown for _, shown in FOREIGN_RESULTADOS
        ]
        assert store.get(1) is not None and new().cliente == store.get(1)["cliente"]
    finally:
        store.close()


def test_python_json_functions_answer_as_sqlites_own():
    # NULL aside: rows.RESULTADO never asks (and json_valid(NULL) changed between SQLite versions).
    texts = [
        "",
        " ",
        "1",
        "-0.5e3",
        "NaN",
        "Infinity",
        "[1,]",
        '{"a":1}',
        '{"a":1',
        "'x'",
        '"\\u00f1"',
        "[1] [2]",
        "nul\x00",
    ]
    native = sqlite3.connect(":memory:")
    python = sqlite3.connect(":memory:")
    python_json_functions(python)
    try:
        for text in texts:
            query = "SELECT json_valid(?), json_quote(?)"
            assert (
                python.execute(query, (text, text)).fetchone()
                == native.execute(query, (text, text)).fetchone()
            ), text
    finally:
        native.close()
        python.close()


def test_a_full_disk_logs_each_kind_of_failed_write_under_its_own_line(caplog):
    # Every batch of orders and every other write fail alike on a full disk:
    # each kind keeps its own line (held back per kind), not one line that
    # counts the other's failures as its own.
    class FullDisk:
        def insert_orders(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

        def release(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

    order = ("Ana", ("pan",), "Calle 1", None, None)
    batches = [Request([order], [(FullDisk.release, (1, False))])]
    with caplog.at_level(logging.ERROR):
        writer_process.write(FullDisk(), batches, ack=lambda receipt: receipt)
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("could not store 1 orders: database or disk is full") for m in said), said
    assert any(m.startswith("database write failed: database or disk is full") for m in said), said
