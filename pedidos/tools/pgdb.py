"""The benchmark's PostgreSQL side: an empty table before each scenario, the
server's own CPU (its postmaster's process tree) when it runs on this machine,
and the database's own limit from a bare script.

psycopg is the `postgres` extra: imported only when `--db` names PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pedidos.extras import install_hint
from pedidos.tools.load import BenchError
from pedidos.tools.procs import tree_cpu

LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}
LIMIT_BATCHES = (1, 100)  # rows per commit of the bare script's rows


def connect(url: str) -> Any:
    try:
        import psycopg
    except ImportError:
        raise BenchError(f"--db postgresql://... needs psycopg: {install_hint('postgres')}") from None
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:  # unreachable, or a bad URL; the message never holds a password
        raise BenchError(f"cannot reach the database: {str(exc).strip()}") from None


def empty(url: str) -> None:
    """Every scenario starts from an empty table, ids from 1, no node registered."""
    with connect(url) as conn:
        conn.execute(
            "DO $$ BEGIN IF to_regclass('pedidos') IS NOT NULL THEN "
            "TRUNCATE pedidos, nodos RESTART IDENTITY; END IF; END $$"
        )


def postmaster_pid(url: str) -> int | None:
    """The pid of the PostgreSQL server behind `url` when it runs on this machine
    (a loopback host or a Unix socket): the parent of this connection's backend.
    None for a remote server, or one this process cannot see (another container)."""
    try:
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # connect() says what to install
        return None
    try:
        hosts = str(conninfo_to_dict(url).get("host") or "").split(",")
    except Error:  # connect() says what is wrong with the URL
        return None
    if not all(h in LOCAL_HOSTS or h.startswith("/") for h in hosts):
        return None
    with connect(url) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        try:
            parent = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
            name = Path(f"/proc/{parent}/comm").read_text().strip()
        except (OSError, IndexError, ValueError):
            return None
    return parent if name in ("postgres", "postmaster") else None


class PgCpu:
    """CPU seconds of the PostgreSQL server (the postmaster and all its
    children: backends, WAL writer, checkpointer, autovacuum), or None when it
    is not local. The whole cluster: run the benchmark against a quiet one."""

    def __init__(self, url: str | None) -> None:
        self.pid = postmaster_pid(url) if url else None

    def __call__(self) -> float | None:
        return tree_cpu([self.pid]) if self.pid else None


def per_order_us(cpu_s: float | None, orders: float) -> float | None:
    return None if cpu_s is None or orders <= 0 else 1e6 * cpu_s / orders


def limit_rows(url: str, seconds: float, pg: PgCpu) -> dict[str, dict[str, Any]]:
    """The database's own limit: the node's intake statement (`sql.INSERT`) from
    one client and no server, `batch` rows per commit (`synchronous_commit` on),
    for `seconds` each. Rows/s, this client's CPU per row, PostgreSQL's."""
    from pedidos.storage.postgres import sql
    from pedidos.storage.postgres.intake import batch_document

    empty(url)
    rows = {}
    with connect(url) as conn:
        conn.execute("SET synchronous_commit = on")
        for batch in LIMIT_BATCHES:
            orders = [("Banco de pruebas", ("pan", "agua"), "Av. Siempre Viva 742", None)] * batch
            stored, began, pg_before = 0, time.perf_counter(), pg()
            cpu_before = time.process_time()
            while time.perf_counter() - began < seconds:
                # The document is built anew each time, as the node builds each batch's.
                params = (batch_document(orders, [None] * batch),)
                stored += len(conn.execute(sql.INSERT, params).fetchone()[0])  # type: ignore[index]
            took = time.perf_counter() - began
            client, pg_after = time.process_time() - cpu_before, pg()
            pg_s = None if pg_before is None or pg_after is None else pg_after - pg_before
            rows[f"dblimit_{batch}"] = {
                "rate": stored / took,
                "batch": batch,
                "client_us": per_order_us(client, stored),
                "pg_us": per_order_us(pg_s, stored),
            }
    empty(url)
    return rows
