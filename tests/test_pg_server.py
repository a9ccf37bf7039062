"""The server's command line on PostgreSQL: choosing it, naming nodes, the
driver missing, the password kept out of every log, polling without NOTIFY."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from conftest import SERVIDOR, LineClient, ServerProcess, running_server, wait_for
from pgcluster import with_options
from stallproxy import StallProxy

from pedidos.server.cli import build_parser
from pedidos.storage.postgres import agreement


def db_rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.replace("@", f":{password}@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def test_pedidos_db_is_the_default_for_db_and_the_flag_wins(monkeypatch):
    monkeypatch.setenv("PEDIDOS_DB", "postgresql://u@h/db")
    assert build_parser().parse_args([]).db == "postgresql://u@h/db"
    assert build_parser().parse_args(["--db", "x.db"]).db == "x.db"
    monkeypatch.delenv("PEDIDOS_DB")
    assert build_parser().parse_args([]).db == "pedidos.db"


def test_without_the_driver_a_postgresql_url_is_one_line_and_exit_2(tmp_path):
    fake = tmp_path / "site" / "psycopg"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no psycopg here')\n")
    done = subprocess.run(
        [sys.executable, str(SERVIDOR), "--db", "postgresql://u:s3cret@127.0.0.1/x", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")},
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "pip install 'pedidos[postgres]'" in lines[0]
        and "pip install -e '.[postgres]' in the pedidos folder" in lines[0]
    ), done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_a_second_live_node_with_a_taken_name_refuses_to_start(pg_url, tmp_path):
    args = ("--work-time", "0", "--nodo", "tienda-1")
    with running_server(tmp_path, *args, db=pg_url):  # type: ignore[arg-type]
        second = ServerProcess(["--port", "0", *args], pg_url, tmp_path)  # type: ignore[arg-type]
        try:
            assert second.proc.wait(30) == 1
        finally:
            second.kill()
        second._reader.join(5)
    errors = [line for line in second.lines if " ERROR " in line]
    assert len(errors) == 1 and "tienda-1" in errors[0] and "taken" in errors[0], second.log


def _refused(pg_url, tmp_path, *args: str, env: dict[str, str] | None = None) -> str:
    """The one ERROR line of a node that must refuse to start (exit 1)."""
    node = ServerProcess(["--port", "0", *args], pg_url, tmp_path, env)  # type: ignore[arg-type]
    try:
        assert node.proc.wait(30) == 1, node.log
    finally:
        node.kill()
    node._reader.join(5)
    errors = [line for line in node.lines if " ERROR " in line]
    assert len(errors) == 1, node.log
    return errors[0]


def test_a_node_whose_processing_differs_from_a_live_nodes_refuses_to_start(pg_url, tmp_path):
    # Any node's workers take any pending order: a node without the others'
    # --tarea would mark `listo` orders the task never ran.
    env = {"PYTHONPATH": str(Path(__file__).parent), "PEDIDOS_PRUEBA_DIR": str(tmp_path)}
    task = ("--tarea", "tareas_prueba:devuelve", "--reintentos", "2")
    with running_server(tmp_path, "--nodo", "A", *task, db=pg_url, env=env):  # type: ignore[arg-type]
        error = _refused(pg_url, tmp_path, "--nodo", "B", "--work-time", "0")
        assert "'A'" in error
        assert "runs with --tarea tareas_prueba:devuelve; this one with no --tarea" in error
        assert "last seen" in error and "stop every node to change them" in error
        other = ("--limite-tarea", "5", "--sin-notify")
        error = _refused(pg_url, tmp_path, "--nodo", "B", *task, *other, env=env)
        said = "runs with no --limite-tarea, no --sin-notify; this one with --limite-tarea 5, --sin-notify"
        assert said in error
        assert db_rows(pg_url, "SELECT nodo FROM nodos ORDER BY nodo") == [("A",)]  # B left no row
        with running_server(tmp_path, "--nodo", "B", *task, db=pg_url, env=env) as b:  # the same: it joins
            assert "ready" in b.log and " WARNING " not in b.log, b.log
        # Options that change only how soon an order is seen: it joins, and says so.
        with running_server(tmp_path, "--nodo", "C", *task, "--sin-notify", db=pg_url, env=env) as c:
            warned = [line for line in c.lines if " WARNING " in line]
            assert len(warned) == 1 and "'A'" in warned[0], c.log
            said = "runs with no --sin-notify; this one with --sin-notify: a node with --sin-notify"
            assert said in warned[0]
            assert "--work-time" not in warned[0]  # only what applies
    # A node of a version that published no options is not compared.
    with running_server(tmp_path, "--nodo", "A", "--work-time", "0", db=pg_url) as a:  # type: ignore[arg-type]
        db_rows(pg_url, "UPDATE nodos SET ajustes = NULL WHERE nodo = 'A' RETURNING 1")
        with running_server(tmp_path, "--nodo", "B", *task, db=pg_url, env=env):  # type: ignore[arg-type]
            assert "ready" in a.log


def test_options_another_program_wrote_into_nodos_are_not_compared():
    mine = {"--tarea": None, "--work-time": "0", "--sin-notify": None}
    others = [("X", "h", 1, "not json", 0.5), ("Y", "h", 2, "[1, 2]", 0.5)]
    others.append(("Z", "h", 3, json.dumps(mine), 0.5))
    assert agreement.compare(mine, others) == []
    theirs = {"--tarea": "m:f", "--reintentos": 3, "--limite-tarea": None, "--sin-notify": None}
    with pytest.raises(agreement.SettingsDiffer, match=r"runs with --tarea m:f; this one with no --tarea\."):
        agreement.compare(mine, [("W", "h", 4, json.dumps(theirs), 0.5)])


def test_the_password_is_never_logged(pg_url, tmp_path, dead_port):
    url = with_password(pg_url, "s3cret-pw")
    with running_server(tmp_path, "--work-time", "0", db=url) as srv:  # type: ignore[arg-type]
        assert "ready" in srv.log
    unreachable = ServerProcess(
        ["--port", "0"],
        with_password(f"postgresql://postgres@127.0.0.1:{dead_port}/x", "s3cret-pw"),
        tmp_path,
    )  # type: ignore[arg-type]
    try:
        assert unreachable.proc.wait(30) == 1
    finally:
        unreachable.kill()
    unreachable._reader.join(5)
    assert "cannot use the database" in unreachable.log
    assert "s3cret" not in srv.log + unreachable.log


def test_without_notify_esperar_across_nodes_answers_by_polling(pg_url, tmp_path):
    args = ("--work-time", "0.1", "--workers", "1", "--sin-notify", "--lease", "2")
    a = ServerProcess(["--port", "0", "--nodo", "A", *args], pg_url, tmp_path)  # type: ignore[arg-type]
    b = ServerProcess(["--port", "0", "--nodo", "B", *args], pg_url, tmp_path)  # type: ignore[arg-type]
    try:
        a.wait_ready()
        b.wait_ready()
        with LineClient("127.0.0.1", a.port) as on_a, LineClient("127.0.0.1", b.port) as on_b:
            placed = on_a.ask({"cliente": "Ana", "productos": ["pan"], "direccion": "x"})
            reply = on_b.ask({"accion": "esperar", "id": placed["id"], "timeout": 10})
            got = time.time()
        assert reply["ok"] and reply["pedido"]["estado"] == "listo", reply
        assert got - datetime.fromisoformat(reply["pedido"]["fecha_fin"]).timestamp() < 1.0
        wait_for(lambda: "LISTEN" not in a.log + b.log, timeout=1)
    finally:
        for srv in (a, b):
            if srv.proc.poll() is None:
                srv.stop()
            srv.kill()


def test_an_order_whose_connection_breaks_mid_insert_is_told_it_may_be_stored(pg_url, tmp_path):
    import psycopg

    order = {
        "cliente": "Ana",
        "productos": ["pan"],
        "direccion": "Calle 1",
        "referencia": f"corte-{time.time_ns()}",
    }
    waiting = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE '%INSERT%'"
    )
    with (
        running_server(tmp_path, "--work-time", "0", db=pg_url) as srv,
        LineClient("127.0.0.1", srv.port) as c,
    ):
        with psycopg.connect(pg_url, autocommit=True) as admin, psycopg.connect(pg_url) as blocker:
            blocker.execute("LOCK TABLE pedidos IN EXCLUSIVE MODE")  # the node's INSERT waits for it
            c.send(order)
            pid = wait_for(lambda: admin.execute(waiting).fetchall())[0][0]  # type: ignore[index]
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # as a connection lost mid-commit
            reply = c.read()
            blocker.rollback()
        assert reply["ok"] is False and reply["error"] == "servidor_ocupado", reply
        # Not just "try later": the order may be stored, and a referencia makes a retry safe.
        assert "no se sabe si la petición tuvo efecto" in reply["mensaje"], reply
        assert "referencia" in reply["mensaje"], reply

        def stored() -> dict | None:
            again = c.ask(order)
            return again if again["ok"] else None  # refused while the node reconnects

        assert wait_for(stored, timeout=15)["estado"] == "pendiente"  # type: ignore[index]


def test_a_statement_past_its_time_is_an_error_reply_and_the_node_keeps_taking_orders(pg_url, tmp_path):
    import psycopg

    # The limit is the URL's here, to be quick; a node sets 9 s when the URL sets none.
    url = with_options(pg_url, "-c statement_timeout=1000")
    order = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}
    with (
        running_server(tmp_path, "--work-time", "0", db=url) as srv,  # type: ignore[arg-type]
        LineClient("127.0.0.1", srv.port) as c,
    ):
        placed = c.ask(order)
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("LOCK TABLE pedidos IN ACCESS EXCLUSIVE MODE")  # reads wait too
            asked = c.ask({"accion": "consultar", "id": placed["id"]})
            refused = c.ask(order)
            blocker.rollback()
        # Told what happened: not "the database does not answer", since it did.
        assert asked["ok"] is False and asked["error"] == "error_interno", asked
        assert "ocupada" in asked["mensaje"] and "no tuvo efecto" in asked["mensaje"], asked
        assert refused["ok"] is False and refused["error"] == "servidor_ocupado", refused
        assert "ocupada" in refused["mensaje"] and "no se guardó" in refused["mensaje"], refused
        assert c.ask(order)["ok"]  # not refused: the connection was never given up
        wait_for(lambda: "PostgreSQL cancelled a statement: canceling statement due to" in srv.log)
    assert "unreachable" not in srv.log, srv.log


def test_a_database_that_refuses_writes_is_not_said_not_to_answer(pg_url, tmp_path):
    # Made read-only (a standby promoted back, `default_transaction_read_only`),
    # PostgreSQL answers every INSERT with an error: the client was told "the
    # database does not answer now", which sends an operator looking for a
    # network fault.
    import psycopg

    order = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}
    dbname = urlsplit(pg_url).path.lstrip("/")

    def sessions_read_only(on: bool) -> None:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SET default_transaction_read_only = off")  # this session may write
            admin.execute(
                f"ALTER DATABASE {dbname} SET default_transaction_read_only = {'on' if on else 'off'}"
            )
            # Taken by new sessions only: end the node's, which it opens again.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    with (
        running_server(tmp_path, "--work-time", "0", db=pg_url) as srv,  # type: ignore[arg-type]
        LineClient("127.0.0.1", srv.port) as c,
    ):
        assert c.ask(order)["ok"]
        sessions_read_only(True)

        def refusal() -> dict | None:
            reply = c.ask(order)
            return reply if "escrituras" in reply.get("mensaje", "") else None

        refused = wait_for(refusal, timeout=15)
        assert refused["ok"] is False and refused["error"] == "servidor_ocupado", refused
        assert "no se guardó" in refused["mensaje"] and "no responde" not in refused["mensaje"], refused
        wait_for(lambda: "read-only" in srv.log)
        sessions_read_only(False)
        assert wait_for(lambda: c.ask(order)["ok"], timeout=15)


def test_a_command_waiting_on_a_lock_holds_up_no_other_command(pg_url, tmp_path):
    # Every command of a node went through one connection: a `cancelar`
    # waiting on a row another program had locked (or a listing over
    # millions of rows) held up every other command, and the node's own reads
    # of pending orders, until it was answered.
    import psycopg

    order = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}
    with (
        running_server(tmp_path, "--work-time", "0", "--workers", "1", db=pg_url) as srv,  # type: ignore[arg-type]
        LineClient("127.0.0.1", srv.port) as waiting,
        LineClient("127.0.0.1", srv.port) as other,
        contextlib.ExitStack() as stack,
    ):
        quick = [stack.enter_context(LineClient("127.0.0.1", srv.port)) for _ in range(6)]
        done = other.ask(order)
        with psycopg.connect(pg_url, autocommit=True) as admin, psycopg.connect(pg_url) as blocker:
            # Pending, its retry not due: no worker claims it.
            columns = "cliente, productos, direccion, estado, fecha_recibido, reintentar_despues"
            values = "'Bea', '[\"pan\"]', 'Calle 2', 'pendiente', now(), now() + interval '1 hour'"
            insert = f"INSERT INTO pedidos ({columns}) VALUES ({values}) RETURNING id"
            (locked,) = blocker.execute(insert).fetchone()  # type: ignore[misc]
            blocker.commit()
            blocker.execute("SELECT 1 FROM pedidos WHERE id = %s FOR UPDATE", (locked,))
            waiting.send({"accion": "cancelar", "id": locked})
            wait_for(
                lambda: admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE%'"
                ).fetchall()
            )
            asked = time.monotonic()
            for c in quick:  # at once, each on a connection of its own
                c.send({"accion": "consultar", "id": done["id"]})
            replies = [c.read() for c in quick]
            took = time.monotonic() - asked
            blocker.rollback()
        assert all(r["ok"] for r in replies) and took < 1.0, (replies, took)
        assert waiting.read()["pedido"]["estado"] == "cancelado"


def _behind_a_proxy(pg_url: str) -> tuple[StallProxy, str]:
    """A proxy of ours between the node and PostgreSQL, and the URL through it."""
    parts = urlsplit(pg_url)
    proxy = StallProxy(parts.port)  # type: ignore[arg-type]
    return proxy, urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))


def test_a_node_whose_database_connection_stalls_answers_its_clients(pg_url, tmp_path):
    # The path to PostgreSQL goes silent (no RST): the node's statements had no
    # limit but intake's, so commands and lease renewals waited for ever and a
    # client's `estadisticas` got no answer at all.
    from pedidos.storage.postgres.settings import COMMAND_TIMEOUT_S

    proxy, via_proxy = _behind_a_proxy(pg_url)
    order = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}
    try:
        with (
            running_server(tmp_path, "--work-time", "0", db=via_proxy) as srv,
            LineClient("127.0.0.1", srv.port, timeout=COMMAND_TIMEOUT_S + 15) as c,
        ):
            placed = c.ask(order)
            assert placed["ok"], placed
            proxy.stall()
            try:
                asked = time.monotonic()
                reply = c.ask({"accion": "consultar", "id": placed["id"]})
                assert reply["ok"] is False and reply["error"] == "error_interno", reply
                assert time.monotonic() - asked < COMMAND_TIMEOUT_S + 5
                assert c.ask(order)["error"] == "servidor_ocupado"
                wait_for(lambda: "no answer from PostgreSQL within" in srv.log, timeout=5)
            finally:
                proxy.resume()  # so that the server can stop, whatever happened
            back = wait_for(lambda: c.ask({"accion": "consultar", "id": placed["id"]})["ok"], timeout=20)
            assert back
    finally:
        proxy.stop()


def test_a_worker_cut_from_the_database_logs_its_retries_once(pg_url, tmp_path):
    # A worker that could not record its outcome logged it again every second
    # while PostgreSQL was away: a line a second per worker, for the whole outage.
    proxy, via_proxy = _behind_a_proxy(pg_url)
    order = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}
    try:
        with (
            running_server(tmp_path, "--work-time", "1", "--workers", "1", db=via_proxy) as srv,
            LineClient("127.0.0.1", srv.port) as c,
        ):
            placed = c.ask(order)
            wait_for(
                lambda: c.ask({"accion": "consultar", "id": placed["id"]})["pedido"]["estado"] == "en proceso"
            )
            proxy.cut()
            try:
                wait_for(lambda: "could not record an outcome" in srv.log, timeout=10)
                retried_from = proxy.refused
                # The worker tries again once a second: several tries.
                wait_for(lambda: proxy.refused >= retried_from + 12, timeout=20)
            finally:
                proxy.resume()

            def waited() -> dict | None:
                reply = c.ask({"accion": "esperar", "id": placed["id"], "timeout": 20})
                return reply if reply["ok"] else None  # error_interno until the node reconnects

            done = wait_for(waited, timeout=30)
            log = srv.log
        assert done["ok"] and done["pedido"]["estado"] == "listo", done
        assert log.count("could not record an outcome") == 1, log
    finally:
        proxy.stop()


def test_a_worker_whose_idle_connection_was_dropped_claims_on_a_new_one(pg_url, tmp_path):
    # An administrator ends every session (or PostgreSQL restarts) while the
    # workers wait for orders: their next claim found the dropped connection,
    # refused the chunk and logged an ERROR about a database that was back.
    import psycopg

    order = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}
    others = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    with (
        running_server(tmp_path, "--work-time", "0", "--workers", "1", db=pg_url) as srv,
        LineClient("127.0.0.1", srv.port) as c,
    ):
        first = c.ask(order)
        assert c.ask({"accion": "esperar", "id": first["id"], "timeout": 10})["pedido"]["estado"] == "listo"
        with psycopg.connect(pg_url, autocommit=True) as admin:
            assert admin.execute(others).fetchall()  # the node's connections and the worker's

        def placed() -> dict | None:
            reply = c.ask(order)
            return reply if reply["ok"] else None  # refused while the node reconnects

        second = wait_for(placed, timeout=15)
        done = c.ask({"accion": "esperar", "id": second["id"], "timeout": 10})  # type: ignore[index]
        assert done["ok"] and done["pedido"]["estado"] == "listo", done
        assert "could not claim orders" not in srv.log, srv.log


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    netloc = user + "@" + parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.mark.parametrize("tables", ["missing", "not_its_own"])
def test_a_role_without_rights_is_one_error_line_naming_the_cause_and_the_grant(pg_url, tmp_path, tables):
    # A role that may not create in `public` (the default from PostgreSQL 15 on
    # for a role that does not own the database), or that was given no rights
    # on tables another role made: the start logged first that the node could
    # not give up a name it never took, then the cause, as two ERROR lines.
    import psycopg

    role = f"pedidos_test_{uuid.uuid4().hex[:12]}"  # roles are the whole server's: one of its own
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # as PostgreSQL 15 has it
    try:
        if tables == "not_its_own":  # made by the superuser's node, as by an earlier start
            with running_server(tmp_path, "--work-time", "0", db=pg_url):  # type: ignore[arg-type]
                pass
        srv = ServerProcess(["--port", "0", "--work-time", "0"], with_user(pg_url, role), tmp_path)  # type: ignore[arg-type]
        try:
            assert srv.proc.wait(30) == 1, srv.log
        finally:
            srv.kill()
        srv._reader.join(5)
        grant = re.search(r'GRANT .*? TO "[^"]+"', srv.log)
        assert grant, srv.log
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(grant.group(0))  # the advice is enough
        with running_server(tmp_path, "--work-time", "0", db=with_user(pg_url, role)):  # type: ignore[arg-type]
            pass
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')  # the default privileges it holds, if any
            admin.execute(f'DROP ROLE "{role}"')
    errors = [line for line in srv.lines if " ERROR " in line]
    assert len(errors) == 1, srv.log
    assert "permission denied for" in errors[0] and "GRANT" in errors[0] and role in errors[0], errors[0]
    assert ("schema public" if tables == "missing" else "table") in errors[0], errors[0]
    assert "give up" not in srv.log and "Traceback" not in srv.log, srv.log
