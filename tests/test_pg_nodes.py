"""Many real servers on one PostgreSQL database (section 9 of the contract).

Each test starts its nodes as real `servidor.py` processes on loopback and
speaks to them over the wire; it reads the table directly only to check what
the wire cannot show (how many times an order was claimed). Leases are short
(`--lease 2`) so that failover fits in a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from conftest import CLIENTE, LineClient, ServerProcess, alive, wait_for
from pgcluster import with_options
from stallproxy import StallProxy
from test_tasks import task_env

LEASE = 2.0


@contextlib.contextmanager
def nodes(
    url: str,
    tmp_path: Path,
    names: str,
    *args: str,
    via: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[list[ServerProcess]]:
    """One server per letter of `names`, all on database `url` (a node in
    `via` through the URL given there); always stopped."""
    via = via or {}
    servers = [
        ServerProcess(
            ["--port", "0", "--nodo", name, "--lease", str(LEASE), *args],
            via.get(name, url),  # type: ignore[arg-type]
            tmp_path,
            env,
        )
        for name in names
    ]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    except BaseException:
        for server in servers:  # shown by pytest with the failure
            print(f"--- log of node {server.args[3]} ---\n{server.log}")
        raise
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGCONT)  # a paused one must hear SIGTERM
            if server.proc.poll() is None:
                server.stop()
            server.kill()


def client(server: ServerProcess) -> LineClient:
    # Reads wait longer than any `esperar` here asks the server to (30 s): a
    # reply that comes late must fail on its own terms, not on the socket's.
    return LineClient("127.0.0.1", server.port, timeout=45)


def order(n: int, ref: str | None = None) -> dict:
    body = {"cliente": f"C{n}", "productos": ["pan"], "direccion": "Calle 1"}
    if ref is not None:
        body["referencia"] = ref
    return body


def db(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def run_client(server: ServerProcess, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(CLIENTE), "--host", "127.0.0.1", "--port", str(server.port), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return [line.strip() for line in done.stdout.splitlines()]


def listed(server: ServerProcess, estado: str | None = None) -> list[dict]:
    with client(server) as c:
        request = {"accion": "listar", "limite": 1000}
        if estado:
            request["estado"] = estado
        reply = c.ask(request)
    assert reply["ok"], reply
    return reply["pedidos"]


def test_orders_sent_round_robin_end_listo_exactly_once_and_every_node_agrees(pg_url, tmp_path):
    with nodes(pg_url, tmp_path, "ABC", "--work-time", "0") as servers:
        clients = [client(s) for s in servers]
        ids = []
        for n in range(60):
            reply = clients[n % 3].ask(order(n))
            assert reply["ok"] and reply["estado"] == "pendiente", reply
            ids.append(reply["id"])
        assert len(set(ids)) == 60
        wait_for(lambda: len(listed(servers[0], "listo")) == 60, timeout=15)
        # Each node publishes its workers with its lease, renewed every second.
        wait_for(lambda: all(c.ask({"accion": "estadisticas"})["workers"] == 6 for c in clients), timeout=5)
        stats = [c.ask({"accion": "estadisticas"}) for c in clients]
        for c in clients:
            c.close()
        table = run_client(servers[1], "--listar", "--limite", "5")
        shown = run_client(servers[2], "--estadisticas")
    # The client shows which node holds each order, and every live node.
    rows = [line.split() for line in table if line[:1].isdigit()]
    assert any(line.split()[-1:] == ["nodo"] for line in table), table
    assert len(rows) == 5 and all(row[-1] in ("A", "B", "C") for row in rows), table
    assert "Nodos vivos: 3" in shown and any(line.split()[:3] == ["A", "2", "workers,"] for line in shown)
    # Each order was claimed once (its claim token was drawn once) and none was handed back.
    assert db(pg_url, "SELECT count(*), min(intento), max(intento), max(intentos) FROM pedidos") == [
        (60, 1, 1, 0)
    ]
    for reply in stats:
        assert reply["estados"] == stats[0]["estados"] and reply["estados"]["listo"] == 60
        assert [n["nodo"] for n in reply["nodos"]] == ["A", "B", "C"]
        assert reply["workers"] == 6 and reply["en_cola"] == 0
    assert [reply["conexiones"] for reply in stats] == [1, 1, 1]  # this node's own


def test_esperar_on_one_node_answers_for_an_order_finished_on_another(pg_url, tmp_path):
    latencies = []
    with (
        nodes(pg_url, tmp_path, "AB", "--work-time", "0.2", "--workers", "1") as (a, b),
        client(a) as on_a,
        client(b) as on_b,
    ):
        for n in range(10):
            placed = on_a.ask(order(n))
            # Both nodes wait for it; the one that did not process it is the
            # one this test is about (either may take it: B hears of it too).
            for c in (on_a, on_b):
                c.send({"accion": "esperar", "id": placed["id"], "timeout": 10})
            got = {}
            for name, c in (("A", on_a), ("B", on_b)):
                got[name] = (c.read(), time.time())
            reply, at = got["B" if got["A"][0]["pedido"]["nodo"] == "A" else "A"]
            assert reply["ok"] and reply["pedido"]["estado"] == "listo", reply
            latencies.append(at - datetime.fromisoformat(reply["pedido"]["fecha_fin"]).timestamp())
    print(f"cross-node esperar: p50 {statistics.median(latencies) * 1000:.1f} ms")  # shown with -s
    assert statistics.median(latencies) <= 0.05, latencies


def test_one_referencia_sent_to_two_nodes_at_once_is_stored_once(pg_url, tmp_path):
    with (
        nodes(pg_url, tmp_path, "AB", "--work-time", "0") as (a, b),
        client(a) as on_a,
        client(b) as on_b,
    ):
        for n in range(30):  # pipelined on both at once, read afterwards
            on_a.send(order(n, f"ref-{n}"))
            on_b.send(order(n, f"ref-{n}"))
        replies = [(on_a.read(), on_b.read()) for _ in range(30)]
    for ra, rb in replies:
        assert ra["ok"] and rb["ok"] and ra["id"] == rb["id"], (ra, rb)
        assert sorted([bool(ra.get("duplicado")), bool(rb.get("duplicado"))]) == [False, True]
    assert db(pg_url, "SELECT count(*), count(DISTINCT referencia) FROM pedidos") == [(30, 30)]


def held_by(url: str, nodo: str) -> list[int]:
    return [
        r[0] for r in db(url, "SELECT id FROM pedidos WHERE estado = 'en proceso' AND nodo = %s", (nodo,))
    ]


def calls_text(state: Path, order_id: int) -> str:
    """What the task `trabaja_diez` recorded of its calls for `order_id`."""
    path = state / f"{order_id}.calls"
    return path.read_text() if path.exists() else ""


def sent_until_held(url: str, on_a: LineClient, most: int = 10) -> list[int]:
    """Send orders to node A until A holds one `en proceso`: the other nodes
    hear of each new order too and may claim it first, so one order alone
    might never be A's. Returns what A holds."""
    for n in range(most):
        assert on_a.ask(order(n))["ok"]
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            if held := held_by(url, "A"):
                return held
            time.sleep(0.02)
    raise AssertionError(f"node A held none of {most} orders sent to it")


def test_a_killed_nodes_orders_finish_elsewhere_within_lease_plus_2_s(pg_url, tmp_path):
    with nodes(pg_url, tmp_path, "ABC", "--work-time", "1") as (a, b, c):
        with client(a) as on_a:
            sent_until_held(pg_url, on_a)  # B and C may claim the first ones
        a.kill()  # the server and its workers: as a lost machine
        killed_at = time.time()  # the database's clock is this machine's
        held = held_by(pg_url, "A")
        assert held
        sent = len(listed(b))

        def all_done() -> bool:
            return all(o["estado"] == "listo" for o in listed(b) if o["id"] in held)

        wait_for(all_done, timeout=LEASE + 2 + 5)
        # Timed by the nodes' own `fecha_fin`: this test's polling is no part of it.
        finished = [datetime.fromisoformat(o["fecha_fin"]) for o in listed(b) if o["id"] in held]
        took = max(finished).timestamp() - killed_at
        wait_for(lambda: len(listed(c, "listo")) == sent, timeout=10)  # the rest, never claimed by A
        orders = {o["id"]: o for o in listed(c)}
        assert "node A missed its lease" in b.log + c.log
    print(f"failover: {took:.2f} s with --lease {LEASE:g}")  # shown with -s
    assert took <= LEASE + 2, took
    for order_id in held:
        assert orders[order_id]["nodo"] in ("B", "C") and orders[order_id]["intentos"] == 1
    assert all(o["estado"] == "listo" for o in orders.values())
    assert db(pg_url, "SELECT count(*) FROM pedidos WHERE estado = 'listo'") == [(sent,)]


def test_a_node_stopped_with_sigterm_hands_its_orders_back_without_counting_an_attempt(pg_url, tmp_path):
    args = ("--work-time", "1.5", "--shutdown-timeout", "0.3")
    with nodes(pg_url, tmp_path, "AB", *args) as (a, b):
        with client(a) as on_a:
            ids = sent_until_held(pg_url, on_a)
        assert a.stop() == 0
        assert held_by(pg_url, "A") == []  # handed back at once, not left to the lease
        with client(b) as on_b:
            done = [on_b.ask({"accion": "esperar", "id": i, "timeout": 10}) for i in ids]
    for reply in done:
        assert reply["ok"] and reply["pedido"]["nodo"] == "B" and reply["pedido"]["intentos"] == 0, reply


# The fencing tests: a lease of 4 s, whose margin (1 s) is the workers' time to
# see the lease run out and exit, as by default; with 2 s (a margin of 0.5 s) a
# CI machine with every core busy once ran A's worker past B's taking the order.
# An order that outlasts B's taking it by far, so that a worker that was not
# stopped is still there to be seen.
FENCE_ARGS = ("--lease", "4", "--work-time", "10", "--workers", "1")
# The lease, then B's one worker may first finish orders of its own (the orders
# sent until A held one: a CI run once had B busy past 4 + 10 + 6 s), and room. A
# worker of A that was not stopped is still alive however long this takes.
FENCE_WAIT_S = 4 + 3 * 10 + 6


def test_a_paused_nodes_worker_stops_before_another_node_takes_its_order(pg_url, tmp_path):
    # The order outlasts A's lease by far. A's worker, its server
    # paused, ran on while B ran the same order: one order in two workers at
    # once (a task's side effects twice), its late result merely refused. It
    # now ends before B can take the order, short of A's lease by a margin.
    with nodes(pg_url, tmp_path, "AB", *FENCE_ARGS) as (a, b):
        with client(a) as on_a:
            order_id = sent_until_held(pg_url, on_a)[0]
        (worker_pid,) = (int(pid) for pid in re.findall(r"worker 1 started \(pid (\d+)\)", a.log))
        os.kill(a.pid, signal.SIGSTOP)  # the server stops; its worker watches the lease itself
        try:
            # B's one worker may be busy with an order of its own first.
            wait_for(lambda: order_id in held_by(pg_url, "B"), timeout=FENCE_WAIT_S, interval=0.01)
            assert not alive(worker_pid), "A's worker still ran when B took its order"
        finally:
            os.kill(a.pid, signal.SIGCONT)
        with client(b) as on_b:
            done = on_b.ask({"accion": "esperar", "id": order_id, "timeout": 20})
        wait_for(lambda: "registered again" in a.log, timeout=5)
        assert "this node's lease ran out" in a.log
        assert "taken away from this worker" not in a.log  # it never got as far as a late finish
    assert done["ok"] and done["pedido"]["nodo"] == "B" and done["pedido"]["intentos"] == 1, done
    assert db(pg_url, "SELECT nodo FROM nodos") == [], a.log  # A, registered again, gave its name up too


def test_a_cut_off_nodes_worker_stops_before_another_node_takes_its_order(pg_url, tmp_path):
    # The path from A to PostgreSQL goes silent: A cannot renew its lease, B
    # declares it dead and runs its order. A's worker ran on meanwhile (the
    # same order in two workers at once); it now ends short of A's lease.
    parts = urlsplit(pg_url)
    proxy = StallProxy(parts.port)  # type: ignore[arg-type]
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    state = tmp_path / "estado"
    state.mkdir()
    # FENCE_ARGS, with its ten seconds of work in a task that says when it starts.
    args = ["--lease", "4", "--workers", "1", "--tarea", "tareas_prueba:trabaja_diez"]
    try:
        with nodes(pg_url, tmp_path, "AB", *args, via={"A": via_proxy}, env=task_env(state)) as (a, b):
            with client(a) as on_a:
                order_id = sent_until_held(pg_url, on_a)[0]
            (worker_pid,) = (int(pid) for pid in re.findall(r"worker 1 started \(pid (\d+)\)", a.log))
            # Cut off only once the work is under way. The claim's commit is
            # seen in the database a moment before its reply, through the
            # proxy, reaches the worker: a worker cut off waiting for that
            # reply runs no work, and its watch rightly leaves it be (a CI
            # run once stalled the proxy in that moment).
            wait_for(lambda: f'"pid": {worker_pid}' in calls_text(state, order_id), timeout=10)
            proxy.stall()
            try:
                # B's one worker may be busy with an order of its own first.
                wait_for(lambda: order_id in held_by(pg_url, "B"), timeout=FENCE_WAIT_S, interval=0.01)
                assert not alive(worker_pid), "A's worker still ran when B took its order"
                wait_for(lambda: "this node's lease ran out" in a.log, timeout=5)
            finally:
                proxy.resume()  # so that A can stop, whatever happened
            with client(b) as on_b:
                done = on_b.ask({"accion": "esperar", "id": order_id, "timeout": 20})
        assert done["ok"] and done["pedido"]["nodo"] == "B" and done["pedido"]["intentos"] == 1, done
    finally:
        proxy.stop()


def test_a_worker_stopped_by_a_late_renewal_of_a_node_no_one_reaped_costs_no_attempt(pg_url, tmp_path):
    # The renewals of a node alone are held up past its workers' margin (a
    # lock on `nodos` here; a database outage does the same): its worker stops,
    # as it must not know that no other node will reap. No one did: the order
    # goes back uncounted, where a crash would have cost it one of its three attempts.
    with nodes(pg_url, tmp_path, "A", "--work-time", "5", "--workers", "1") as (a,), client(a) as on_a:
        order_id = sent_until_held(pg_url, on_a)[0]
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("LOCK TABLE nodos IN EXCLUSIVE MODE")  # the renewals wait
            # The worker's own word: the server's hand-back may wait for the lock
            # too (a reap in progress holds the connection it needs).
            wait_for(lambda: "lease ran out under this worker" in a.log, timeout=LEASE + 5)
            blocker.rollback()
        done = on_a.ask({"accion": "esperar", "id": order_id, "timeout": 30})
        assert "worker 1 stopped by its node's lease" in a.log
    assert done["ok"] and done["pedido"]["estado"] == "listo" and done["pedido"]["intentos"] == 0, done


def test_a_one_second_lease_is_renewed_before_it_runs_out(pg_url, tmp_path):
    # A node renewing once a second kept a 1 s lease only until the next
    # renewal was a few milliseconds late: under load it was declared dead
    # several times a second, its orders handed back with an attempt counted.
    seen: list[tuple[datetime, datetime]] = []

    def renewals() -> int:
        (row,) = db(pg_url, "SELECT visto, vence FROM nodos WHERE nodo = 'A'") or [None]
        if row is not None and row not in seen:
            seen.append(row)
        return len(seen)

    with nodes(pg_url, tmp_path, "AB", "--work-time", "0", "--lease", "1") as (a, b):
        wait_for(lambda: renewals() >= 6, timeout=15, interval=0.01)
        logs = a.log + b.log
    # Each renewal came while the lease before it still held.
    lapses = [
        (before[1], after[0])
        for before, after in zip(seen[:-1], seen[1:], strict=True)
        if after[0] >= before[1]
    ]
    assert lapses == [], lapses
    assert "declared dead" not in logs, logs


def test_a_command_waiting_on_the_database_does_not_cost_its_node_the_lease(pg_url, tmp_path):
    # The lease renewals shared one connection with the commands and the reaps:
    # a statement waiting on `pedidos` (a lock here, which holds up the reaps
    # too; a listing over millions of rows elsewhere) held them up, and past
    # the lease the other nodes declared a working node dead and ran its orders
    # again.
    with (
        nodes(pg_url, tmp_path, "AB", "--work-time", "0", "--lease", "1") as (a, b),
        client(a) as on_a,
    ):
        placed = on_a.ask(order(1))
        with psycopg.connect(pg_url, autocommit=True) as admin, psycopg.connect(pg_url) as blocker:
            blocker.execute("LOCK TABLE pedidos IN ACCESS EXCLUSIVE MODE")  # reads wait too
            on_a.send({"accion": "consultar", "id": placed["id"]})
            waiting = "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'SELECT%'"
            wait_for(lambda: admin.execute(waiting).fetchall())  # the command waits for the lock
            (since,) = admin.execute("SELECT clock_timestamp()").fetchone()  # type: ignore[misc]
            # A's lease goes on being renewed while its command waits: three leases' worth.
            renewed = "SELECT visto > %s + interval '3 seconds' FROM nodos WHERE nodo = 'A'"
            wait_for(lambda: admin.execute(renewed, (since,)).fetchone() == (True,), timeout=6)
            blocker.rollback()
        reply = on_a.read()
        assert reply["ok"] and reply["pedido"]["id"] == placed["id"], reply
        logs = a.log + b.log
    assert "declared dead" not in logs, logs


def schema_made(url: str, tmp_path: Path) -> str:
    """The schema made (by a node started and stopped), and the URL of a node
    whose statements PostgreSQL cancels after 1 s rather than 9."""
    with nodes(url, tmp_path, "A", "--work-time", "0"):
        pass
    return with_options(url, "-c statement_timeout=1000")


def test_a_node_stopped_while_its_start_waits_for_a_lock_stops_at_once(pg_url, tmp_path):
    # The stop signal only set a flag the waiting start never looked at: the
    # node went on waiting for as long as the lock lasted, then started fully
    # (workers, listeners) only to stop.
    quick = schema_made(pg_url, tmp_path)
    with psycopg.connect(pg_url) as blocker:
        blocker.execute("LOCK TABLE pedidos IN ACCESS EXCLUSIVE MODE")
        b = ServerProcess(["--port", "0", "--nodo", "B", "--work-time", "0"], quick, tmp_path)  # type: ignore[arg-type]
        try:
            wait_for(
                lambda: "the start waits for the database" in b.log or b.proc.poll() is not None, timeout=15
            )
            asked = time.monotonic()
            code = b.stop()
            took = time.monotonic() - asked
        finally:
            blocker.rollback()
            b.kill()
    assert code == 0 and took < 5, (code, took, b.log)
    assert "stopped before the database was ready" in b.log, b.log
    assert db(pg_url, "SELECT nodo FROM nodos") == [], b.log  # it gave its name up


def test_a_lock_on_the_nodes_table_costs_no_node_its_life(pg_url, tmp_path):
    # Something held every node's renewals up (a lock on `nodos`) past the
    # lease: when it ended, the first node whose statements went on declared
    # the others dead, though their renewals came in the same instant.
    with nodes(pg_url, tmp_path, "AB", "--work-time", "0") as (a, b):
        # Both up long enough to be reaping.
        reaping = "SELECT count(*) FROM nodos WHERE visto > iniciado + make_interval(secs => %s)"
        wait_for(lambda: db(pg_url, reaping, (LEASE + 1,))[0][0] == 2)
        with psycopg.connect(pg_url, autocommit=True) as admin, psycopg.connect(pg_url) as blocker:
            blocker.execute("LOCK TABLE nodos IN ACCESS EXCLUSIVE MODE")
            (since,) = admin.execute("SELECT clock_timestamp()").fetchone()  # type: ignore[misc]
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s"
            # Both nodes' renewals and reaps wait; then the lock outlasts the lease twice.
            wait_for(lambda: admin.execute(waiting, ("%nodos%",)).fetchone()[0] >= 4)  # type: ignore[index]
            outlasted = "SELECT clock_timestamp() > %s + make_interval(secs => %s)"
            wait_for(lambda: admin.execute(outlasted, (since, 2 * LEASE + 0.5)).fetchone()[0])  # type: ignore[index]
            blocker.rollback()
        renewed = "SELECT count(*) FROM nodos WHERE visto > %s + make_interval(secs => %s)"
        wait_for(lambda: db(pg_url, renewed, (since, 2 * LEASE + 0.5))[0][0] == 2, timeout=5)  # both since
        logs = a.log + b.log
    assert "declared dead" not in logs, logs


def test_a_node_started_while_orders_are_locked_waits_then_starts(pg_url, tmp_path):
    # Its start hands back what an earlier run left `en proceso`: behind a
    # lock on `pedidos`, PostgreSQL cancelled that, and the node exited (a
    # service manager restarting it would loop for as long as the lock lasted),
    # leaving its row in `nodos` for the others to declare dead.
    quick = schema_made(pg_url, tmp_path)
    args = ["--port", "0", "--nodo", "B", "--lease", "2", "--work-time", "0"]
    with psycopg.connect(pg_url) as blocker:
        blocker.execute("LOCK TABLE pedidos IN ACCESS EXCLUSIVE MODE")
        b = ServerProcess(args, quick, tmp_path)  # type: ignore[arg-type]
        try:
            wait_for(
                lambda: "the start waits for the database" in b.log or b.proc.poll() is not None, timeout=15
            )
            assert b.proc.poll() is None, b.log
            blocker.rollback()
            b.wait_ready()
            with client(b) as c:
                assert c.ask(order(1))["ok"]
        finally:
            blocker.rollback()
            if b.proc.poll() is None:
                b.stop()
            b.kill()
    assert "declared dead" not in b.log, b.log


def test_postgresql_stopped_under_load_then_started_loses_nothing_acknowledged(pg_cluster, tmp_path):
    url = pg_cluster.url()
    acked: dict[str, int] = {}
    refused = []
    stop = threading.Event()

    def load(server: ServerProcess, prefix: str) -> None:
        n = 0
        c = client(server)
        try:
            while not stop.is_set():
                n += 1
                reply = c.ask(order(n, f"{prefix}-{n}"))
                if reply["ok"]:
                    acked[f"{prefix}-{n}"] = reply["id"]
                else:
                    refused.append(reply["error"])
                    time.sleep(0.01)
        finally:
            c.close()

    with nodes(url, tmp_path, "AB", "--work-time", "0") as servers:
        threads = [threading.Thread(target=load, args=(s, s.args[3])) for s in servers]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(acked) > 50, timeout=10)
            pg_cluster.halt()
            time.sleep(5)  # the outage itself: the length is the test
            during = len(acked)
            refused_before = len(refused)
            pg_cluster.boot()
            booted = time.monotonic()
            while len(acked) <= during + 50:
                assert time.monotonic() - booted < 20, (
                    f"after the restart: {len(acked) - during} acks, {len(refused) - refused_before} "
                    f"refusals, load threads alive: {[t.is_alive() for t in threads]}"
                )
                time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert all(s.proc.poll() is None for s in servers)
        unfinished = "SELECT id, estado, nodo, worker FROM pedidos WHERE estado <> 'listo' ORDER BY id"
        deadline = time.monotonic() + 20
        while left := db(url, unfinished):
            assert time.monotonic() < deadline, f"not listo: {left[:10]} ({len(left)})"
            time.sleep(0.05)
        logs = servers[0].log + servers[1].log
    assert "PostgreSQL unreachable" in logs and "PostgreSQL reachable again" in logs
    stored = dict(db(url, "SELECT referencia, id FROM pedidos WHERE estado = 'listo'"))
    assert {ref: stored.get(ref) for ref in acked} == acked  # every ack has its row, listo
