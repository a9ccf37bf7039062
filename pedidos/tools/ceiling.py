"""How fast can any Python order server on SQLite take orders here? The two
simplest designs, measured beside Redis and pedidos in one run.

    python3 -m pedidos.tools.ceiling [--runs 2] [--seconds 5]

Issue 15 asks for request/response intake at least as fast as Redis with
`appendfsync always`. Its author's probe of Redis's own model (one process, an
`asyncio.Protocol`, minimal validation, one `executemany` + `COMMIT` in the
loop's thread per loop iteration) had reached 0.75-0.85x Redis under a load
generator that capped Redis at ~32k/s. This module serves that model (`loop`)
and the same with the commit in a second process (`writer`, as pedidos does),
each on the standard library's loop and, when installed, on uvloop, and drives
them, Redis and pedidos with the benchmark's own generator (which
`python3 -m pedidos.bench` shows is not their ceiling). The models keep only
what a durable intake cannot drop: a JSON parse, three fields checked, a row in
the contract's table with pedidos's indexes (`synchronous=FULL`, WAL), and the
ack after the commit. No greeting, no framing limits, no order of replies
across batches, no statistics: an upper bound, not a server.

A model server alone: `python3 -m pedidos.tools.ceiling serve loop|writer DB [--uvloop]`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pickle
import signal
import sqlite3
import statistics
import struct
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pedidos.server import rapido
from pedidos.storage.sqlite.rows import SCHEMA
from pedidos.tools import redis
from pedidos.tools.load import BenchError
from pedidos.tools.procs import Child
from pedidos.tools.scenarios import LINE, measure, start_server, warm_up

COLUMNS = "id, cliente, productos, direccion, referencia, estado, fecha_recibido"
INSERT = f"INSERT INTO pedidos ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
COUNT = struct.Struct("<I")  # a batch's length down the pipe; a count of batches committed back
ACK = b'{"ok": true, "id": %d}\n'


def _open(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def _commit(db: sqlite3.Connection, batches: list[list[tuple]]) -> None:
    db.execute("BEGIN IMMEDIATE")
    for rows in batches:
        db.executemany(INSERT, rows)
    db.execute("COMMIT")


class Intake(asyncio.Protocol):
    """Parse, check three fields, queue the row with its id; the model commits
    once per loop iteration (`flush`, scheduled by the first order of one)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        now = datetime.now(timezone.utc).isoformat()
        model = self.model
        first = model.next_id
        for line in lines:
            order = json.loads(line)
            c, p, d = order.get("cliente"), order.get("productos"), order.get("direccion")
            if not (isinstance(c, str) and isinstance(p, list) and isinstance(d, str)):
                self.transport.write(b'{"ok": false}\n')
                continue
            model.rows.append((model.next_id, c, json.dumps(p), d, order.get("referencia"), "pendiente", now))
            model.next_id += 1
        if model.next_id > first:
            model.waiting.append((self.transport, first, model.next_id))
            if not model.scheduled:
                model.scheduled = True
                asyncio.get_running_loop().call_soon(model.flush)


class Model:
    """`loop`: the commit in the loop's thread, which waits for its fsync."""

    def __init__(self, path: str) -> None:
        self.db = _open(path)
        self.next_id = (self.db.execute("SELECT max(id) FROM pedidos").fetchone()[0] or 0) + 1
        self.rows: list[tuple] = []
        self.waiting: list[tuple[Any, int, int]] = []
        self.scheduled = False

    def take(self) -> tuple[list[tuple], list[tuple[Any, int, int]]]:
        self.scheduled = False
        taken = self.rows, self.waiting
        self.rows, self.waiting = [], []
        return taken

    def flush(self) -> None:
        rows, waiting = self.take()
        _commit(self.db, [rows])
        self.answer(waiting)

    @staticmethod
    def answer(waiting: list[tuple[Any, int, int]]) -> None:
        for transport, first, end in waiting:
            transport.write(b"".join([ACK % i for i in range(first, end)]))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass


class WriterModel(Model):
    """`writer`: each batch pickled down a pipe to a forked process that commits every
    batch waiting in one transaction and answers with how many it committed."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.db.close()
        down_r, self.down = os.pipe()
        self.up, up_w = os.pipe()
        if os.fork() == 0:
            os.close(self.down)
            os.close(self.up)
            _writer(path, down_r, up_w)
        os.close(down_r)
        os.close(up_w)
        self.pending: collections.deque[list[tuple[Any, int, int]]] = collections.deque()
        self.got = b""

    def flush(self) -> None:
        rows, waiting = self.take()
        data = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
        os.write(self.down, COUNT.pack(len(data)) + data)  # may block: a probe, not a server
        self.pending.append(waiting)

    def committed(self) -> None:
        got = os.read(self.up, 65536)
        if not got:  # the writer is gone: no ack can come, and a probe has nothing to recover
            os._exit(1)
        self.got += got
        whole = len(self.got) // COUNT.size * COUNT.size
        for (count,) in COUNT.iter_unpack(self.got[:whole]):
            for _ in range(count):
                self.answer(self.pending.popleft())
        self.got = self.got[whole:]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.up, self.committed)


def _writer(path: str, down: int, up: int) -> None:
    db = _open(path)
    buf = b""
    while chunk := os.read(down, 1 << 20):
        buf += chunk
        batches = []
        while len(buf) >= COUNT.size and len(buf) >= COUNT.size + COUNT.unpack_from(buf)[0]:
            end = COUNT.size + COUNT.unpack_from(buf)[0]
            batches.append(pickle.loads(buf[COUNT.size : end]))
            buf = buf[end:]
        if batches:
            _commit(db, batches)
            os.write(up, COUNT.pack(len(batches)))
    os._exit(0)


async def _serve(model: Model) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    model.start(loop)
    server = await loop.create_server(lambda: Intake(model), "127.0.0.1", 0, backlog=4096)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()


def serve(kind: str, path: str, uvloop: bool) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
    model = WriterModel(path) if kind == "writer" else Model(path)
    rapido.run(_serve(model), uvloop)
    os._exit(0)  # the writer sees its pipe close and exits


# --- the run -----------------------------------------------------------------


def _rows() -> list[tuple[str, str, bool]]:
    """(row name, what to start, on uvloop) in the order they run."""
    loops = [False, True] if rapido.installed() else [False]
    rows = [("Redis RPUSH, fsync always", "redis", False)] if redis.available() else []
    for kind, name in (("loop", "model: commit in the loop"), ("writer", "model: writer process")):
        rows += [(name + (", uvloop" if uv else ""), kind, uv) for uv in loops]
    return rows + [("pedidos" + (", uvloop" if uv else ""), "pedidos", uv) for uv in loops]


def _start(args: argparse.Namespace, tmp: Path, what: str, uvloop: bool, n: int) -> tuple[Child, bytes, bool]:
    """The server, the line to send it, and whether it greets."""
    if what == "redis":
        return redis.start(tmp), redis.rpush(LINE), False
    if what == "pedidos":
        return start_server(args, tmp, f"pedidos-{n}", "1", uvloop=uvloop, warm=False), LINE, True
    argv = ["-m", "pedidos.tools.ceiling", "serve", what, str(tmp / f"{what}-{n}.db")]
    return Child(argv + (["--uvloop"] if uvloop else []), tmp / f"{what}-{n}.log"), LINE, False


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    # The databases and Redis's append-only files of every row and run: gigabytes
    # after a few runs, deleted with the folder as the benchmark's are.
    with tempfile.TemporaryDirectory(prefix="pedidos-ceiling-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {}
    for n in range(args.runs):
        for name, what, uvloop in _rows():
            child, line, greets = _start(args, tmp, what, uvloop, n)
            try:
                warm_up(args, child, line, greeting=greets)
                for kind, pipelined in (("rr", False), ("pipe", True)):
                    # Redis answers RESP, not {"ok": true}: its replies are counted, not checked.
                    result = measure(args, child, pipelined, line, greeting=greets, check=what != "redis")
                    if result["bad"] or result["lost"]:
                        raise BenchError(f"{name}: {result['bad']} bad replies, {result['lost']} lost")
                    row = figures.setdefault(name, {})
                    row.setdefault(kind, []).append(result["rate"])
                    cpu = result["during"]["cpu"]
                    row.setdefault(f"{kind}_cpu", []).append(cpu["loop"] + cpu["threads"])
                    row.setdefault(f"{kind}_writer", []).append(cpu["writer"] + cpu["workers"])
                    row.setdefault(f"{kind}_load", []).append(cpu["load"])
                if what == "redis":
                    redis.check(child)  # fsync always, and no error counted as a reply
            finally:
                child.stop()
    return figures


def table(figures: dict[str, dict[str, list[float]]]) -> str:
    redis_row = figures.get("Redis RPUSH, fsync always")
    lines = [
        "| server | req/resp per s | / Redis | pipelined per s | / Redis | CPU % r/r: loop/writer/load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in figures.items():
        cells = [name]
        for kind in ("rr", "pipe"):
            rate = statistics.median(row[kind])
            runs = ", ".join(f"{r:,.0f}" for r in row[kind])
            cells.append(f"{rate:,.0f} ({runs})")
            cells.append(f"{rate / statistics.median(redis_row[kind]):.2f}" if redis_row else "")
        parts = [statistics.median(row[f"rr_{p}"]) for p in ("cpu", "writer", "load")]
        cells.append("/".join(f"{p:.0f}" for p in parts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m pedidos.tools.ceiling", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("serve", help="serve one model")
    one.add_argument("kind", choices=["loop", "writer"])
    one.add_argument("db")
    one.add_argument("--uvloop", action="store_true")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warm", type=float, default=1)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--pipeline-conns", type=int, default=4)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--generator", choices=["c", "python"], default="c")
    parser.add_argument("--quiet-wait", type=float, default=20)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.kind, args.db, args.uvloop)
        return 0
    args.workers, args.db, args.verbose = 2, None, False  # what start_server reads
    if not redis.available():
        print("redis: skipped: redis-server not installed (apt-get install -y redis-server)", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: every child is stopped
    try:
        print(table(run(args)))
    except BenchError as exc:  # a server that did not start, replies that were not acks
        print(f"ceiling: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ceiling: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
