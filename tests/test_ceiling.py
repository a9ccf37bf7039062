"""`python3 -m pedidos.tools.ceiling`: the two simplest Python intakes on SQLite,
measured beside Redis and pedidos. A model that acked before its commit would be a
flattering ceiling, so each is checked to store what it acks; no speed is asserted."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import assert_nothing_left, marked_processes, stop_tool, wait_for

from pedidos.tools import ceiling
from pedidos.tools.load import BenchError
from pedidos.tools.procs import Child
from pedidos.tools.scenarios import LINE

ROOT = Path(__file__).resolve().parent.parent


def _lines(sock: socket.socket, count: int) -> list[dict]:
    got = b""
    sock.settimeout(20)
    while got.count(b"\n") < count:
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    return [json.loads(line) for line in got.splitlines()]


@pytest.mark.parametrize("kind", ["loop", "writer"])
def test_a_model_acks_only_orders_it_stored_and_refuses_a_bad_one(kind, tmp_path):
    db = tmp_path / "model.db"
    child = Child(["-m", "pedidos.tools.ceiling", "serve", kind, str(db)], tmp_path / "model.log")
    try:
        with socket.create_connection(("127.0.0.1", child.port)) as sock:
            sock.sendall(LINE * 3)  # one read, one batch
            first = _lines(sock, 3)
            sock.sendall(b'{"cliente": 7, "productos": [], "direccion": "x"}\n' + LINE)
            second = _lines(sock, 2)
            # While another connection holds the write lock, the model cannot commit:
            # no ack may come until it is released.
            hold = sqlite3.connect(db, isolation_level=None)
            hold.execute("BEGIN IMMEDIATE")
            sock.sendall(LINE)
            sock.settimeout(0.5)
            with pytest.raises(socket.timeout):
                sock.recv(65536)
            hold.execute("COMMIT")
            hold.close()
            third = _lines(sock, 1)
    finally:
        assert child.stop() == 0
    assert all(reply["ok"] for reply in first) and second[0] == {"ok": False} and second[1]["ok"]
    acked = [reply["id"] for reply in first + second[1:] + third]
    assert acked == [1, 2, 3, 4, 5]
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT id, cliente, productos, estado FROM pedidos ORDER BY id").fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    order = json.loads(LINE)
    assert stored == [(i, order["cliente"], json.dumps(order["productos"]), "pendiente") for i in acked]


def _ceiling(marker: str, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pedidos.tools.ceiling", *args],
        cwd=ROOT,
        env={**os.environ, "PEDIDOS_BENCH_TEST": marker, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_stops_the_servers_and_the_load_and_says_so_in_one_line(tmp_path):
    marker = f"ceiling-{uuid.uuid4()}"
    run = _ceiling(marker, tmp_path, "--seconds", "60", "--quiet-wait", "0", "--connections", "5")
    try:
        wait_for(lambda: "loadgen" in " ".join(marked_processes(marker).values()), timeout=60)  # load runs
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == 130 and stderr.strip() == "ceiling: interrupted", stderr
    finally:
        stop_tool(run)
        assert_nothing_left(marker)
    assert list(tmp_path.iterdir()) == []


def test_a_tiny_run_reports_every_row_beside_redis_and_leaves_nothing(tmp_path):
    marker = f"ceiling-{uuid.uuid4()}"
    tiny = ["--runs", "1", "--seconds", "0.3", "--warm", "0.1", "--quiet-wait", "0", "--connections", "5"]
    tiny += ["--pipeline-conns", "2", "--depth", "5", "--load-procs", "1"]
    run = _ceiling(marker, tmp_path, *tiny)
    try:
        stdout, stderr = run.communicate(timeout=180)
    finally:
        stop_tool(run)
        assert_nothing_left(marker)
    assert run.returncode == 0, stderr
    # Its databases and Redis's files go with it (a run of three left 4 GB in /tmp).
    assert list(tmp_path.iterdir()) == []
    rows = {line.split(" | ")[0].lstrip("| "): line for line in stdout.splitlines()[2:]}
    names = ["model: commit in the loop", "model: writer process", "pedidos"]
    names += [name + ", uvloop" for name in names]  # [test] installs the rapido extra
    assert set(rows) == {"Redis RPUSH, fsync always", *names}, stdout
    assert rows["Redis RPUSH, fsync always"].split(" | ")[2] == "1.00"
    for name in names:
        rate, ratio = rows[name].split(" | ")[1:3]
        assert float(rate.split()[0].replace(",", "")) > 0 and float(ratio) > 0, rows[name]


def test_a_redis_that_answers_errors_stops_the_run(redis_answering_errors, monkeypatch, tmp_path):
    # The generator counts Redis's replies without reading them: an error per RPUSH
    # would be a row of replies/s, and every ratio wrong.
    monkeypatch.setattr(ceiling, "_rows", lambda: [("Redis RPUSH, fsync always", "redis", False)])
    shape = {"connections": 5, "pipeline_conns": 2, "depth": 5, "load_procs": 1, "generator": "c"}
    args = argparse.Namespace(runs=1, seconds=0.2, warm=0.05, quiet_wait=0, **shape)
    with pytest.raises(BenchError, match=r"error replies .*WRONGTYPE"):
        ceiling._run(args, tmp_path)
