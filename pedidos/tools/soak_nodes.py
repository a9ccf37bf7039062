"""The soak test on many nodes sharing one PostgreSQL database.

    python3 -m pedidos.soak --db postgresql://... --nodos 3 --minutes 10 [--reiniciar-pg CMD]

The same load, audit and closing line as the single-server soak (soak.py),
with these differences: clients spread their connections over every node;
the chaos kills workers of any node, kills (-9) or stops (SIGTERM) a node and
starts it again, and, with `--reiniciar-pg`, now and then runs that shell
command to restart PostgreSQL itself (for example `pg_ctl -D DIR -m immediate
restart`). Nodes run with a short lease, so that a killed node's orders move
on within seconds. The table is emptied first: give it a database of its own.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pedidos.client.blocking import Client
from pedidos.tools import soak
from pedidos.tools.procs import child_env, kill, spawned_children
from pedidos.tools.soak import FAILURES, Soak

LEASE_S = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NodesSoak(Soak):
    def __init__(self, args: object, folder: Path) -> None:
        super().__init__(args, folder)  # type: ignore[arg-type]
        self.url: str = self.args.db
        self.ports = [_free_port() for _ in range(self.args.nodos)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * self.args.nodos
        self.kills["postgresql"] = 0
        _empty(self.url)

    # --- one node -----------------------------------------------------------------

    def start_node(self, n: int, work_time: str) -> None:
        command = [sys.executable, "-m", "pedidos", "--db", self.url, "--host", "127.0.0.1"]
        command += ["--port", str(self.ports[n]), "--nodo", f"soak-{n}", "--lease", str(LEASE_S)]
        command += ["--workers", str(self.args.workers), "--work-time", work_time]
        proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=child_env())
        self.procs[n] = proc
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(*FAILURES):
                if self.ask_node(n, {"accion": "estadisticas"}).get("ok"):
                    self.workers_seen.update(spawned_children(proc.pid))
                    return
            time.sleep(0.1)
        raise SystemExit(f"soak: node {n} did not start; see {self.log.name}")

    def ask_node(self, n: int, request: dict) -> dict:
        client = Client("127.0.0.1", self.ports[n], timeout=15)
        try:
            client.connect()
            return client.request(request)
        finally:
            client.close()

    def stop_node(self, n: int, sig: int) -> None:
        self.proc = self.procs[n]
        self.kill_server(sig)  # the single-server soak's stop, with its checks
        self.procs[n] = None

    # --- what the base class calls --------------------------------------------------

    def start(self, work_time: str) -> None:
        for n in range(len(self.procs)):
            if self.procs[n] is None:
                self.start_node(n, work_time)
        self.proc = self.procs[0]

    def ask(self, request: dict) -> dict:
        live = [n for n, proc in enumerate(self.procs) if proc is not None]
        return self.ask_node(random.choice(live), request)

    def chaos(self) -> None:
        while not self.stop.wait(self.rng.uniform(2, 6)):
            n = self.rng.randrange(len(self.procs))
            proc, roll = self.procs[n], self.rng.random()
            if proc is None:
                continue
            if roll < 0.5:
                workers = spawned_children(proc.pid)
                self.workers_seen.update(workers)
                if workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.rng.choice(workers)[0], signal.SIGKILL)
                    self.kills["child"] += 1
            elif roll < 0.85 or not self.args.reiniciar_pg:
                sig = signal.SIGKILL if roll < 0.7 else signal.SIGTERM
                self.stop_node(n, sig)
                self.kills["server" if sig == signal.SIGKILL else "sigterm"] += 1
                try:
                    self.start_node(n, self.args.work_time)
                except SystemExit as exc:
                    self.problems.append(str(exc))
                    self.stop.set()
            else:
                if not self.restart_pg():
                    self.stop.set()
                self.kills["postgresql"] += 1

    def restart_pg(self) -> bool:
        """Run `--reiniciar-pg`; False (and a problem noted) if it failed.
        Its output goes to a file, not a pipe: a postmaster started without
        `-l` keeps its parent's output open, and reading a pipe to its end
        waited for the postmaster to exit (the command's timeout, and the
        chaos thread gone with a traceback, the soak none the wiser)."""
        with tempfile.TemporaryFile() as out:
            try:
                done = subprocess.run(
                    self.args.reiniciar_pg, shell=True, stdout=out, stderr=out, timeout=120, check=False
                )
            except subprocess.TimeoutExpired:
                self.problems.append("--reiniciar-pg did not end within 120 s")
                return False
            if done.returncode != 0:
                out.seek(0)
                tail = out.read()[-200:].decode(errors="replace")
                self.problems.append(f"--reiniciar-pg failed (exit {done.returncode}): {tail!r}")
                return False
        return True

    def client(self, n: int) -> None:
        rng, count = random.Random(f"{self.args.seed}-{n}"), 0
        conn, connected = None, False
        while not self.stop.wait(rng.uniform(0, 0.01)):
            try:
                if not connected:
                    conn = Client("127.0.0.1", rng.choice(self.ports), timeout=15)
                    conn.connect()
                    connected = True
                count += 1
                self.step(conn, rng, f"soak-{n}-{count}")  # type: ignore[arg-type]
            except FAILURES:
                if conn is not None:
                    conn.close()
                connected = False
                self.stop.wait(rng.uniform(0.05, 0.3))
        if conn is not None:
            conn.close()

    def run(self) -> int:
        threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(4)]
        try:
            self.start(self.args.work_time)
            chaos = threading.Thread(target=self.chaos, daemon=True)
            for thread in [*threads, chaos]:
                thread.start()
            self.stop.wait(self.args.minutes * 60)
            self.stop.set()
            for thread in [*threads, chaos]:
                thread.join(180)
            for n in range(len(self.procs)):
                if self.procs[n] is not None:
                    self.stop_node(n, signal.SIGTERM)
            self.start_node(0, "0")  # one node drains the backlog, and reaps the others
            self.proc = self.procs[0]
            drained = self.drain(deadline=time.monotonic() + max(300.0, self.args.minutes * 60))
            self.stop_node(0, signal.SIGTERM)
            if not drained:
                self.problems.append("the backlog did not drain in time")
        finally:
            self.stop.set()
            for proc in self.procs:
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
            kill(list(self.workers_seen))
            self.log.close()
        self.db = self.url  # type: ignore[assignment]  # the audit reads it through the interface
        return self.audit()


def _empty(url: str) -> None:
    import psycopg  # the postgres extra: this tool runs only on PostgreSQL

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN IF to_regclass('pedidos') IS NOT NULL THEN "
            "TRUNCATE pedidos, nodos RESTART IDENTITY; END IF; END $$"
        )


def main(argv: list[str] | None = None) -> int:
    """`python3 -m pedidos.soak`: one server, or with `--db` many nodes."""
    return soak.main(argv, NodesSoak)


if __name__ == "__main__":
    sys.exit(main())
