"""Soak test: mixed load while workers, the writer and the server are killed, then an audit.

    python3 -m pedidos.soak --minutes 10 [--workers 2] [--seed S]
    python3 -m pedidos.soak --db postgresql://... --nodos 3 [--reiniciar-pg CMD]  (soak_nodes.py)

Client threads send orders (with and without `referencia`, and retries) and
commands to the real `servidor.py` while a chaos thread SIGKILLs its child
processes (the workers and the writer) and SIGKILLs or SIGTERMs the server
and restarts it. A last restart with `--work-time 0` drains the backlog; then
the database is checked against every acknowledgement and one line is
printed: `acknowledged N, lost 0, duplicated 0, stuck 0` (lost: an acked id
missing or holding another order; duplicated: a `referencia` stored twice or
acked under two ids; stuck: an acked order not final). Exit status 0 only if
all three are 0. Diagnostics go to stderr.
`--tarea pedidos.tools.soak_task:falla_a_veces`: a task failing at random.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pedidos.client.blocking import Client, ConnectionProblem, Refused
from pedidos.domain import FINAL_ESTADOS, MAX_ATTEMPTS, Estado
from pedidos.protocol.replies import ERROR_INTERNO, NO_ENCONTRADO, SERVIDOR_OCUPADO
from pedidos.storage import read_all_orders
from pedidos.tools.procs import Proc, alive, child_env, kill, spawned_children

ORPHAN_GRACE_S = 5.0
FAILURES = (ConnectionProblem, Refused, OSError, ValueError, KeyError)


class Soak:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.db = folder / "soak.db"
        self.log = open(folder / "server.log", "ab")  # noqa: SIM115 (closed in run())
        with socket.socket() as sock:  # a free port, kept across restarts
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.guard = threading.Lock()
        self.stop = threading.Event()
        self.acked: dict[int, tuple[str, str | None]] = {}  # id -> (cliente, referencia)
        self.ack_list: list[int] = []
        self.ref_ids: dict[str, set[int]] = {}
        self.ref_list: list[str] = []
        self.unsettled: list[tuple[str, str]] = []  # (referencia, cliente) sent, outcome unknown
        self.lost_live: set[int] = set()  # acknowledged, then `no_encontrado`
        self.problems: list[str] = []  # reported on stderr
        self.workers_seen: set[Proc] = set()
        self.kills = {"child": 0, "server": 0, "sigterm": 0}

    def start(self, work_time: str) -> None:
        command = [sys.executable, "-m", "pedidos", "--db", str(self.db), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", str(self.args.workers)]
        if self.args.tarea:  # the task is the work
            command += ["--tarea", self.args.tarea, "--reintentos", "2", "--reintento-base", "0.05"]
        else:
            command += ["--work-time", work_time]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=child_env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(*FAILURES):
                if self.ask({"accion": "estadisticas"}).get("ok"):
                    self.workers_seen.update(spawned_children(self.proc.pid))
                    return
            time.sleep(0.1)
        raise SystemExit(f"soak: the server did not start; see {self.log.name}")

    def ask(self, request: dict) -> dict:
        """One request on a connection of its own."""
        client = Client("127.0.0.1", self.port, timeout=15)
        try:
            client.connect()
            return client.request(request)
        finally:
            client.close()

    def kill_server(self, sig: int) -> None:
        assert self.proc is not None
        workers = spawned_children(self.proc.pid)
        self.workers_seen.update(workers)
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.problems.append("the server did not stop within 90 s of SIGTERM")
            self.proc.kill()
            code = self.proc.wait()
        if sig == signal.SIGTERM and code != 0:
            self.problems.append(f"SIGTERM: exit status {code}")
        if sig == signal.SIGKILL:  # its workers must notice and exit by themselves
            threading.Timer(ORPHAN_GRACE_S, self.reap, (workers,)).start()

    def reap(self, workers: list[Proc]) -> None:
        left = [proc for proc in workers if alive(proc)]
        if left:
            self.problems.append(f"{len(left)} children outlived their server by {ORPHAN_GRACE_S:g} s")
            kill(left)

    def chaos(self) -> None:
        while self.proc is not None and not self.stop.wait(self.rng.uniform(2, 6)):
            roll = self.rng.random()
            if roll < 0.6:
                workers = spawned_children(self.proc.pid)
                self.workers_seen.update(workers)
                if workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.rng.choice(workers)[0], signal.SIGKILL)
                    self.kills["child"] += 1
            else:
                sig = signal.SIGKILL if roll < 0.82 else signal.SIGTERM
                self.kill_server(sig)
                self.kills["server" if sig == signal.SIGKILL else "sigterm"] += 1
                try:
                    self.start(self.args.work_time)
                except SystemExit as exc:
                    self.problems.append(str(exc))
                    self.stop.set()

    def client(self, n: int) -> None:
        rng, count = random.Random(f"{self.args.seed}-{n}"), 0
        conn, connected = Client("127.0.0.1", self.port, timeout=15), False
        while not self.stop.wait(rng.uniform(0, 0.01)):
            try:
                if not connected:
                    conn.connect()
                    connected = True
                count += 1
                self.step(conn, rng, f"soak-{n}-{count}")
            except FAILURES:
                conn.close()
                connected = False
                self.stop.wait(rng.uniform(0.05, 0.3))
        conn.close()

    def step(self, conn: Client, rng: random.Random, name: str) -> None:
        with self.guard:
            ids = self.ack_list and [rng.choice(self.ack_list[-2000:])]
            unsettled = self.unsettled.pop() if self.unsettled and rng.random() < 0.5 else None
            refs = self.ref_list[-500:]
        roll = rng.random()
        if unsettled is not None:  # the retry a careful client makes after a lost reply
            self.order(conn, unsettled[1], unsettled[0])
        elif roll < 0.4 or not ids:
            self.order(conn, name, None)
        elif roll < 0.7:
            self.order(conn, name, f"ref-{name}")
        elif roll < 0.78 and refs:
            ref = rng.choice(refs)
            with self.guard:
                cliente = self.acked[next(iter(self.ref_ids[ref]))][0]
            self.order(conn, cliente, ref)
        else:
            accion = rng.choice(["consultar", "consultar", "esperar", "cancelar"])
            extra = {"timeout": 1} if accion == "esperar" else {}
            reply = conn.request({"accion": accion, "id": ids[0], **extra})
            if reply.get("error") == NO_ENCONTRADO:
                with self.guard:
                    self.lost_live.add(ids[0])

    def order(self, conn: Client, cliente: str, ref: str | None) -> None:
        request = {"cliente": cliente, "productos": ["pan", "agua"], "direccion": "Calle Soak 1"}
        request.update({"referencia": ref} if ref is not None else {})
        reply: dict = {}
        try:
            reply = conn.request(request)
        finally:
            if reply.get("error") not in (None, ERROR_INTERNO, SERVIDOR_OCUPADO):
                self.problems.append(f"order refused: {reply}")
            if not reply.get("ok") and ref is not None:  # outcome unknown or refused: retry later
                with self.guard:
                    self.unsettled.append((ref, cliente))
        if not reply.get("ok"):
            return
        with self.guard:
            if reply["id"] not in self.acked:
                self.acked[reply["id"]] = (cliente, ref)
                self.ack_list.append(reply["id"])
            if ref is not None:
                if ref not in self.ref_ids:
                    self.ref_list.append(ref)
                self.ref_ids.setdefault(ref, set()).add(reply["id"])

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
                thread.join(120)
            self.kill_server(signal.SIGTERM)
            self.start("0")
            drained = self.drain(deadline=time.monotonic() + max(300.0, self.args.minutes * 60))
            self.kill_server(signal.SIGTERM)
            if not drained:
                self.problems.append("the backlog did not drain in time")
        finally:
            self.stop.set()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            kill(list(self.workers_seen))
            self.log.close()
        return self.audit()

    def drain(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            with contextlib.suppress(*FAILURES):
                estados = self.ask({"accion": "estadisticas"})["estados"]
                if estados[Estado.PENDIENTE] == 0 and estados[Estado.EN_PROCESO] == 0:
                    return True
            time.sleep(0.5)
        return False

    def audit(self) -> int:
        orders = read_all_orders(str(self.db))
        rows = {o["id"]: (o["cliente"], o["referencia"], o["estado"]) for o in orders}
        refs = collections.Counter(o["referencia"] for o in orders if o["referencia"] is not None)
        twice = sum(1 for n in refs.values() if n > 1)
        lost = {i for i, ack in self.acked.items() if rows.get(i, (None, None))[:2] != ack} | self.lost_live
        duplicated = twice + sum(1 for ids in self.ref_ids.values() if len(ids) > 1)
        stuck = sum(1 for i in self.acked if i in rows and rows[i][2] not in FINAL_ESTADOS)
        # A `fallido` order says why: its task's error, or as many crashes as allowed.
        short = {o["id"] for o in orders if o["intentos"] - o["fallos"] < MAX_ATTEMPTS and not o["error"]}
        unexplained = sorted(i for i in short if rows[i][2] == Estado.FALLIDO)
        if unexplained:
            self.problems.append(f"fallido with no error and too few crashes: {unexplained[:10]}")
        for problem in sorted(set(self.problems))[:20]:
            print(f"soak: {problem}", file=sys.stderr)
        print(f"soak: killed {self.kills} times", file=sys.stderr)
        print(f"acknowledged {len(self.acked)}, lost {len(lost)}, duplicated {duplicated}, stuck {stuck}")
        return 0 if not (lost or duplicated or stuck or self.problems) else 1


def main(argv: list[str] | None = None, nodes_soak: type[Soak] | None = None) -> int:
    """`nodes_soak`: the class that runs `--db` (soak_nodes.py passes it: this
    module does not import that one, which builds on it)."""
    parser = argparse.ArgumentParser(prog="python3 -m pedidos.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the chaos lasts (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    parser.add_argument("--work-time", default="0-0.05", help="--work-time during the chaos (default 0-0.05)")
    parser.add_argument("--tarea", metavar="MODULO:FUNCION", help="the server's --tarea (default: none)")
    parser.add_argument("--db", metavar="URL", help="a postgresql:// database of its own for many nodes")
    parser.add_argument("--nodos", type=int, default=3, help="with --db: nodes sharing it (default 3)")
    parser.add_argument(
        "--reiniciar-pg",
        metavar="CMD",
        help="with --db: a shell command that restarts PostgreSQL, run now and then",
    )
    args = parser.parse_args(argv)
    if args.db and nodes_soak is None:
        parser.error("--db: run it as python3 -m pedidos.soak")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    print(f"soak: seed {args.seed}", file=sys.stderr)
    folder = Path(tempfile.mkdtemp(prefix="pedidos-soak-"))
    code = (nodes_soak if args.db else Soak)(args, folder).run()  # type: ignore[misc]
    if code != 0:
        print(f"soak: database and server log kept in {folder}", file=sys.stderr)
    else:
        shutil.rmtree(folder)
    return code


if __name__ == "__main__":
    sys.exit(main())
