"""The benchmark's timing scenarios on nodes of one PostgreSQL database (`--db URL`).

The failover time after a `kill -9` of a node holding orders, and the latency of
an `esperar` answered by a node other than the one that finished the order:
what section 9 of the contract promises, timed (the tests in
tests/test_pg_nodes.py check the same bounds once; this takes medians).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pedidos.domain import Estado
from pedidos.tools import pgdb
from pedidos.tools.drive import percentile
from pedidos.tools.load import BenchError
from pedidos.tools.pgnodes import Nodes, names
from pedidos.tools.procs import ask
from pedidos.tools.report import Row
from pedidos.tools.scenarios import ORDER

FAILOVER_NODES = 3  # when --nodos does not say more than one
FAILOVER_WORK_S = 1.0
ESPERAR_WORK_S = 0.2
POLL_S = 0.02  # how often the failover scenario looks at the table
KILL_AFTER_S = 0.3  # well within the work time: what A holds then is still en proceso at the kill


def failover_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    """`kill -9` of node A (server and workers) while its workers hold orders
    `en proceso` (work time 1 s): seconds until the last of those is `listo` on
    another node. One order per worker of the service, all sent to A."""
    count = args.nodos if args.nodos > 1 else FAILOVER_NODES
    work = f"{FAILOVER_WORK_S:g}"
    with (
        Nodes(args, tmp, "failover", names(count), work, "--lease", f"{args.lease:g}") as nodes,
        pgdb.connect(args.db) as conn,  # one connection for the polls: each new one costs a fork
    ):
        victim = nodes.children[0]
        ask(victim.port, [ORDER] * (args.workers * count))
        # The idle nodes hear of the orders too and take some: kill A once its
        # workers all hold one, or once it holds any for a while (work time 1 s).
        acked, deadline = time.monotonic(), time.monotonic() + 10
        while time.monotonic() < deadline:
            held = _held(conn, "A")
            if len(held) >= args.workers or (held and time.monotonic() - acked > KILL_AFTER_S):
                break
            time.sleep(POLL_S)
        os.killpg(victim.pid, signal.SIGKILL)  # its session: the server and its workers
        killed = time.monotonic()
        held = _held(conn, "A")  # what the kill left behind
        if not held:
            raise BenchError(f"failover: node A held no order when killed: {victim.tail()}")
        deadline = killed + args.lease + 60
        while _listo(conn, held) < len(held):
            if time.monotonic() > deadline:
                raise BenchError(f"failover: {held} not listo within {args.lease + 60:g} s: {nodes.tail()}")
            time.sleep(POLL_S)
        took = time.monotonic() - killed
    rows["failover"] = {"took_s": took, "handed_back": len(held), "lease": args.lease, "nodes": count}


def _held(conn: Any, nodo: str) -> list[int]:
    query = "SELECT id FROM pedidos WHERE estado = %s AND nodo = %s"
    return [r[0] for r in conn.execute(query, (Estado.EN_PROCESO.value, nodo)).fetchall()]


def _listo(conn: Any, ids: list[int]) -> int:
    query = "SELECT count(*) FROM pedidos WHERE estado = %s AND id = ANY(%s)"
    return conn.execute(query, (Estado.LISTO.value, ids)).fetchone()[0]  # type: ignore[no-any-return]


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
