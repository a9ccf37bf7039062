"""The benchmark's throughput scenarios on many nodes of one PostgreSQL database (`--db URL`).

Intake and end to end over `--nodos N` real servers (`python3 -m pedidos --nodo
A`, `B`, ...), the load generator spreading its connections over them, with the
CPU each order costs the nodes and PostgreSQL; and intake with NOTIFY hints
against `--sin-notify`. The timing of failover and of `esperar` across nodes is
in `pedidos.tools.pgtiming`.
"""

from __future__ import annotations

import argparse
import contextlib
import string
import sys
from pathlib import Path
from typing import Any

from pedidos.tools import pgdb, slices
from pedidos.tools.procs import Child, machine_times, stats, tree_cpu
from pedidos.tools.report import Row
from pedidos.tools.scenarios import e2e_figures, in_turns, measure, row_of, start_server, warm_up


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
                argv = ["-m", "pedidos", "--host", "127.0.0.1", "--port", "0", "--nodo", name]
                argv += ["--db", args.db]
                argv += ["--workers", str(args.workers), "--work-time", work_time]
                argv += ["--max-connections", "10000", "--shutdown-timeout", "10", "--sin-rapido", *options]
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


def node_window(nodes: Nodes, pg: pgdb.PgCpu, probe: Any = None, parts: int = 1) -> Any:
    """A `during` hook for `drive`: CPU over the window of the nodes (each one's
    whole process tree: server, workers), of PostgreSQL (None when not local),
    of the load and of the rest of the machine; `probe()` at both ends and at
    the boundaries of `parts` equal slices (`pedidos.tools.slices`)."""
    roots = [child.pid for child in nodes.children]

    def snapshot(load: list[int]) -> dict[str, float | None]:
        busy, stolen = machine_times()
        return {"nodes": tree_cpu(roots), "pg": pg(), "load": tree_cpu(load), "busy": busy, "steal": stolen}

    def during(start: float, end: float, pids: list[int]) -> dict[str, Any]:
        before, after, seconds, samples = slices.run_window(start, end, parts, lambda: snapshot(pids), probe)
        used = {k: None if after[k] is None else after[k] - before[k] for k in before}  # type: ignore[operator]
        measured = [v for k, v in used.items() if k not in ("busy", "steal") and v]
        other = used["busy"] - sum(measured)  # type: ignore[operator,arg-type]
        cpu = {k: round(100 * v / seconds) for k, v in used.items() if k != "busy" and v is not None}
        cpu["other"] = max(0, round(100 * other / seconds))
        return {"cpu": cpu, "cpu_s": used, "samples": samples, "start": start, "end": end}

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
    with Nodes(args, tmp, "intake", names(args.nodos), "1") as nodes:
        for kind, pipelined in (("rr", False), ("pipe", True)):
            result = measure(args, nodes, pipelined, during=node_window(nodes, pg))
            rows[f"intake_{kind}"] = row_of(result, nodes=args.nodos, **_per_order(result))
    rows.update(pgdb.limit_rows(args.db, args.seconds, pg))


def e2e_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    pg = pgdb.PgCpu(args.db)
    with Nodes(args, tmp, "e2e", names(args.nodos), "0") as nodes:
        port = nodes.port[0]  # estadisticas counts the whole service on any node
        with contextlib.ExitStack() as stack:
            probe = lambda: slices.counts(stats(port))  # noqa: E731
            if args.slices:  # and the table's dead tuples, over a connection of the bench's own
                conn = stack.enter_context(pgdb.connect(args.db))
                probe = lambda: {**slices.counts(stats(port)), **slices.table_stats(conn)}  # noqa: E731
            result = measure(args, nodes, False, during=node_window(nodes, pg, probe, args.slices or 1))
        rows["e2e"] = e2e_figures(args, port, result, nodes=args.nodos, **_per_order(result))


def notify_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    """Request/response intake on node N (NOTIFY hints) and node S (`--sin-notify`),
    side by side on one database, measured in turn (`in_turns`)."""
    pg = pgdb.PgCpu(args.db)
    with Nodes(args, tmp, "notify", "NS", "1", extra={"S": ["--sin-notify"]}) as nodes:
        hints, polls = nodes.children
        turns, figures = in_turns(
            lambda: measure(args, hints, False, during=node_window(nodes, pg)),
            lambda: measure(args, polls, False, during=node_window(nodes, pg)),
        )
    pg_us = [_per_order(t)["us_pg"] for t in turns]
    row = row_of(turns[0], rate=figures["rate"], sin_rate=figures["other_rate"], ratio=figures["ratio"])
    row["spread"] = figures["spread"]
    if None not in pg_us:
        row.update(us_pg=(pg_us[0] + pg_us[3]) / 2, sin_us_pg=(pg_us[1] + pg_us[2]) / 2)
    rows["notify"] = row


def sqlite_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    """Request/response intake on one node of the database and on one server on a
    SQLite file, side by side, measured in turn (`in_turns`): the two backends'
    ratio from the same minutes of the same machine, with the CPU each order
    costs the node's event loop and the SQLite server's."""
    pg = pgdb.PgCpu(args.db)
    server = start_server(args, tmp, "versus-sqlite", "1", sqlite=True)
    try:
        with Nodes(args, tmp, "versus", "A", "1") as nodes:
            warm_up(args, nodes)  # the SQLite server was, as it started
            turns, figures = in_turns(
                lambda: measure(args, nodes, False, during=node_window(nodes, pg)),
                lambda: measure(args, server, False),
            )
    finally:
        server.stop()
    node_us = [_per_order(t)["us_node"] for t in (turns[0], turns[3])]
    sqlite_us = [_sqlite_us(t) for t in (turns[1], turns[2])]
    row = row_of(turns[0], rate=figures["rate"], sqlite_rate=figures["other_rate"], ratio=figures["ratio"])
    row.update(spread=figures["spread"], us_node=sum(node_us) / 2, sqlite_us=sum(sqlite_us) / 2)
    rows["sqlite"] = row


def _sqlite_us(result: dict[str, Any]) -> float:
    """µs of CPU per acknowledged order of a SQLite server: its whole tree."""
    cpu, rate = result["during"]["cpu"], result["rate"]
    used = sum(cpu[k] for k in ("loop", "threads", "writer", "workers"))
    return used * 1e4 / rate if rate else 0.0


def names(count: int) -> str:
    return string.ascii_uppercase[:count]
