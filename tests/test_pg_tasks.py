"""Tasks (contract section 11) on many nodes sharing one PostgreSQL: the task
fields, retries after a backoff, `reintentar` and `consultar` by `referencia`
work across nodes; an older database gains the task columns at start."""

from __future__ import annotations

import asyncio
import time

import psycopg
from conftest import ServerProcess, wait_for
from test_tasks import BASE_S, RETRIES, calls, task_env

from pedidos.client import Client
from pedidos.storage.postgres.backend import PostgresStorage


def test_tasks_fail_retry_and_finish_across_two_nodes(pg_url, tmp_path):
    state = tmp_path / "estado"
    state.mkdir()
    args = ["--port", "0", "--tarea", "tareas_prueba:segun_cliente", "--reintentos", str(RETRIES)]
    args += ["--reintento-base", str(BASE_S), "--workers", "1", "--lease", "2"]
    env = task_env(state)
    nodes = [ServerProcess([*args, "--nodo", name], pg_url, tmp_path, env) for name in "AB"]  # type: ignore[arg-type]
    try:
        for node in nodes:
            node.wait_ready()
        with (
            Client("127.0.0.1", nodes[0].port, timeout=30) as a,
            Client("127.0.0.1", nodes[1].port, timeout=30) as b,
        ):
            flaky = a.submit("falla-dos-veces", ["pan"], "Calle 1", "ref-flaky").id
            fixable = b.submit("arreglable", ["pan"], "Calle 1").id
            done = b.call({"accion": "esperar", "id": flaky, "timeout": 20})["pedido"]
            assert done["estado"] == "listo" and done["resultado"] == {"llamadas": 3}, done
            assert (done["intentos"], done["fallos"], done["error"]) == (2, 2, "ValueError: fallo 2")
            assert done["reintentar_despues"] is None and done["nodo"] in ("A", "B")
            assert b.call({"accion": "consultar", "referencia": "ref-flaky"})["pedido"] == done
            failed = a.call({"accion": "esperar", "id": fixable, "timeout": 20})["pedido"]
            assert failed["estado"] == "fallido" and failed["error"].startswith("ConnectionError"), failed
            assert failed["fallos"] == RETRIES + 1
            (state / f"arreglado-{fixable}").touch()
            again = a.retry(fixable)
            assert (again.estado, again.intentos, again.fallos, again.nodo) == ("pendiente", 0, 0, None)
            done = b.call({"accion": "esperar", "id": fixable, "timeout": 20})["pedido"]
            assert done["estado"] == "listo" and done["resultado"] == "pagado", done
            refused = b.request({"accion": "reintentar", "id": fixable})
            assert refused["ok"] is False and refused["error"] == "no_reintentable", refused
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.stop()
            node.kill()


def test_a_node_with_a_call_hanging_still_takes_the_other_nodes_orders(pg_url, tmp_path):
    """B's worker 1 hangs on a call (no --limite-tarea) and its worker 2 idles;
    A's only worker hangs too. An order that A takes in must be done by B's idle
    worker, though B's dispatcher has an order in hand."""
    state = tmp_path / "estado"
    state.mkdir()
    args = ["--port", "0", "--tarea", "tareas_prueba:segun_cliente", "--shutdown-timeout", "0.5"]
    env = task_env(state)
    a = ServerProcess([*args, "--nodo", "A", "--workers", "1"], pg_url, tmp_path, env)  # type: ignore[arg-type]
    nodes = [a]
    try:
        a.wait_ready()
        with Client("127.0.0.1", a.port, timeout=30) as client:
            on_a = client.submit("cuelga-una-vez", ["pan"], "Calle 1").id
            wait_for(lambda: calls(state, on_a), timeout=10)  # A's one worker is now stuck
            b = ServerProcess([*args, "--nodo", "B", "--workers", "2"], pg_url, tmp_path, env)  # type: ignore[arg-type]
            nodes.append(b)
            b.wait_ready()
            on_b = client.submit("cuelga-una-vez", ["pan"], "Calle 1").id
            wait_for(lambda: calls(state, on_b), timeout=10)
            assert client.get(on_b).nodo == "B"  # so B has a call in hand, and one worker free
            late = client.submit("devuelve", ["pan"], "Calle 1").id
            done = client.wait(late, timeout=15)
            assert done.estado == "listo" and done.nodo == "B"
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.stop()
            node.kill()


def test_a_node_stopping_still_stops_a_call_at_the_limit_and_counts_it(pg_url, tmp_path):
    """SIGTERM while a call hangs: the call is stopped at --limite-tarea and
    counts a failure (matched on node, worker and `fecha_inicio`), instead of
    holding the stop up to --shutdown-timeout and going back uncounted."""
    state = tmp_path / "estado"
    state.mkdir()
    args = ["--port", "0", "--tarea", "tareas_prueba:segun_cliente", "--limite-tarea", "1"]
    args += ["--shutdown-timeout", "20", "--reintento-base", str(BASE_S), "--workers", "1"]
    env = task_env(state)
    a = ServerProcess([*args, "--nodo", "A"], pg_url, tmp_path, env)  # type: ignore[arg-type]
    nodes = [a]
    try:
        a.wait_ready()
        with Client("127.0.0.1", a.port, timeout=30) as client:
            order_id = client.submit("cuelga-una-vez", ["pan"], "Calle 1").id
        wait_for(lambda: calls(state, order_id), timeout=10)
        began = time.monotonic()
        assert a.stop() == 0
        took = time.monotonic() - began
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(
                "SELECT estado, intentos, fallos, error FROM pedidos WHERE id = %s", (order_id,)
            ).fetchone()
        assert row is not None and row[:3] == ("pendiente", 1, 1), row
        assert row[3].startswith("TiempoAgotado"), row
        assert took < 10, f"the stop waited {took:.1f} s for a call past its 1 s limit"
        b = ServerProcess([*args, "--nodo", "B"], pg_url, tmp_path, env)  # type: ignore[arg-type]
        nodes.append(b)
        b.wait_ready()
        with Client("127.0.0.1", b.port, timeout=30) as client:
            done = client.wait(order_id, timeout=20)
        assert (done.estado, done.intentos, done.fallos, done.nodo) == ("listo", 1, 1, "B"), done
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.stop()
            node.kill()


def test_a_database_from_before_tasks_gains_their_columns(pg_url):
    # The table as the PostgreSQL backend made it before section 11.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE pedidos (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
            " cliente text NOT NULL, productos jsonb NOT NULL, direccion text NOT NULL,"
            " referencia text UNIQUE, estado text NOT NULL, fecha_recibido timestamptz NOT NULL,"
            " fecha_inicio timestamptz, fecha_fin timestamptz, worker integer,"
            " intentos integer NOT NULL DEFAULT 0, nodo text, propietario text,"
            " intento bigint NOT NULL DEFAULT 0)"
        )
        conn.execute(
            "INSERT INTO pedidos (cliente, productos, direccion, estado, fecha_recibido, intentos)"
            " VALUES ('Ana', '[\"pan\"]', 'Calle 1', 'fallido', now(), 3)"
        )

    async def main() -> tuple[dict, tuple]:
        storage = PostgresStorage(pg_url, "a")
        await storage.start(recover=False)
        try:
            return await storage.get(1), await storage.retry(1)
        finally:
            await storage.stop()

    order, (retried, ok) = asyncio.run(asyncio.wait_for(main(), 30))
    assert order["cliente"] == "Ana" and order["estado"] == "fallido"
    assert [order[k] for k in ("fallos", "resultado", "error", "reintentar_despues")] == [0, None, None, None]
    assert ok and retried["estado"] == "pendiente" and retried["intentos"] == 0
