"""Fault injection against the real server: what crashes must not lose.

Each test starts `servidor.py` as a subprocess on loopback with its database in
`tmp_path`, breaks something for real (SIGKILL, SIGTERM, a database that is
locked, read-only, missing or full) and then checks the database and the
replies against the contract: an acknowledged order is stored, ends `listo`,
`cancelado` or `fallido`, and is processed once.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import (
    SERVER_MODE,
    SERVIDOR,
    LineClient,
    ServerProcess,
    alive,
    database_held,
    foreign_database,
    has_open,
    kill_pids,
    rss_kib,
    running_server,
    stored_orders,
    wait_for,
    worker_pid,
    workers_alive,
    workers_ready,
    writer_pid,
    writer_pids,
)

from pedidos.domain import FINAL_ESTADOS
from pedidos.storage.sqlite import files

BUSY_TIMEOUT_S = 5.0  # the server's SQLite busy timeout (storage/sqlite/store.py BUSY_TIMEOUT_MS)
# Where a test waits the busy timeout out, a shorter one: the same path, sooner.
SHORT_BUSY = {"PEDIDOS_TEST_BUSY_TIMEOUT_MS": "1000"}
ORPHAN_GRACE_S = 5.0  # "a few seconds" for workers to notice that their server is gone


def order(cliente: str, referencia: str | None = None) -> dict:
    request = {"cliente": cliente, "productos": ["pan", "agua"], "direccion": "Calle 1"}
    if referencia is not None:
        request["referencia"] = referencia
    return request


def encode(request: dict) -> bytes:
    return json.dumps(request, ensure_ascii=False).encode("utf-8") + b"\n"


class Load:
    """Client threads that submit orders until stopped, recording every acknowledgement.

    Each thread pipelines `pipeline` orders, then reads their replies. A thread
    ends when it is stopped, when it reaches `limit` orders, or when the server
    closes or resets its connection; a reply that never comes is recorded as a
    hang (the socket timeout bounds the wait)."""

    def __init__(self, port: int, threads: int = 4, pipeline: int = 4, limit: int = 20_000) -> None:
        self.port = port
        self.pipeline = pipeline
        self.limit = limit
        self.stop = threading.Event()
        self.guard = threading.Lock()
        self.acks: dict[int, str] = {}  # id -> cliente
        self.refusals: list[dict] = []
        self.endings: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), "a load thread did not end"

    def acked(self) -> int:
        with self.guard:
            return len(self.acks)

    def wait_acked(self, count: int, server: ServerProcess, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.acked() < count:
            if time.monotonic() > deadline:
                tail = "\n".join(server.lines[-20:])
                raise AssertionError(f"{self.acked()} acks in {timeout} s; {self.endings}; server:\n{tail}")
            time.sleep(0.02)

    def _run(self, n: int) -> None:
        ending = "stopped"
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        except OSError as exc:
            self._end(f"no connection: {exc}")
            return
        try:
            replies = sock.makefile("rb")
            if not replies.readline():
                self._end("closed")
                return
            sent = 0
            while not self.stop.is_set() and sent < self.limit:
                batch = [order(f"load-{n}-{sent + k}") for k in range(self.pipeline)]
                sent += len(batch)
                try:
                    sock.sendall(b"".join(encode(o) for o in batch))
                except OSError:
                    ending = "closed"
                    break
                for request in batch:
                    line = replies.readline()
                    if not line.endswith(b"\n"):
                        ending = "closed"
                        break
                    self._record(request, json.loads(line))
                else:
                    continue
                break
        except TimeoutError:
            ending = "hang"
        except (ConnectionResetError, BrokenPipeError):
            ending = "closed"
        finally:
            sock.close()
        self._end(ending)

    def _record(self, request: dict, reply: dict) -> None:
        with self.guard:
            if reply.get("ok"):
                assert reply["estado"] == "pendiente" and "duplicado" not in reply, reply
                assert reply["id"] not in self.acks, f"id {reply['id']} acknowledged twice"
                self.acks[reply["id"]] = request["cliente"]
            else:
                self.refusals.append(reply)

    def _end(self, how: str) -> None:
        with self.guard:
            self.endings.append(how)


def wait_all(port: int, ids: list[int], timeout: float = 60) -> dict[int, dict]:
    """`esperar` every id, pipelined on one connection: the orders as they end."""
    final: dict[int, dict] = {}
    with LineClient("127.0.0.1", port, timeout=timeout + 30) as client:
        for start in range(0, len(ids), 200):
            part = ids[start : start + 200]
            client.send(b"".join(encode({"accion": "esperar", "id": i, "timeout": timeout}) for i in part))
            for order_id in part:
                reply = client.read()
                assert reply["ok"], reply
                final[order_id] = reply["pedido"]
    return final


def stats(port: int) -> dict:
    with LineClient("127.0.0.1", port) as client:
        reply = client.ask({"accion": "estadisticas"})
    assert reply["ok"], reply
    return reply


def in_process(port: int, order_id: int, intentos: int | None = None) -> dict | None:
    """The order if it is `en proceso` (at attempt `intentos`, when given)."""
    with LineClient("127.0.0.1", port) as client:
        pedido = client.ask({"accion": "consultar", "id": order_id})["pedido"]
    if pedido["estado"] == "en proceso" and (intentos is None or pedido["intentos"] == intentos):
        return pedido
    return None


def wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def all_rows(db: Path) -> dict[int, tuple]:
    """(id, cliente, estado, fecha_inicio, fecha_fin, worker, intentos) by id."""
    keys = ("id", "cliente", "estado", "fecha_inicio", "fecha_fin", "worker", "intentos")
    return {i: tuple(o[k] for k in keys) for i, o in stored_orders(db).items()}


# --- the server killed --------------------------------------------------------------------


def test_sigkill_server_under_load_loses_nothing_and_processes_once(tmp_path):
    server = ServerProcess(
        ["--port", "0", "--workers", "2", "--work-time", "0.01"], tmp_path / "p.db", tmp_path
    )
    children: list[int] = []
    try:
        server.wait_ready()
        children = server.worker_pids()
        with Load(server.port, threads=4, pipeline=4) as load:
            load.wait_acked(400, server)
            os.kill(server.pid, signal.SIGKILL)
            server.proc.wait(10)
            load.finish()
        assert "hang" not in load.endings
        # The workers see their server gone and exit by themselves, even one
        # that was waiting for the write lock the server held when it died.
        wait_for(lambda: not any(alive(pid) for pid in children), timeout=ORPHAN_GRACE_S)
    finally:
        server.kill()
        kill_pids(children)
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=10)

    acks = dict(load.acks)
    before = all_rows(server.db)
    interrupted = {i for i, row in before.items() if row[2] == "en proceso"}
    assert set(acks) <= set(before), f"acknowledged but missing: {sorted(set(acks) - set(before))[:10]}"
    assert all(row[6] == 0 for row in before.values())

    with running_server(tmp_path, "--workers", "2", "--work-time", "0", db=server.db) as again:
        if interrupted:
            said = f"{len(interrupted)} {'order was' if len(interrupted) == 1 else 'orders were'} in process"
            assert any(said in line for line in again.lines)
        # Every stored order, acknowledged or not (the kill may cut an ack on its way): each
        # must be `listo` below, so wait for each before stopping, not only for the acked ones.
        final = wait_all(again.port, sorted(before))
        assert again.stop() == 0

    for order_id, cliente in acks.items():
        pedido = final[order_id]
        assert pedido["cliente"] == cliente, pedido
        assert pedido["estado"] == "listo", pedido
    after = all_rows(server.db)
    for order_id, (_, _, estado, inicio, fin, worker, intentos) in after.items():
        # Processed once: one start and one end, in that order, by a worker;
        # an attempt counted only where the kill interrupted one.
        assert estado == "listo", after[order_id]
        assert inicio is not None and fin is not None and inicio <= fin and worker in (1, 2)
        assert intentos == (1 if order_id in interrupted else 0), after[order_id]


def test_workers_exit_when_their_idle_server_is_killed(tmp_path):
    server = ServerProcess(["--port", "0", "--workers", "2", "--work-time", "0"], tmp_path / "p.db", tmp_path)
    children: list[int] = []
    try:
        server.wait_ready()
        wait_for(lambda: len(workers_ready(server)) == 2)
        children = server.worker_pids()
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in children), timeout=ORPHAN_GRACE_S)
    finally:
        server.kill()
        kill_pids(children)


def test_a_worker_mid_order_ends_as_soon_as_its_server_is_killed(tmp_path):
    # Mid-order with 30 s of work to go: the worker must not finish it while a
    # restarted server hands the same order to a worker of its own (orphan.py).
    server = ServerProcess(
        ["--port", "0", "--workers", "1", "--work-time", "30"], tmp_path / "p.db", tmp_path
    )
    children: list[int] = []
    try:
        server.wait_ready()
        children = server.worker_pids()
        with LineClient("127.0.0.1", server.port) as client:
            busy = client.ask(order("ocupado"))["id"]
        wait_for(lambda: in_process(server.port, busy))
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in children), timeout=2)
    finally:
        server.kill()
        kill_pids(children)


def test_workers_exit_when_the_server_dies_while_they_start(tmp_path):
    server = ServerProcess(["--port", "0", "--workers", "1", "--work-time", "0"], tmp_path / "p.db", tmp_path)
    children: list[int] = []
    try:
        # Catch the worker as soon as it exists, before it has set itself up,
        # and hold it there while its server dies.
        deadline = time.monotonic() + 30
        while (worker := worker_pid(server, 1)) is None:
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log
        children = server.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        assert not has_open(worker, server.db), "the worker was caught too late"
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(10)
        os.kill(worker, signal.SIGCONT)
        wait_for(lambda: has_open(worker, server.db) or not alive(worker), timeout=30)
        wait_for(lambda: not alive(worker), timeout=ORPHAN_GRACE_S)
    finally:
        server.kill()
        kill_pids(children)


def test_workers_exit_when_the_server_dies_holding_the_write_lock(tmp_path):
    # The order takes 3 s: time enough for the writer to take the write lock
    # for the next one first, and to wait for it (BUSY_TIMEOUT_S) until the
    # worker, done, waits for it too.
    server = ServerProcess(["--port", "0", "--workers", "1", "--work-time", "3"], tmp_path / "p.db", tmp_path)
    children: list[int] = []
    blocker = None
    try:
        server.wait_ready()
        children = server.worker_pids()
        with LineClient("127.0.0.1", server.port) as client:
            first = client.ask(order("primero"))["id"]
            wait_for(lambda: in_process(server.port, first))
            # Another program holds the database: the server's writer takes the
            # shared write lock for the next order and waits for SQLite...
            blocker = database_held(server.db)
            blocker.__enter__()
            client.send(order("segundo"))
            # ...while the worker, done with the first order, waits for the write lock.
            worker = worker_pid(server, 1)
            assert worker is not None
            wait_for(lambda: "futex" in wchan(worker), timeout=BUSY_TIMEOUT_S - 1)
            os.kill(server.pid, signal.SIGKILL)
            server.proc.wait(10)
        blocker.__exit__(None, None, None)
        blocker = None
        wait_for(lambda: not alive(worker), timeout=ORPHAN_GRACE_S)
    finally:
        if blocker is not None:
            blocker.__exit__(None, None, None)
        server.kill()
        kill_pids(children)


# --- a worker killed ----------------------------------------------------------------------


def test_worker_killed_mid_order_hands_it_back_and_is_replaced(tmp_path):
    with running_server(tmp_path, "--workers", "2", "--work-time", "2.5") as srv:
        assert stats(srv.port)["workers"] == 2
        with LineClient("127.0.0.1", srv.port) as client:
            victim = client.ask(order("víctima"))["id"]
        pedido = wait_for(lambda: in_process(srv.port, victim))
        number = pedido["worker"]
        old_pid = worker_pid(srv, number)
        assert old_pid in workers_alive(srv)

        os.kill(old_pid, signal.SIGKILL)  # mid-order: it has 2.5 s to go
        # The server notices at once (it waits on every worker's sentinel) and
        # hands the order back as an interrupted attempt.
        wait_for(lambda: any(f"worker {number} died" in line for line in srv.lines), timeout=3)
        with LineClient("127.0.0.1", srv.port) as client:
            back = client.ask({"accion": "consultar", "id": victim})["pedido"]
        assert back["intentos"] == 1 and back["estado"] in ("pendiente", "en proceso"), back

        # A replacement with the same number, in a new process.
        wait_for(lambda: worker_pid(srv, number) not in (None, old_pid), timeout=10)
        new_pid = worker_pid(srv, number)
        wait_for(lambda: new_pid in workers_alive(srv), timeout=10)
        wait_for(lambda: stats(srv.port)["workers"] == 2, timeout=10)

        with LineClient("127.0.0.1", srv.port) as client:
            done = client.ask({"accion": "esperar", "id": victim, "timeout": 30})["pedido"]
        assert done["estado"] == "listo" and done["intentos"] == 1, done
        assert done["fecha_inicio"] <= done["fecha_fin"]
        assert not alive(old_pid)


def test_third_interrupted_attempt_makes_the_order_fallido_and_the_rest_flow(tmp_path):
    with running_server(tmp_path, "--workers", "2", "--work-time", "2") as srv:
        with LineClient("127.0.0.1", srv.port) as client:
            victim = client.ask(order("venenoso"))["id"]
        killed = []
        for attempt in range(3):
            pedido = wait_for(lambda a=attempt: in_process(srv.port, victim, intentos=a), timeout=20)
            pid = worker_pid(srv, pedido["worker"])
            assert pid is not None and pid not in killed
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            wait_for(lambda p=pid: not alive(p), timeout=5)

        with LineClient("127.0.0.1", srv.port) as client:
            final = client.ask({"accion": "esperar", "id": victim, "timeout": 10})
            assert final["ok"], final
            assert final["pedido"]["estado"] == "fallido" and final["pedido"]["intentos"] == 3, final
            assert final["pedido"]["fecha_fin"] is None
            # One poisonous order does not stop the others.
            others = [client.ask(order(f"otro {n}"))["id"] for n in range(2)]
            for order_id in others:
                done = client.ask({"accion": "esperar", "id": order_id, "timeout": 30})["pedido"]
                assert done["estado"] == "listo" and done["intentos"] == 0, done
            # A fallido order is final: it cannot be cancelled, it is not retried.
            assert client.ask({"accion": "cancelar", "id": victim})["error"] == "no_cancelable"
        wait_for(lambda: stats(srv.port)["workers"] == 2, timeout=10)
        with LineClient("127.0.0.1", srv.port) as client:
            pedido = client.ask({"accion": "consultar", "id": victim})["pedido"]
        assert (pedido["estado"], pedido["intentos"]) == ("fallido", 3)


# --- a graceful stop ----------------------------------------------------------------------


def test_sigterm_under_load_keeps_every_ack_and_answers_or_closes(tmp_path):
    server = ServerProcess(
        ["--port", "0", "--workers", "2", "--work-time", "0.01"], tmp_path / "p.db", tmp_path
    )
    try:
        server.wait_ready()
        with Load(server.port, threads=4, pipeline=8) as load:
            load.wait_acked(400, server)
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(60) == 0
            load.finish()
    finally:
        server.kill()
    # Every connection got its replies or a close; none was left hanging.
    assert len(load.endings) == 4 and "hang" not in load.endings, load.endings
    assert load.refusals == []
    rows = all_rows(server.db)
    false_acks = [i for i, cliente in load.acks.items() if i not in rows or rows[i][1] != cliente]
    assert not false_acks, f"acknowledged but not stored: {false_acks[:10]}"
    # A graceful stop lets each worker finish or hand back its order, without
    # counting an attempt.
    assert all(row[2] in ("pendiente", "listo") and row[6] == 0 for row in rows.values())
    assert any("stopped" in line for line in server.lines)


# --- the database misbehaves ----------------------------------------------------------------


def start_failure(tmp_path: Path, db: Path, preexec=None, env=None) -> subprocess.CompletedProcess:
    """Run the server where it cannot start: its output and exit status."""
    return subprocess.run(
        [sys.executable, str(SERVIDOR), "--db", str(db), *SERVER_MODE, "--port", "0", "--work-time", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        preexec_fn=preexec,
        env={**os.environ, **(env or {})},
    )


def assert_one_clear_line(result: subprocess.CompletedProcess, db: Path, why: str) -> None:
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert str(db) in lines[0] and why in lines[0], lines[0]


def _without_file_permission_override() -> None:
    """In the child before exec: root loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH,
    so file modes bind it as they bind everyone else."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_start_with_a_missing_folder_says_so_in_one_line(tmp_path):
    db = tmp_path / "no-such-folder" / "p.db"
    assert_one_clear_line(start_failure(tmp_path, db), db, f"the folder {db.parent} does not exist")
    assert not db.parent.exists()


def test_start_with_a_folder_for_a_database_says_so_in_one_line(tmp_path):
    db = tmp_path / "datos"
    db.mkdir()
    assert_one_clear_line(start_failure(tmp_path, db), db, "it is a folder")
    assert list(tmp_path.iterdir()) == [db] and not any(db.iterdir())  # nothing created


def test_start_with_a_read_only_database_says_so_in_one_line(tmp_path):
    db = tmp_path / "p.db"
    foreign_database(db)
    db.chmod(0o444)
    preexec = _without_file_permission_override if os.geteuid() == 0 else None
    assert_one_clear_line(start_failure(tmp_path, db, preexec), db, "readonly database")


def test_start_with_a_database_locked_by_another_program_says_so_in_one_line(tmp_path):
    db = tmp_path / "p.db"
    foreign_database(db)
    with database_held(db):
        result = start_failure(tmp_path, db, env=SHORT_BUSY)
        assert_one_clear_line(result, db, "another program holds a write transaction on it")
        assert "end it and start again" in result.stdout


def test_start_on_a_full_disk_says_so_in_one_line(tmp_path):
    def no_room() -> None:  # every write to a file fails, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    db = tmp_path / "p.db"
    result = start_failure(tmp_path, db, no_room)
    assert_one_clear_line(result, db, "cannot use the database")


def test_more_workers_than_file_descriptors_says_so_in_one_line(tmp_path):
    # `--workers 40` under `ulimit -n 64`: the start ended in a traceback
    # ("OSError: [Errno 24] Too many open files" from multiprocessing)
    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    result = subprocess.run(
        [sys.executable, str(SERVIDOR), "--db", str(tmp_path / "p.db"), *SERVER_MODE, "--port", "0"]
        + ["--workers", "40", "--work-time", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        preexec_fn=few_descriptors,
    )
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout
    errors = [line for line in result.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stdout
    assert "--workers" in errors[0] and "ulimit -n is 64" in errors[0], errors[0]
    started = [int(pid) for pid in re.findall(r"started \(pid (\d+)\)", result.stdout)]
    assert started  # it got some way before running out
    wait_for(lambda: not any(alive(pid) for pid in started))


def test_a_write_error_on_a_full_disk_is_called_a_full_disk(tmp_path, monkeypatch):
    # SQLite often reports a write to a full disk as an "I/O error".
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda _folder: usage(10**9, 10**9, 0))
    why = files.database_error(str(tmp_path / "p.db"), sqlite3.OperationalError("disk I/O error"))
    assert f"the disk holding {tmp_path} is full; free some space" in why
    monkeypatch.setattr(files.shutil, "disk_usage", lambda _folder: usage(10**9, 10**6, 10**8))
    why = files.database_error(str(tmp_path / "p.db"), sqlite3.OperationalError("disk I/O error"))
    assert why.endswith(": disk I/O error")  # room to spare: the error as SQLite gives it


def test_start_with_a_file_that_is_not_a_database_says_so_in_one_line(tmp_path):
    db = tmp_path / "p.db"
    db.write_text("this is a shopping list, not a database\n" * 100)
    assert_one_clear_line(start_failure(tmp_path, db), db, "not a database")


def test_database_locked_while_serving_refuses_then_resumes_by_itself(tmp_path):
    with running_server(tmp_path, "--workers", "1", "--work-time", "0", env=SHORT_BUSY) as srv:
        with LineClient("127.0.0.1", srv.port, timeout=BUSY_TIMEOUT_S * 4) as client:
            before = client.ask(order("antes"))
            assert before["ok"], before
            with database_held(srv.db):
                refused = client.ask(order("bloqueado"))
                assert refused["ok"] is False and refused["error"] == "error_interno", refused
                # Reads go on meanwhile (WAL), and the server still answers.
                assert client.ask({"accion": "consultar", "id": before["id"]})["ok"]
            # the database is free again
            after = client.ask(order("después"))
            assert after["ok"], after
            done = client.ask({"accion": "esperar", "id": after["id"], "timeout": 20})["pedido"]
            assert done["estado"] == "listo"
        assert srv.stop() == 0
        assert "Traceback" not in srv.log
    clientes = [o["cliente"] for o in stored_orders(srv.db).values()]
    assert clientes == ["antes", "después"]


def test_writer_killed_under_load_is_replaced_and_loses_no_acknowledged_order(tmp_path):
    with running_server(tmp_path, "--workers", "1", "--work-time", "0") as srv:
        first = writer_pid(srv)
        assert first is not None, srv.log
        with Load(srv.port, threads=4, pipeline=8) as load:
            load.wait_acked(300, srv)
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: writer_pid(srv) not in (None, first), timeout=15)
            # Orders are acknowledged again, by the new writer.
            load.wait_acked(load.acked() + 300, srv)
            load.finish()
        assert "hang" not in load.endings and "closed" not in load.endings, load.endings
        # Orders in the dead writer's hands got an error, never an ack; and
        # not "it had no effect": it may have committed them before dying.
        assert all(r["error"] == "error_interno" for r in load.refusals), load.refusals[:3]
        assert all("no se sabe si la petición tuvo efecto" in r["mensaje"] for r in load.refusals)
        assert any("the writer process died" in line for line in srv.lines), srv.log
        # One line for the event, not one per request it took with it.
        assert not [line for line in srv.lines if "request from" in line], srv.log
        acks = dict(load.acks)
        final = wait_all(srv.port, sorted(acks))
        assert srv.stop() == 0
    for order_id, cliente in acks.items():
        assert final[order_id]["cliente"] == cliente and final[order_id]["estado"] == "listo"


def test_stop_while_the_writer_is_being_replaced_leaves_no_writer_behind(tmp_path):
    with running_server(tmp_path, "--workers", "1") as srv:
        first = writer_pid(srv)
        assert first is not None, srv.log
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: any("the writer process died" in line for line in srv.lines), timeout=10)
        # The replacement is due in about a second: the stop comes first.
        assert srv.stop() == 0, srv.log
    writers = writer_pids(srv)
    assert first in writers
    wait_for(lambda: not any(alive(pid) for pid in writers), timeout=5)
    assert "Traceback" not in srv.log
    # The stop waits out the replacement's delay, then starts no writer.
    assert "writer started" not in srv.log.split("shutting down", 1)[1], srv.log


def test_disk_full_while_serving_refuses_then_resumes_by_itself(tmp_path):
    with running_server(tmp_path, "--workers", "1", "--work-time", "0") as srv:
        with LineClient("127.0.0.1", srv.port) as client:
            before = client.ask(order("antes"))
            assert before["ok"], before
            # The writer process can no longer grow any file: its next commit
            # fails as on a full disk. Then the space comes back.
            writer = writer_pid(srv)
            assert writer is not None, srv.log
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.prlimit(writer, resource.RLIMIT_FSIZE, (1, hard))
            try:
                refused = [client.ask(order(f"lleno {n}")) for n in range(3)]
            finally:
                resource.prlimit(writer, resource.RLIMIT_FSIZE, (hard, hard))
            assert all(r["ok"] is False and r["error"] == "error_interno" for r in refused), refused
            after = client.ask(order("después"))
            assert after["ok"], after
            done = client.ask({"accion": "esperar", "id": after["id"], "timeout": 20})["pedido"]
            assert done["estado"] == "listo"
        assert srv.stop() == 0
        assert "Traceback" not in srv.log
    clientes = [o["cliente"] for o in stored_orders(srv.db).values()]
    assert clientes == ["antes", "después"]


# --- a backlog larger than the queue ---------------------------------------------------------

BACKLOG = 30_000


def submit_many(port: int, cliente: str, count: int, window: int = 500) -> list[int]:
    """Pipeline `count` orders on one connection, `window` in flight: the ids."""
    ids = []
    with LineClient("127.0.0.1", port, timeout=60) as client:
        for start in range(0, count, window):
            n = min(window, count - start)
            client.send(encode(order(cliente)) * n)
            for _ in range(n):
                reply = client.read()
                assert reply["ok"], reply
                ids.append(reply["id"])
    return ids


def test_backlog_lives_in_the_database_not_in_memory(tmp_path):
    with running_server(tmp_path, "--workers", "1", "--work-time", "1") as srv:
        submit_many(srv.port, "calentamiento", 1000)
        baseline = rss_kib(srv.pid)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                with contextlib.suppress(OSError, AssertionError):
                    peak.append(rss_kib(srv.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results: list[list[int]] = []
        try:
            threads = [
                threading.Thread(
                    target=lambda n=n: results.append(submit_many(srv.port, f"cola {n}", BACKLOG // 4))
                )
                for n in range(4)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
        finally:
            done.set()
            sampler.join(5)
        assert sum(len(ids) for ids in results) == BACKLOG
        grown_mib = (max(peak) - baseline) / 1024
        # 30,000 pending orders: the ids in memory are bounded by the
        # dispatcher's window, the queue holds two at most.
        assert grown_mib < 48, f"server RSS grew {grown_mib:.0f} MiB over {baseline // 1024} MiB"
        assert stats(srv.port)["en_cola"] >= BACKLOG
        assert srv.stop() == 0
    with running_server(tmp_path, "--workers", "2", "--work-time", "0", db=srv.db) as again:

        def drained() -> bool:
            estados = stats(again.port)["estados"]
            return estados["pendiente"] == 0 and estados["en proceso"] == 0

        wait_for(drained, timeout=90, interval=0.1)
    counts = dict(collections.Counter(o["estado"] for o in stored_orders(srv.db).values()))
    assert counts == {"listo": BACKLOG + 1000}
    assert set(FINAL_ESTADOS) >= set(counts)
