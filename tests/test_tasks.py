"""`--tarea`: the user's function in real worker processes (contract section 11).

One server runs `tareas_prueba.segun_cliente`, which behaves as the order's
`cliente` says (returns, fails twice, always fails, hangs once, kills its
process, returns too much or not JSON, fails until fixed by hand); a second
runs an `async def` task. Short backoff (--reintento-base 0.2: waits of 0.1 to
0.2 s, then 0.2 to 0.4 s) and a short --limite-tarea keep it quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CLIENTE,
    SERVIDOR,
    ServerProcess,
    alive,
    clean_environ,
    running_server,
    stored_orders,
    wait_for,
)

from pedidos.client import AsyncClient, Client, Refused
from pedidos.domain import CRASH_ERROR, MAX_ATTEMPTS, MAX_ERROR_CHARS, RawJSON
from pedidos.processing.task import TaskRunner

TESTS = Path(__file__).resolve().parent
RETRIES = 2
LIMIT_S = 2.0
BASE_S = 0.2


def task_env(state: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(TESTS), "PEDIDOS_PRUEBA_DIR": str(state)}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tarea")


@pytest.fixture(scope="module")
def srv(state: Path) -> Iterator[ServerProcess]:
    args = ["--tarea", "tareas_prueba:segun_cliente", "--reintentos", str(RETRIES)]
    args += ["--limite-tarea", str(LIMIT_S), "--reintento-base", str(BASE_S), "--workers", "2"]
    with running_server(state, *args, env=task_env(state)) as server:
        yield server


@pytest.fixture
def client(srv: ServerProcess) -> Iterator[Client]:
    with Client("127.0.0.1", srv.port, timeout=30) as c:
        yield c


def submit(client: Client, cliente: str, referencia: str | None = None) -> int:
    return client.submit(cliente, ["pan", "agua"], "Calle 1", referencia).id


def final(client: Client, order_id: int, timeout: float = 20) -> dict[str, Any]:
    reply = client.call({"accion": "esperar", "id": order_id, "timeout": timeout})
    return reply["pedido"]


def calls(state: Path, order_id: int) -> list[dict[str, Any]]:
    path = state / f"{order_id}.calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def moment(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_returned_value_is_stored_and_shown_everywhere(srv, client, state):
    order_id = submit(client, "devuelve", "ref-devuelve")
    waited = final(client, order_id)
    expected = {"albaran": f"A-{order_id}", "productos": 2, "nota": "entregado ñ"}
    assert waited["estado"] == "listo" and waited["resultado"] == expected
    assert waited["error"] is None and waited["reintentar_despues"] is None
    assert waited["intentos"] == 0 and waited["fallos"] == 0
    by_key = client.call({"accion": "consultar", "referencia": "ref-devuelve"})["pedido"]
    assert by_key == waited == client.call({"accion": "consultar", "id": order_id})["pedido"]
    assert client.get(referencia="ref-devuelve").resultado == expected
    shown = subprocess.run(
        [sys.executable, str(CLIENTE), "--port", str(srv.port), "--consultar-referencia", "ref-devuelve"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"Pedido {order_id}" in shown.stdout
    assert f'resultado:  {{"albaran": "A-{order_id}", "productos": 2, "nota": "entregado ñ"}}' in shown.stdout


def test_a_resultado_another_program_wrote_is_shown_as_json(tmp_path):
    # The server passes a stored `resultado` on unparsed: what another program
    # wrote there (JSON over many lines, text that is not JSON) still makes a
    # reply of one line that any client can read.
    with running_server(tmp_path, "--work-time", "0") as server, Client("127.0.0.1", server.port) as c:
        ids = [submit(c, "Ana") for _ in range(2)]
        conn = sqlite3.connect(server.db)
        with conn:
            conn.execute("UPDATE pedidos SET resultado = ? WHERE id = ?", ('{\n "a": [1,\n 2]\n}', ids[0]))
            conn.execute("UPDATE pedidos SET resultado = ? WHERE id = ?", ("no es json", ids[1]))
        conn.close()
        assert c.call({"accion": "consultar", "id": ids[0]})["pedido"]["resultado"] == {"a": [1, 2]}
        assert c.get(ids[1]).resultado == "no es json"
        listed = c.call({"accion": "listar"})["pedidos"]
        assert [o["resultado"] for o in listed] == [{"a": [1, 2]}, "no es json"]
        assert c.submit("Ana", ["pan"], "Calle 1").id == ids[1] + 1  # the connection reads on


def test_consultar_an_unknown_referencia_is_no_encontrado(client):
    with pytest.raises(Refused) as refused:
        client.get(referencia="no-existe")
    assert refused.value.code == "no_encontrado" and "no-existe" in refused.value.mensaje


def test_raises_twice_then_succeeds_after_waiting_each_backoff(client, state):
    order_id = submit(client, "falla-dos-veces")
    seen_waiting: list[dict[str, Any]] = []

    def waiting_retry() -> bool:
        order = client.call({"accion": "consultar", "id": order_id})["pedido"]
        if order["reintentar_despues"] is not None:
            seen_waiting.append(order)
        return order["estado"] == "listo"

    wait_for(waiting_retry, timeout=20, interval=0.01)
    done = final(client, order_id)
    assert done["resultado"] == {"llamadas": 3}
    assert done["intentos"] == 2 and done["fallos"] == 2
    assert done["error"] == "ValueError: fallo 2"  # the last failure stays, documented
    assert done["reintentar_despues"] is None
    tries = calls(state, order_id)
    assert [(c["intentos"], c["fallos"], c["error"]) for c in tries] == [
        (0, 0, None),
        (1, 1, "ValueError: fallo 1"),
        (2, 2, "ValueError: fallo 2"),
    ]
    # Each wait is at least half its exponential step (the rest is jitter).
    assert tries[1]["t"] - tries[0]["t"] >= BASE_S / 2
    assert tries[2]["t"] - tries[1]["t"] >= BASE_S
    # While it waited, the order said until when, and no call came before that.
    assert seen_waiting, "never saw the order waiting for its retry"
    for order in seen_waiting:
        assert order["estado"] == "pendiente" and order["error"].startswith("ValueError")
        retry_at = moment(order["reintentar_despues"])
        later_calls = [c["t"] for c in tries if c["fallos"] == order["fallos"]]
        assert later_calls and later_calls[0] >= retry_at - 0.005


def test_always_raising_ends_fallido_after_the_retries_with_its_error(srv, client, state):
    order_id = submit(client, "siempre-falla")
    done = final(client, order_id)
    assert done["estado"] == "fallido"
    assert done["error"] == "RuntimeError: sin stock de pan"
    assert done["intentos"] == RETRIES + 1 == done["fallos"]
    assert done["resultado"] is None and done["reintentar_despues"] is None
    assert len(calls(state, order_id)) == RETRIES + 1
    assert "Traceback" in srv.log and "RuntimeError: sin stock de pan" in srv.log  # the log has it all
    shown = subprocess.run(
        [sys.executable, str(CLIENTE), "--port", str(srv.port), "--consultar", str(order_id)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "error:      RuntimeError: sin stock de pan" in shown.stdout
    assert "intentos:   3 (3 fallos de la tarea)" in shown.stdout


def test_a_failure_with_a_huge_message_is_cut_in_the_order_and_in_the_log(srv, client):
    order_id = submit(client, "falla-largo")
    done = final(client, order_id)
    assert done["estado"] == "fallido" and done["error"].startswith("ValueError: muy muy")
    assert len(done["error"]) == MAX_ERROR_CHARS
    said = f"order {order_id}: the task failed"
    wait_for(lambda: sum(said in line for line in srv.lines) == RETRIES + 1, timeout=5)
    cut = [line for line in srv.lines if line.startswith("ValueError: muy muy")]
    assert cut and all(line.endswith(" more characters)") and len(line) < 2100 for line in cut), cut


def test_a_failure_repeated_logs_a_line_each_time_and_its_traceback_once(tmp_path):
    """The service a task calls is down: every order fails alike. Each failure
    gets its line (order and error); the traceback comes once, not per attempt."""
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "1", "--reintentos", str(RETRIES)]
    args += ["--reintento-base", str(BASE_S)]
    with (
        running_server(tmp_path, *args, env=task_env(tmp_path)) as server,
        Client("127.0.0.1", server.port, timeout=30) as c,
    ):
        orders = [c.submit("siempre-falla", ["pan"], "Calle 1").id for _ in range(3)]
        for order_id in orders:
            assert c.wait(order_id, timeout=20).estado == "fallido"
        for order_id in orders:
            said = f"order {order_id}: the task failed"
            # The worker's last line reaches the server's log pipe around when the order
            # turns fallido, and this test reads that pipe from a thread of its own.
            wait_for(lambda s=said: sum(s in line for line in server.lines) >= RETRIES + 1, timeout=5)
            lines = [line for line in server.lines if said in line]
            assert len(lines) == RETRIES + 1, lines
            assert all("RuntimeError: sin stock de pan" in line for line in lines)
        assert server.log.count("Traceback") == 1, server.log


def test_a_hanging_call_is_stopped_at_the_limit_and_its_worker_replaced(srv, client, state):
    order_id = submit(client, "cuelga-una-vez")
    done = final(client, order_id, timeout=30)
    assert done["estado"] == "listo"
    assert done["intentos"] == 1 and done["fallos"] == 1
    assert done["error"].startswith("TiempoAgotado:") and f"{LIMIT_S:g} s" in done["error"]
    first, second = calls(state, order_id)
    # Timed by the calls themselves: the second came only once the first was stopped.
    assert second["t"] - first["t"] >= LIMIT_S - 0.2
    assert first["pid"] != second["pid"] == done["resultado"]["pid"]
    assert not alive(first["pid"])
    assert "ran over the task time limit" in srv.log
    # The worker's end is told as what it was, not as a crash ("died").
    wait_for(lambda: "stopped over the task time limit (exit code -9); 1 failed attempt recorded" in srv.log)
    assert "died (exit code -9)" not in srv.log


def test_a_call_stopped_at_the_limit_takes_the_programs_it_started_with_it(client, state):
    order_id = submit(client, "hijo-cuelga")
    done = final(client, order_id, timeout=30)
    assert done["estado"] == "listo" and done["error"].startswith("TiempoAgotado:")
    program = int((state / f"{order_id}.hijo").read_text())
    try:
        wait_for(lambda: not alive(program), timeout=5)
    finally:  # a failure here must not leave the program running for an hour
        if alive(program):
            os.kill(program, signal.SIGKILL)


def test_a_task_that_kills_its_process_counts_crashes_until_fallido(srv, client, state):
    order_id = submit(client, "se-mata")
    done = final(client, order_id, timeout=40)
    assert done["estado"] == "fallido"
    assert done["intentos"] == MAX_ATTEMPTS and done["fallos"] == 0
    assert done["error"] == CRASH_ERROR  # says why it was given up on, though no exception was caught
    pids = {c["pid"] for c in calls(state, order_id)}
    assert len(pids) == MAX_ATTEMPTS
    assert not any(alive(pid) for pid in pids)
    # Its workers were replaced: the server still works.
    assert final(client, submit(client, "devuelve"))["estado"] == "listo"


def test_a_worker_killed_holding_its_loops_locks_holds_up_no_other_worker_nor_the_stop(tmp_path):
    """A worker killed between two orders, inside its check of the stop flag
    (a multiprocessing.Event, whose lock every worker and the server shared)
    left that lock held for good: every other worker and each replacement
    blocked in the same check, nothing more was processed, and SIGTERM, even
    twice, never returned (an audit killing workers under load saw it)."""
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "2", "--shutdown-timeout", "5"]
    with running_server(tmp_path, *args, env=task_env(tmp_path)) as server:
        with Client("127.0.0.1", server.port, timeout=30) as c:
            dying = c.submit("muere-con-candados", ["pan"], "Calle 1").id
            wait_for(lambda: "worker" in server.log and "died (exit code -9)" in server.log, timeout=10)
            others = [c.submit("devuelve", ["pan"], "Calle 1").id for _ in range(4)]
            for order_id in others:
                assert c.wait(order_id, timeout=10).estado == "listo", order_id
            # Each attempt dies the same way: three crashes, then fallido.
            assert c.wait(dying, timeout=20).estado == "fallido"
        assert server.stop(signal.SIGTERM, timeout=15) == 0


def test_a_worker_dead_holding_the_write_lock_during_a_stop_holds_up_no_other(tmp_path):
    """A worker that died holding the SQLite write lock while the stop waited
    for the others was seen by no one (the pool's monitor had stopped): the
    other worker, done with its order, waited for the lock until the stop
    killed it at --shutdown-timeout, and its order was done again at the next
    start. The stop now hands back the dead worker's orders, which frees the lock."""
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "2", "--shutdown-timeout", "15"]
    with running_server(tmp_path, *args, env=task_env(tmp_path)) as server:
        with Client("127.0.0.1", server.port, timeout=30) as c:
            dying = c.submit("muere-en-la-parada", ["pan"], "Calle 1").id
            wait_for(lambda: (tmp_path / f"{dying}.calls").exists(), timeout=10)
            finishing = c.submit("termina-en-la-parada", ["pan"], "Calle 2").id
            wait_for(lambda: (tmp_path / f"{finishing}.calls").exists(), timeout=10)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "waiting for 2 workers" in server.log, timeout=10)
        (tmp_path / "parar").write_text("")
        assert server.proc.wait(12) == 0, server.log
        assert time.monotonic() - started < 12
        assert "worker 1 died while stopping (exit code -9)" in server.log or (
            "worker 2 died while stopping (exit code -9)" in server.log
        ), server.log
    rows = stored_orders(server.db)
    assert rows[finishing]["estado"] == "listo" and rows[finishing]["intentos"] == 0, rows[finishing]
    assert rows[dying]["estado"] == "pendiente" and rows[dying]["intentos"] == 1, rows[dying]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd here: the sentinel alone (pool.py)")
def test_a_worker_dead_behind_a_program_that_kept_its_pipes_is_seen_dead(srv, client, state):
    """A program the call left running (`os.system("... &")`, a fork) holds
    the worker's end of the pipe that told of its death: the server never saw
    it die, the order stayed `en proceso` and no worker replaced it (killed
    holding the SQLite lock, it stopped all intake). Deaths are seen by pidfd."""
    order_id = submit(client, "deja-programa-y-muere")
    try:
        done = final(client, order_id, timeout=30)
    finally:
        kept = state / f"{order_id}.hijo"
        if kept.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(kept.read_text()), signal.SIGKILL)
    assert done["estado"] == "listo" and done["intentos"] == 1 and done["fallos"] == 0, done
    assert kept.exists()  # the program was there, holding the pipe
    assert final(client, submit(client, "devuelve"))["estado"] == "listo"


@pytest.mark.parametrize(
    "cliente, error",
    [
        ("sale", "SystemExit: 3"),
        ("interrumpe", "KeyboardInterrupt"),
        ("cancelada", "CancelledError"),
        ("str-roto", "StrRoto: (el texto de la excepción no se pudo obtener)"),
    ],
)
def test_a_task_raising_beyond_exception_fails_its_attempt_and_keeps_its_worker(
    srv, client, state, cliente, error
):
    """sys.exit() in a script turned task, a stray KeyboardInterrupt or
    CancelledError, an exception whose str() raises: each is the task's own
    failure, retried and then `fallido` with its error, not a worker crash
    (which would end `fallido` saying only "Interrumpido")."""
    logged = len(srv.log)
    order_id = submit(client, cliente)
    done = final(client, order_id)
    assert done["estado"] == "fallido" and done["error"] == error
    assert done["fallos"] == done["intentos"] == RETRIES + 1
    made = calls(state, order_id)
    assert len(made) == RETRIES + 1
    assert all(alive(call["pid"]) for call in made)  # no worker died for it
    assert "died" not in srv.log[logged:]


@pytest.mark.parametrize(
    "cliente, words",
    [("grande", ["ResultError", "65538 bytes", "65536"]), ("no-json", ["ResultError", "JSON", "set"])],
)
def test_a_result_too_large_or_not_json_is_a_clear_failure(srv, client, cliente, words):
    done = final(client, submit(client, cliente))
    assert done["estado"] == "fallido" and done["fallos"] == RETRIES + 1
    assert done["resultado"] is None
    for word in words:
        assert word in done["error"]
    assert "Traceback" not in done["error"]


def test_reintentar_puts_a_fallido_order_back_and_refuses_any_other(srv, client, state):
    order_id = submit(client, "arreglable")
    failed = final(client, order_id)
    assert failed["estado"] == "fallido" and failed["error"].startswith("ConnectionError")
    (state / f"arreglado-{order_id}").touch()
    again = client.retry(order_id)  # the order as the command left it
    assert (again.estado, again.intentos, again.fallos) == ("pendiente", 0, 0)
    assert again.error.startswith("ConnectionError")  # kept until a new attempt
    done = final(client, order_id)
    assert done["estado"] == "listo" and done["resultado"] == "pagado"
    assert done["intentos"] == 0 and done["fallos"] == 0
    assert len(calls(state, order_id)) == RETRIES + 2
    for request, code in [
        ({"accion": "reintentar", "id": order_id}, "no_reintentable"),  # listo
        ({"accion": "reintentar", "id": 10**9}, "no_encontrado"),
    ]:
        reply = client.request(request)
        assert reply["ok"] is False and reply["error"] == code, reply
    refused = client.request({"accion": "reintentar", "id": order_id})
    assert refused["pedido"]["estado"] == "listo" and "fallido" in refused["mensaje"]


def test_reintentar_refuses_pending_and_cancelled_orders(client):
    order_id = submit(client, "cuelga-una-vez")  # held for LIMIT_S: en proceso or pendiente
    reply = client.request({"accion": "reintentar", "id": order_id})
    assert reply["error"] == "no_reintentable" and reply["pedido"]["estado"] in ("pendiente", "en proceso")
    final(client, order_id, timeout=30)


def test_cliente_reintentar_on_the_command_line(srv, client, state):
    def cliente(*argv: object) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(CLIENTE), "--port", str(srv.port), *map(str, argv)]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    order_id = submit(client, "arreglable")
    assert final(client, order_id)["estado"] == "fallido"
    followed = cliente("--consultar", order_id, "--esperar")
    # Not 0: `cliente.py ... --esperar && imprimir_albaran` must stop there.
    assert followed.returncode == 4, followed.stderr
    assert followed.stderr == f"cliente.py: el pedido {order_id} terminó 'fallido', no 'listo'\n"
    (state / f"arreglado-{order_id}").touch()
    run = cliente("--reintentar", order_id, "--esperar")
    assert run.returncode == 0, run.stderr
    assert f"Pedido {order_id}: listo" in run.stdout and 'Resultado: "pagado"' in run.stdout
    refused = cliente("--reintentar", order_id)
    assert refused.returncode == 1 and "no_reintentable" in refused.stderr


def test_a_task_is_handed_the_stored_resultado_as_a_value():
    seen = []
    runner = TaskRunner(lambda order: seen.append(dict(order)))
    runner({"id": 1, "resultado": RawJSON('{"albaran": "A-1"}')})
    runner({"id": 2, "resultado": None})
    assert seen == [{"id": 1, "resultado": {"albaran": "A-1"}}, {"id": 2, "resultado": None}]


def test_an_async_task_that_stops_the_loop_costs_no_other_order_an_attempt():
    # loop.stop() from inside a task left the stop waiting in the worker's
    # loop: the next order, which did nothing wrong, failed at once.
    async def task(order):
        if order["id"] == 1:
            asyncio.get_running_loop().stop()
            return "parado"
        await asyncio.sleep(0)
        return order["id"]

    runner = TaskRunner(task)
    assert runner({"id": 1}) == "parado"
    assert [runner({"id": 2}), runner({"id": 3})] == [2, 3]


def test_an_async_task_runs_on_each_workers_own_loop(tmp_path):
    args = ["--tarea", "tareas_prueba:asincrona", "--workers", "1"]
    with (
        running_server(tmp_path, *args, env=task_env(tmp_path)) as server,
        Client("127.0.0.1", server.port, timeout=30) as c,
    ):
        ids = [c.submit("Ana", ["pan"], "Calle 1").id for _ in range(3)]
        results = [c.wait(i, timeout=20).resultado for i in ids]
    assert [r["id"] for r in results] == ids
    assert len({r["pid"] for r in results}) == 1 and len({r["bucle"] for r in results}) == 1


def start_with_task(tmp_path: Path, spec: str) -> subprocess.CompletedProcess[str]:
    """A start with `--tarea spec` in `tmp_path`, which is expected to refuse it."""
    return subprocess.run(
        [sys.executable, str(SERVIDOR), "--db", str(tmp_path / "p.db"), "--port", "0", "--tarea", spec],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=clean_environ(task_env(tmp_path)),
    )


def error_lines(run: subprocess.CompletedProcess[str]) -> list[str]:
    """What a start that failed said, but the notice that its task's import
    check is slow: on a loaded machine starting that check alone can pass the
    second after which the server says why it waits."""
    lines = (run.stdout + run.stderr).strip().splitlines()
    return [line for line in lines if "(--tarea) is taking a while" not in line]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("tareas_prueba:no_existe", ["tareas_prueba", "no_existe"]),
        ("modulo_que_no_existe:f", ["modulo_que_no_existe", "ModuleNotFoundError"]),
        ("tareas_prueba:NO_ES_FUNCION", ["NO_ES_FUNCION", "not a function but an int"]),
        ("sin_dos_puntos", ["MODULO:FUNCION"]),
        # A file's path where Python wants a module's name: said how to write it.
        ("tareas_prueba.py:procesa", ["name the module as Python imports it, --tarea tareas_prueba:procesa"]),
        ("ejemplos/albaran:escribir", ["--tarea ejemplos.albaran:escribir"]),
    ],
)
def test_a_task_that_cannot_be_imported_stops_the_start_with_one_line(tmp_path, spec, words):
    run = start_with_task(tmp_path, spec)
    assert run.returncode == 2
    lines = error_lines(run)
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "p.db").exists()  # stopped before anything started


def test_a_task_module_that_raises_at_import_is_named_with_its_line(tmp_path):
    # Only "RuntimeError: falta la configuración" was said: which file, which line?
    (tmp_path / "sin_config.py").write_text("import os\n\nraise RuntimeError('falta la configuración')\n")
    run = start_with_task(tmp_path, "sin_config:f")
    lines = error_lines(run)
    assert run.returncode == 2 and len(lines) == 1, lines
    assert "RuntimeError: falta la configuración (at " in lines[0] and "sin_config.py, line 3)" in lines[0]


@pytest.mark.parametrize(
    "source, words",
    [
        (None, ["ModuleNotFoundError: No module named 'sin_modulo'"]),
        ("def f(pedido):\n    return (\n", ["SyntaxError: '(' was never closed", "sin_modulo.py, line 2"]),
    ],
)
def test_a_module_not_found_or_not_parsed_is_not_placed_in_the_import_machinery(tmp_path, source, words):
    # Said "(at .../importlib/__init__.py, line 126)": Python's file, not the user's.
    if source is not None:
        (tmp_path / "sin_modulo.py").write_text(source)
    run = start_with_task(tmp_path, "sin_modulo:f")
    lines = error_lines(run)
    assert run.returncode == 2 and len(lines) == 1, lines
    assert all(word in lines[0] for word in words) and "importlib" not in lines[0], lines


@pytest.mark.parametrize(
    "source, words",
    [
        ("import os\nos._exit(0)\n", ["importing --tarea", "status 0"]),
        ("import ctypes\nctypes.string_at(0)\n", ["importing --tarea", "SIGSEGV"]),
    ],
)
def test_a_task_module_that_ends_its_process_at_import_stops_the_start_with_one_line(tmp_path, source, words):
    """Not a silent exit 0 (a supervisor's clean stop) or a bare segfault."""
    (tmp_path / "mata_al_importar.py").write_text(source)
    run = start_with_task(tmp_path, "mata_al_importar:f")
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = error_lines(run)
    assert len(lines) == 1, lines
    assert all(word in lines[0] for word in words), lines
    assert not (tmp_path / "p.db").exists()


def test_a_task_module_that_starts_a_thread_at_import_does_not_hold_up_the_start(tmp_path):
    # The import check's process waited at its exit for the module's thread,
    # for ever: the server never got to listen, and said nothing.
    (tmp_path / "con_hilo.py").write_text(
        "import threading\n"
        "threading.Thread(target=threading.Event().wait, daemon=False).start()\n\n"
        "def f(pedido):\n    return pedido['id']\n"
    )
    args = ("--tarea", "con_hilo:f", "--workers", "1", "--shutdown-timeout", "1")
    with (
        running_server(tmp_path, *args, env=task_env(tmp_path)) as server,
        Client("127.0.0.1", server.port, timeout=30) as client,
    ):
        order_id = submit(client, "Ana")
        done = final(client, order_id)
    assert done["estado"] == "listo" and done["resultado"] == order_id, done


def test_a_slow_import_at_start_is_said_in_the_log(tmp_path):
    (tmp_path / "lenta.py").write_text("import time\ntime.sleep(1.5)\n\ndef f(pedido):\n    return 1\n")
    with running_server(tmp_path, "--tarea", "lenta:f", "--workers", "1", env=task_env(tmp_path)) as server:
        first = server.lines[0]
    assert "importing the task lenta:f (--tarea) is taking a while" in first, server.log


@pytest.mark.parametrize(
    "when, how",
    [
        ("after the slow-import line", "ctrl-c"),
        ("within its first second", "ctrl-c"),
        # `kill PID` (a supervisor's stop): exit 143 without a word, the import's process left running
        ("after the slow-import line", "sigterm"),
    ],
)
def test_ctrl_c_during_a_slow_import_at_start_is_a_clean_stop(tmp_path, when, how):
    # Ctrl-C at the terminal (the whole process group) while the start waited for the
    # import: a traceback from the server and another from the import's process, exit -2;
    # within its first second: exit 0, but only once the import had ended, and a traceback
    (tmp_path / "lenta.py").write_text("import time\ntime.sleep(60)\n\ndef f(pedido):\n    return 1\n")
    proc = subprocess.Popen(
        [sys.executable, str(SERVIDOR), "--db", str(tmp_path / "p.db"), "--port", "0", "--tarea", "lenta:f"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job
    )

    def group() -> list[int]:
        pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
        return [pid for pid in pids if alive(pid) and _group_of(pid) == proc.pid]

    try:
        assert proc.stdout is not None
        first = ""
        if when == "after the slow-import line":
            first = proc.stdout.readline()  # logged a second into the import
            assert "is taking a while" in first, first
        else:  # the import's process is there (the server waits for its answer)
            # Once it ignores Ctrl-C itself: before that, the signal ends it mid-import with
            # Python's own traceback, a gap no code can close (stopsignals.py).
            wait_for(lambda: [p for p in group() if _is_spawned_child(_cmdline(p)) and _ignores_sigint(p)])
        members = group()
        assert len(members) >= 2  # the server, the import's process (and multiprocessing's tracker)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        out = first + proc.stdout.read()
        assert proc.wait(30) == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in out and "nothing was started" in out, out
    wait_for(lambda: not any(alive(pid) for pid in members))


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _is_spawned_child(cmdline: str) -> bool:
    return "spawn_main" in cmdline and "resource_tracker" not in cmdline


def _ignores_sigint(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ignored = next((line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), "0")
    return bool(int(ignored, 16) & (1 << (signal.SIGINT - 1)))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize(
    "args, words",
    [
        (["--limite-tarea", "1"], "--limite-tarea only applies with --tarea"),
        (["--reintentos", "3"], "--reintentos only applies with --tarea"),
        (["--tarea", "tareas_prueba:devuelve", "--work-time", "1"], "with --tarea the task is the work"),
        (["--tarea", "tareas_prueba:devuelve", "--limite-tarea", "0"], "more than 0 seconds"),
        (["--tarea", "tareas_prueba:devuelve", "--reintentos", "-1"], "0 or more"),
    ],
)
def test_task_flags_are_checked(tmp_path, args, words):
    run = subprocess.run(
        [sys.executable, str(SERVIDOR), "--db", str(tmp_path / "p.db"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_environ(task_env(tmp_path)),
    )
    assert run.returncode == 2 and words in run.stderr, run.stderr
    assert not (tmp_path / "p.db").exists()


def test_a_stop_while_a_task_hangs_hands_the_order_back(tmp_path):
    """SIGTERM with a call in hand: after --shutdown-timeout the worker is
    killed and the order handed back uncounted (section 6), as with the sleep."""
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "1", "--shutdown-timeout", "0.5"]
    with running_server(tmp_path, *args, env=task_env(tmp_path)) as server:
        with Client("127.0.0.1", server.port, timeout=30) as c:
            order_id = c.submit("cuelga-una-vez", ["pan"], "Calle 1").id
        wait_for(lambda: calls(tmp_path, order_id), timeout=10)
        assert server.stop(signal.SIGTERM) == 0
    with (
        running_server(tmp_path, *args, env=task_env(tmp_path)) as server,
        Client("127.0.0.1", server.port, timeout=30) as c,
    ):
        done = c.wait(order_id, timeout=20)
    assert done.estado == "listo" and done.intentos == 0 and done.fallos == 0


def test_a_stop_still_stops_a_call_at_the_limit_and_counts_it(tmp_path):
    """SIGTERM while calls run: the stop lets them finish, but not run past
    --limite-tarea. One that hangs is stopped at the limit and counts a failure
    (section 11), as at any other time, instead of holding the stop up to
    --shutdown-timeout and going back uncounted (or ending `listo` late); one
    that ends in time, after the stop began, is `listo` and not said to be over."""
    # The limit leaves the call that ends in time room for the signal and the
    # log line to arrive on a busy machine; the stop's timeout is far past it.
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "2", "--limite-tarea", "5"]
    args += ["--shutdown-timeout", "20", "--reintento-base", str(BASE_S)]
    db = tmp_path / "p.db"
    with running_server(tmp_path, *args, db=db, env=task_env(tmp_path)) as server:
        with Client("127.0.0.1", server.port, timeout=30) as c:
            finishing = c.submit("termina-en-la-parada", ["pan"], "Calle 1").id
            wait_for(lambda: calls(tmp_path, finishing), timeout=10)
            hanging = c.submit("cuelga-una-vez", ["pan"], "Calle 1").id
            wait_for(lambda: calls(tmp_path, hanging), timeout=10)
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "waiting for 2 workers" in server.log, timeout=10)
        (tmp_path / "parar").write_text("")
        assert server.proc.wait(30) == 0, server.log
        took = time.monotonic() - began
        assert server.stop() == 0  # ended already: collects its log
    rows = stored_orders(db)
    assert rows[finishing]["estado"] == "listo" and rows[finishing]["intentos"] == 0, rows[finishing]
    stopped = rows[hanging]
    assert stopped["estado"] == "pendiente", stopped
    assert stopped["intentos"] == 1 and stopped["fallos"] == 1, stopped
    assert stopped["error"].startswith("TiempoAgotado"), stopped
    assert took < 12, f"the stop waited {took:.1f} s for a call past its 5 s limit"
    assert f"order {hanging} ran over the task time limit" in server.log, server.log
    assert f"order {finishing} ran over" not in server.log, server.log
    with (
        running_server(tmp_path, *args, db=db, env=task_env(tmp_path)) as server,
        Client("127.0.0.1", server.port, timeout=30) as c,
    ):
        done = c.wait(hanging, timeout=20)
    assert done.estado == "listo" and done.intentos == 1 and done.fallos == 1, done


def queued_bytes(pid: int) -> int:
    """Bytes waiting in the pipes that process `pid` reads (its task queue)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        with contextlib.suppress(OSError):
            flags = int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
            if os.readlink(path).startswith("pipe:") and flags & os.O_ACCMODE == os.O_RDONLY:
                reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    total += struct.unpack("i", fcntl.ioctl(reader, termios.FIONREAD, b"\0" * 4))[0]
                finally:
                    os.close(reader)
    return total


def test_an_order_queued_to_a_worker_is_not_begun_once_the_stop_began(tmp_path):
    """An order sent to a worker that reads it only after the stop began (here
    the worker is held with SIGSTOP meanwhile) is not in hand: it stays
    `pendiente`, uncalled. It was claimed and called, where the server no longer
    hears a claim: no --limite-tarea for that call, and a stop held up to its
    --shutdown-timeout, then the order handed back."""
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "1", "--limite-tarea", "2"]
    args += ["--shutdown-timeout", "20"]
    db = tmp_path / "p.db"
    with running_server(tmp_path, *args, db=db, env=task_env(tmp_path)) as server:
        worker = int(re.findall(r"worker 1 started \(pid (\d+)\)", server.log)[-1])
        with Client("127.0.0.1", server.port, timeout=30) as c:
            # Done by the worker: it has started, and waits for its next order.
            assert c.wait(c.submit("devuelve", ["pan"], "Calle 1").id, timeout=20).estado == "listo"
            os.kill(worker, signal.SIGSTOP)
        try:
            with Client("127.0.0.1", server.port, timeout=30) as c:
                order_id = c.submit("cuelga-una-vez", ["pan"], "Calle 1").id
            wait_for(lambda: queued_bytes(worker) > 0, timeout=10)  # in its queue
            began = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "waiting for 1 worker" in server.log, timeout=10)
        finally:
            os.kill(worker, signal.SIGCONT)
        assert server.proc.wait(30) == 0, server.log
        took = time.monotonic() - began
        assert server.stop() == 0  # ended already: collects its log
    assert not calls(tmp_path, order_id)
    stored = stored_orders(db)[order_id]
    assert stored["estado"] == "pendiente" and stored["intentos"] == 0, stored
    assert took < 10, f"the stop waited {took:.1f} s"


def test_a_call_claimed_as_the_stop_began_is_still_stopped_at_the_limit(tmp_path):
    """A worker that read its order before the stop, but whose claim commits
    after it began (here held up by a lock on the database): its call is in
    hand, and held to --limite-tarea as well. Its claim's report came when the
    server no longer read them: no deadline, the stop held up to its
    --shutdown-timeout and the order handed back uncounted."""
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "1", "--limite-tarea", "2"]
    args += ["--shutdown-timeout", "20", "--reintento-base", str(BASE_S)]
    db = tmp_path / "p.db"
    # The worker's claim waits for the lock below as long as the test needs.
    env = {**task_env(tmp_path), "PEDIDOS_TEST_BUSY_TIMEOUT_MS": "60000"}
    with running_server(tmp_path, *args, db=db, env=env) as server:
        worker = int(re.findall(r"worker 1 started \(pid (\d+)\)", server.log)[-1])
        other = sqlite3.connect(db, isolation_level=None)
        try:
            with Client("127.0.0.1", server.port, timeout=30) as c:
                assert c.wait(c.submit("devuelve", ["pan"], "Calle 1").id, timeout=20).estado == "listo"
                os.kill(worker, signal.SIGSTOP)
                try:
                    order_id = c.submit("cuelga-una-vez", ["pan"], "Calle 1").id
                    wait_for(lambda: queued_bytes(worker) > 0, timeout=10)
                    # Taken before the worker runs again: its claim waits for it.
                    other.execute("BEGIN IMMEDIATE")
                finally:
                    os.kill(worker, signal.SIGCONT)
            wait_for(lambda: queued_bytes(worker) == 0, timeout=10)  # read: it claims now
            # Past its look at the stop flag, into the claim: asleep in SQLite's
            # busy handler (waiting for its queue, it would be in poll or futex).
            wchan = Path(f"/proc/{worker}/wchan")
            wait_for(lambda: wchan.read_text() == "hrtimer_nanosleep", timeout=10, interval=0.01)
            began = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "waiting for 1 worker" in server.log, timeout=10)
            # The stop's wake-up in its queue: the pool's monitor has stopped, so
            # the claim's report, once the lock goes, comes after it.
            wait_for(lambda: queued_bytes(worker) > 0, timeout=10)
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
        assert server.proc.wait(30) == 0, server.log
        took = time.monotonic() - began
        assert server.stop() == 0  # ended already: collects its log
    assert calls(tmp_path, order_id), "the claim did not go through: the case was not made"
    stored = stored_orders(db)[order_id]
    assert stored["estado"] == "pendiente", stored
    assert stored["intentos"] == 1 and stored["fallos"] == 1, stored
    assert stored["error"].startswith("TiempoAgotado"), stored
    assert took < 10, f"the stop waited {took:.1f} s for a call past its 2 s limit"


def test_a_long_call_holds_up_no_other_order(tmp_path):
    """With no --limite-tarea a call may take for ever; the other worker must
    still do every other order, none of them left waiting behind that call."""
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "2", "--shutdown-timeout", "0.5"]
    with (
        running_server(tmp_path, *args, env=task_env(tmp_path)) as server,
        Client("127.0.0.1", server.port, timeout=30) as c,
    ):
        hanging = c.submit("cuelga-una-vez", ["pan"], "Calle 1").id
        wait_for(lambda: calls(tmp_path, hanging), timeout=10)
        others = [c.submit("devuelve", ["pan"], "Calle 1").id for _ in range(4)]
        for order_id in others:
            assert c.wait(order_id, timeout=10).estado == "listo", order_id
        assert c.get(hanging).estado == "en proceso"


@pytest.mark.parametrize("cliente", ["hijo-cuelga", "sistema-cuelga"])  # subprocess; os.system (in C)
def test_a_call_does_not_outlive_its_server_and_a_restart_runs_it_alone(tmp_path, cliente):
    """kill -9 of the server alone (`kill -9 PID`, not its group) mid-call: its
    worker ends at once, with the program its call started, instead of running
    on (for an hour here, and no --limite-tarea to stop it) while the restarted
    server hands the order back and runs it again: one worker at a time."""
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "1"]
    db = tmp_path / "p.db"
    with running_server(tmp_path, *args, db=db, env=task_env(tmp_path)) as server:
        with Client("127.0.0.1", server.port, timeout=30) as c:
            order_id = c.submit(cliente, ["pan"], "Calle 1").id
        wait_for(lambda: (tmp_path / f"{order_id}.hijo").exists(), timeout=10)
        worker = calls(tmp_path, order_id)[0]["pid"]
        program = int((tmp_path / f"{order_id}.hijo").read_text())
        server.proc.kill()
        server.proc.wait()
        try:
            wait_for(lambda: not alive(worker) and not alive(program), timeout=3)
            # Said once its programs are gone; read from the log pipe by a thread of the test.
            wait_for(lambda: "the server is gone; this worker" in server.log, timeout=5)
        finally:
            for pid in (worker, program):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
    with running_server(tmp_path, *args, db=db, env=task_env(tmp_path)) as again:
        with Client("127.0.0.1", again.port, timeout=30) as c:
            done = c.wait(order_id, timeout=20)
        assert done.estado == "listo" and done.resultado == "hecho" and done.intentos == 1, done
        first, second = calls(tmp_path, order_id)
        assert second["pid"] != worker, (first, second)


def test_get_takes_an_id_or_a_referencia_and_the_async_client_has_both(srv, client):
    for args, kwargs in [((), {}), ((1,), {"referencia": "x"})]:
        with pytest.raises(ValueError, match="exactly one"):
            client.get(*args, **kwargs)
    order_id = submit(client, "siempre-falla", "ref-async")

    async def ask() -> tuple[Any, Any]:
        async with AsyncClient("127.0.0.1", srv.port, timeout=30) as aclient:
            done = await aclient.wait(order_id, timeout=20)
            return await aclient.get(referencia="ref-async"), await aclient.retry(done.id)

    found, retried = asyncio.run(ask())
    assert found.id == order_id and found.estado == "fallido" and found.fallos == RETRIES + 1
    assert (retried.id, retried.estado, retried.intentos, retried.fallos) == (order_id, "pendiente", 0, 0)
    final(client, order_id)


def test_a_retry_waiting_across_a_restart_is_taken_when_due(tmp_path):
    args = ["--tarea", "tareas_prueba:segun_cliente", "--workers", "1", "--reintento-base"]
    with running_server(tmp_path, *args, "1", env=task_env(tmp_path)) as server:
        with Client("127.0.0.1", server.port, timeout=30) as c:
            order_id = c.submit("falla-dos-veces", ["pan"], "Calle 1").id
            waiting = wait_for(lambda: (o := c.get(order_id)).reintentar_despues and o, timeout=20)
        assert server.stop(signal.SIGTERM) == 0
    # The retry time stored before the stop is what counts; the second failure's
    # own wait (set by the restarted server) need not be long.
    with (
        running_server(tmp_path, *args, "0.1", env=task_env(tmp_path)) as server,
        Client("127.0.0.1", server.port, timeout=30) as c,
    ):
        done = c.wait(order_id, timeout=30)
    assert done.estado == "listo" and done.fallos == 2 and done.resultado == {"llamadas": 3}
    second = calls(tmp_path, order_id)[1]
    assert second["t"] >= moment(waiting.reintentar_despues) - 0.005


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [{"nota": "a\x00b"}, ["\ud800"], _nested(100_000)])
def test_a_result_no_backend_can_store_is_a_clear_failure(value):
    from pedidos.processing.task import ResultError, encode_result

    with pytest.raises(ResultError, match="resultado de la tarea"):
        encode_result(value)
    assert encode_result({"nota": "ñandú \\u0000 como texto"})  # the six characters are fine
