"""The benchmark's scenarios on many nodes of one PostgreSQL database (`--db URL`).

Intake and end to end over `--nodos N` real servers (`python3 -m pedidos --nodo
A`, `B`, ...), the load generator spreading its connections over them, with the
CPU each order costs the nodes and PostgreSQL; intake with NOTIFY hints against
`--sin-notify`; the failover time after a `kill -9`; and the latency of an
`esperar` answered by a node other than the one that finished the order.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import string
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pedidos.domain import Estado
from pedidos.tools import pgdb
from pedidos.tools.load import BenchError, percentile
from pedidos.tools.procs import Child, ask, machine_busy, stats, tree_cpu
from pedidos.tools.report import Row
from pedidos.tools.scenarios import ORDER, e2e_figures, measure, row_of, sleep_until

FAILOVER_NODES = 3  # when --nodos does not say more than one
FAILOVER_WORK_S = 1.0
ESPERAR_WORK_S = 0.2
POLL_S = 0.02  # how often the failover scenario looks at the table


class Nodes:
    """Servers named `names` (one letter each) on one PostgreSQL database, started
    together on an emptied table and stopped together; `extra[name]` adds options
    to one of them. `port` lists their ports, for the load generator."""

    def __init__(
        self,
        args: argparse.Namespace,
        tmp: Path,
        scenario: str,
        names: str,
        work_time: str,
        *options: str,
        extra: dict[str, list[str]] | None = None,
    ) -> None:
        pgdb.empty(args.db)
        self.names = names
        self.children: list[Child] = []
        try:
            for name in names:
                argv = [
                    "-m",
                    "pedidos",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--db",
                    args.db,
                    "--nodo",
                    name,
                ]
                argv += ["--workers", str(args.workers), "--work-time", work_time]
                argv += ["--max-connections", "10000", "--shutdown-timeout", "10", *options]
                argv += (extra or {}).get(name, [])
                log = tmp / f"{scenario}-{name}.log"
                self.children.append(Child(argv, log, ready_text=" ready: ", wait=False))
            for child in self.children:
                child.wait_ready()
        except BaseException:
            self.stop()
            raise
        if args.verbose:
            pids = ", ".join(
                f"{n} pid {c.pid} port {c.port}" for n, c in zip(names, self.children, strict=True)
            )
            print(f"  {scenario}: nodes {pids}", file=sys.stderr)

    @property
    def port(self) -> list[int]:
        return [child.port for child in self.children]

    def tail(self) -> str:
        return "\n".join(f"[{n}] {c.tail(5)}" for n, c in zip(self.names, self.children, strict=True))

    def stop(self) -> None:
        for child in self.children:
            child.stop()

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def node_window(nodes: Nodes, pg: pgdb.PgCpu, probe: Any = None) -> Any:
    """A `during` hook for `drive`: CPU over the window of the nodes (each one's
    whole process tree: server, workers), of PostgreSQL (None when not local),
    of the load and of the rest of the machine; `probe()` at both ends."""
    roots = [child.pid for child in nodes.children]

    def snapshot(load: list[int]) -> dict[str, float | None]:
        snap = {"nodes": tree_cpu(roots), "pg": pg(), "load": tree_cpu(load), "busy": machine_busy()}
        return snap

    def during(start: float, end: float, pids: list[int]) -> dict[str, Any]:
        sleep_until(start)
        before, first = snapshot(pids), probe() if probe else None
        sleep_until(end)
        after, last = snapshot(pids), probe() if probe else None
        used = {k: None if after[k] is None else after[k] - before[k] for k in before}  # type: ignore[operator]
        seconds = end - start
        other = used["busy"] - sum(v for k, v in used.items() if k != "busy" and v)  # type: ignore[operator]
        cpu = {k: round(100 * v / seconds) for k, v in used.items() if k != "busy" and v is not None}
        cpu["other"] = max(0, round(100 * other / seconds))
        return {"cpu": cpu, "cpu_s": used, "probe": (first, last), "end": end}

    return during


def _per_order(result: dict[str, Any]) -> dict[str, Any]:
    """µs of CPU per acknowledged order over the window: the nodes, PostgreSQL."""
    used, orders = result["during"]["cpu_s"], result["count"]
    return {
        "us_node": pgdb.per_order_us(used["nodes"], orders),
        "us_pg": pgdb.per_order_us(used["pg"], orders),
    }


def intake_rows(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    """Request/response and pipelined intake over the nodes (workers nearly idle),
    then the database's own limit from a bare script."""
    pg = pgdb.PgCpu(args.db)
    with Nodes(args, tmp, "intake", _names(args.nodos), "1") as nodes:
        for kind, pipelined in (("rr", False), ("pipe", True)):
            result = measure(args, nodes, pipelined, during=node_window(nodes, pg))
            rows[f"intake_{kind}"] = row_of(result, nodes=args.nodos, **_per_order(result))
    rows.update(pgdb.limit_rows(args.db, args.seconds, pg))


def e2e_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    pg = pgdb.PgCpu(args.db)
    with Nodes(args, tmp, "e2e", _names(args.nodos), "0") as nodes:
        port = nodes.port[0]  # estadisticas counts the whole service on any node
        listo = lambda: stats(port)["estados"][Estado.LISTO]  # noqa: E731
        result = measure(args, nodes, False, during=node_window(nodes, pg, listo))
        rows["e2e"] = e2e_figures(args, port, result, nodes=args.nodos, **_per_order(result))


def notify_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    """Request/response intake on node N (NOTIFY hints) and node S (`--sin-notify`),
    side by side on one database, measured in turn N, S, S, N so that a machine
    getting busier or quieter weighs on both alike."""
    pg = pgdb.PgCpu(args.db)
    with Nodes(args, tmp, "notify", "NS", "1", extra={"S": ["--sin-notify"]}) as nodes:
        hints, polls = nodes.children
        turns = [
            measure(args, child, False, during=node_window(nodes, pg))
            for child in (hints, polls, polls, hints)
        ]
    rate = (turns[0]["rate"] + turns[3]["rate"]) / 2
    sin_rate = (turns[1]["rate"] + turns[2]["rate"]) / 2
    pg_us = [_per_order(t)["us_pg"] for t in turns]
    row = row_of(turns[0], rate=rate, sin_rate=sin_rate, ratio=rate / sin_rate if sin_rate else 0.0)
    if None not in pg_us:
        row.update(us_pg=(pg_us[0] + pg_us[3]) / 2, sin_us_pg=(pg_us[1] + pg_us[2]) / 2)
    rows["notify"] = row


def failover_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    """`kill -9` of node A (server and workers) while its workers hold orders
    `en proceso` (work time 1 s): seconds until the last of those is `listo` on
    another node. One order per worker of the service, all sent to A."""
    count = args.nodos if args.nodos > 1 else FAILOVER_NODES
    work = f"{FAILOVER_WORK_S:g}"
    with Nodes(args, tmp, "failover", _names(count), work, "--lease", f"{args.lease:g}") as nodes:
        victim = nodes.children[0]
        ask(victim.port, [ORDER] * (args.workers * count))
        deadline = time.monotonic() + 10
        while len(held := _held(args.db, "A")) < args.workers and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if not held:
            raise BenchError(f"failover: node A took none of its orders within 10 s: {victim.tail()}")
        os.killpg(victim.pid, signal.SIGKILL)  # its session: the server and its workers
        killed = time.monotonic()
        held = _held(args.db, "A")  # what the kill left behind
        deadline = killed + args.lease + 60
        while _listo(args.db, held) < len(held):
            if time.monotonic() > deadline:
                raise BenchError(f"failover: {held} not listo within {args.lease + 60:g} s: {nodes.tail()}")
            time.sleep(POLL_S)
        took = time.monotonic() - killed
    rows["failover"] = {"took_s": took, "handed_back": len(held), "lease": args.lease, "nodes": count}


def _held(url: str, nodo: str) -> list[int]:
    query = "SELECT id FROM pedidos WHERE estado = %s AND nodo = %s"
    with pgdb.connect(url) as conn:
        return [r[0] for r in conn.execute(query, (Estado.EN_PROCESO.value, nodo)).fetchall()]


def _listo(url: str, ids: list[int]) -> int:
    query = "SELECT count(*) FROM pedidos WHERE estado = %s AND id = ANY(%s)"
    with pgdb.connect(url) as conn:
        return conn.execute(query, (Estado.LISTO.value, ids)).fetchone()[0]  # type: ignore[index]


def esperar_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    """Orders sent to node A, `esperar` on A and on B at once (one worker each,
    work time 0.2 s): whichever node finishes an order, the other one's reply is
    the cross-node one. Its latency: from the finish's commit (`fecha_fin`, the
    database's clock) to the reply's arrival (this machine's clock)."""
    latencies = []
    with Nodes(args, tmp, "esperar", "AB", f"{ESPERAR_WORK_S:g}", "--workers", "1") as nodes:
        lines = [_Line(port) for port in nodes.port]
        try:
            for _ in range(args.samples):
                lines[0].send(ORDER)
                placed = lines[0].read()
                if not placed.get("ok"):
                    raise BenchError(f"esperar: order refused: {placed}")
                for line in lines:
                    line.send({"accion": "esperar", "id": placed["id"], "timeout": 10})
                replies = _both(lines)
                finished_on = replies[0][0].get("pedido", {}).get("nodo")
                reply, at = replies[1 if finished_on == "A" else 0]
                if not reply.get("ok") or reply["pedido"]["estado"] != Estado.LISTO.value:
                    raise BenchError(f"esperar: {reply}")
                latencies.append(at - datetime.fromisoformat(reply["pedido"]["fecha_fin"]).timestamp())
        finally:
            for line in lines:
                line.close()
    ordered = sorted(latencies)
    rows["esperar"] = {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * percentile(ordered, 0.99),
        "samples": len(ordered),
    }


class _Line:
    """One connection to a node, greeted; JSON lines out, JSON lines in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.read()  # the greeting

    def send(self, request: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(request).encode() + b"\n")

    def ready(self) -> Any:
        """A whole line already received, or None (reads what is there, once)."""
        if b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise BenchError("a node closed its connection")
            self.buf += data
        return self._take() if b"\n" in self.buf else None

    def read(self) -> Any:
        while (reply := self.ready()) is None:
            pass
        return reply

    def _take(self) -> Any:
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line) if line else {}

    def close(self) -> None:
        self.sock.close()


def _both(lines: list[_Line], timeout: float = 30.0) -> list[tuple[dict[str, Any], float]]:
    """One reply from each connection, each with the time it arrived."""
    got: dict[int, tuple[dict[str, Any], float]] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(lines):
        waiting = [line for i, line in enumerate(lines) if i not in got]
        readable, _, _ = select.select(
            [line.sock for line in waiting], [], [], max(0, deadline - time.monotonic())
        )
        if not readable:
            raise BenchError("esperar: no reply within 30 s")
        now = time.time()
        for i, line in enumerate(lines):
            if i not in got and line.sock in readable:
                reply = line.ready()
                if reply is not None:
                    got[i] = (reply, now)
    return [got[i] for i in range(len(lines))]


def _names(count: int) -> str:
    return string.ascii_uppercase[:count]
