"""Shared test harness: the real `servidor.py` as a subprocess, on loopback.

Every server a test starts is stopped by its own pid (SIGTERM, then SIGKILL
after a deadline), and its workers are checked to be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pedidos.domain import NewOrder, Receipt
from pedidos.storage import open_storage, read_all_orders
from pedidos.storage.base import Recovery, Storage, WorkerStore

# The throwaway PostgreSQL cluster and its fixtures (pg_databases, pg_url, pg_cluster).
pytest_plugins = ("pgcluster",)

ROOT = Path(__file__).resolve().parent.parent
SERVIDOR = ROOT / "servidor.py"
CLIENTE = ROOT / "cliente.py"
READY_FIELD = re.compile(r"(\w+)=(\S+)")
START_DEADLINE = 30.0
STOP_DEADLINE = 40.0

# The suite must behave the same whatever the caller exported: a developer's
# PEDIDOS_TOKEN, PEDIDOS_DB or PEDIDOS_SERVIDOR_TOKENS would otherwise reach
# this process and every process it starts. Tests that want one set it
# themselves (monkeypatch, or `env=` of `running_server`).
ENV_PREFIX = "PEDIDOS_"
for _name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
    del os.environ[_name]

# Nor what the caller's shell did to Ctrl-C: a shell without job control starts
# a command sent to the background (`pytest &`, nohup, some CI runners) with
# SIGINT ignored, every process it starts inherits that, and the tests of
# Ctrl-C (client, benchmark) would wait for an interruption that never comes.
# A handled signal is reset to its default in the processes started from here.
signal.signal(signal.SIGINT, signal.default_int_handler)


# Which event loop the servers the tests start use (issue 15). The suite runs on the
# standard library (`--sin-rapido`), the path of a bare Python; `pytest --servidor-rapido`
# runs the same tests on the rapido extra's uvloop (scripts/test does that for the
# server's contract, hardening, fault, hostile and access tests: the list is there).
# Chosen on the command line, never by the environment.
SERVER_MODE: list[str] = ["--sin-rapido"]
RAPIDO_READY = "loop uvloop,"


def clean_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any PEDIDOS_* variable, plus `extra`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
    return {**env, **(extra or {})}


# An order as the contract writes it (section 7): its fields, in order.
ORDER_KEYS = (
    "id",
    "cliente",
    "productos",
    "direccion",
    "referencia",
    "estado",
    "fecha_recibido",
    "fecha_inicio",
    "fecha_fin",
    "worker",
    "intentos",
)
# Section 11 (tasks) adds these to every order, after `intentos` (storage/base.py).
TASK_KEYS = ("fallos", "resultado", "error", "reintentar_despues")

ORIGINAL_ORDER = (
    ' {\n  "cliente": "Juan Pérez",\n  "productos": ["pan", "agua"],\n'
    '  "direccion": "Av. Siempre Viva 742"\n}\n'
)


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll `condition` until it returns something true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


def ready_addresses(line: str) -> list[tuple[str, int]]:
    """The addresses the server's `ready:` line gives in its `addresses=` field."""
    fields = dict(READY_FIELD.findall(line.rpartition("; ")[2]))
    addresses = []
    for shown in fields["addresses"].split(","):
        host, _, port = shown.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


class ServerProcess:
    """A running `servidor.py` and what it logged."""

    def __init__(self, args: list[str], db: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.args = args
        self.lines: list[str] = []
        self.addresses: list[tuple[str, int]] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVIDOR), "--db", str(db), *SERVER_MODE, *args],
            cwd=cwd,
            env=clean_environ(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
        )
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def _read_log(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if " ready: " in line:
                self.addresses = ready_addresses(line)
                self._ready.set()
        self._ready.set()

    def ready_line(self) -> str:
        """The `ready:` line as logged in text (empty if the log is in JSON)."""
        return next((line for line in self.lines if " ready: " in line), "")

    def wait_ready(self, timeout: float = START_DEADLINE) -> ServerProcess:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.kill()
            raise AssertionError(f"server did not start:\n{self.log}")
        # A run meant for uvloop that quietly ran without it would prove nothing.
        assert SERVER_MODE or RAPIDO_READY in self.log, self.log
        return self

    def worker_pids(self) -> list[int]:
        """Pids of this server's children (its workers and writer), from /proc."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                        pids.append(int(entry.name))
        return pids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_DEADLINE) -> int:
        """Signal the server by its own pid and wait for it; kill it past the deadline."""
        children = self.worker_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server did not stop within {timeout} s:\n{self.log}") from None
        self._reader.join(5)
        wait_for(lambda: not any(alive(pid) for pid in children), timeout=10)
        return code

    def kill(self) -> None:
        children = self.worker_pids()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def running_server(
    tmp_path: Path, *args: str, db: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """The real server on a free port with a database in `tmp_path`; always stopped.
    Its environment has no PEDIDOS_* variable but those in `env`."""
    db = db or tmp_path / "pedidos.db"
    args_list = list(args)
    if "--port" not in args_list:
        args_list += ["--port", "0"]
    server = ServerProcess(args_list, db, tmp_path, env)
    try:
        server.wait_ready()
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()
        server.kill()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with quick work (0.05 s an order) and 2 workers."""
    with running_server(tmp_path, "--work-time", "0.05") as srv:
        yield srv


class LineClient:
    """A raw socket speaking the protocol: bytes out, JSON lines back."""

    def __init__(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.read()

    def send(self, data: bytes | str | dict) -> None:
        if isinstance(data, dict):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def read(self) -> dict:
        line = self.file.readline()
        assert line.endswith(b"\n"), f"connection closed, got {line!r}"
        return json.loads(line)

    def ask(self, request: bytes | str | dict) -> dict:
        self.send(request)
        return self.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def esperando(port: int) -> int:
    """How many `esperar` requests the server on `port` holds open now: a test
    waits on this to know its `esperar` was read, not merely sent."""
    with LineClient("127.0.0.1", port) as c:
        return c.ask({"accion": "estadisticas"})["esperando"]


@pytest.fixture
def connect(server: ServerProcess) -> Iterator[Callable[..., LineClient]]:
    clients: list[LineClient] = []

    def _connect(host: str = "127.0.0.1") -> LineClient:
        client = LineClient(host, server.port)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


# --- helpers for the fault-injection, hostile-input and soak tests ------------------

WORKER_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def worker_pid(server: ServerProcess, number: int) -> int | None:
    """The pid of worker `number` as the server last logged it."""
    found = None
    for line in list(server.lines):
        match = WORKER_STARTED.search(line)
        if match and int(match.group(1)) == number:
            found = int(match.group(2))
    return found


WRITER_STARTED = re.compile(r"writer started \(pid (\d+)\)")


def writer_pids(server: ServerProcess) -> list[int]:
    """The pids of every writer process the server logged starting, in order."""
    return [int(m.group(1)) for line in list(server.lines) if (m := WRITER_STARTED.search(line))]


def writer_pid(server: ServerProcess) -> int | None:
    """The pid of the server's writer process as the server last logged it."""
    pids = writer_pids(server)
    return pids[-1] if pids else None


def workers_alive(server: ServerProcess) -> list[int]:
    """Pids of the live worker processes of `server` (not its writer process, not
    multiprocessing's resource tracker)."""
    writers = set(writer_pids(server))
    pids = []
    for pid in server.worker_pids():
        if pid in writers:
            continue
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes() and alive(pid):
                pids.append(pid)
    return pids


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def listed(port: int, **filters: Any) -> list[dict]:
    """Every stored order (matching `filters`), read over the wire with
    `listar`, page by page."""
    orders: list[dict] = []
    with LineClient("127.0.0.1", port) as client:
        while True:
            after = orders[-1]["id"] if orders else 0
            reply = client.ask({"accion": "listar", "desde_id": after, "limite": 1000, **filters})
            assert reply["ok"], reply
            orders += reply["pedidos"]
            if len(reply["pedidos"]) < 1000:
                return orders


@contextlib.contextmanager
def storage_of(db: Path | str, recover: bool = False) -> Iterator[StorageHarness]:
    """The database through the storage interface, as a stopped server left it
    (nothing handed back unless `recover`): tests read it this way, never with
    a driver of their own, so that they hold for every backend."""
    harness = StorageHarness(str(db)).start(recover)
    try:
        yield harness
    finally:
        harness.close()


@contextlib.contextmanager
def database_held(db: Path | str, exclusive: bool = True) -> Iterator[None]:
    """Another program holds the database until the block ends (a fault, not a
    read): for SQLite, a transaction of its own on the file (EXCLUSIVE keeps
    readers out too, IMMEDIATE only writers). Closing rolls it back."""
    conn = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE" if exclusive else "BEGIN IMMEDIATE")
        yield
    finally:
        conn.close()


def foreign_database(db: Path) -> None:
    """A database file that some other program made (a table of its own)."""
    conn = sqlite3.connect(str(db))
    try:
        conn.execute("CREATE TABLE other (x)")
        conn.commit()
    finally:
        conn.close()


def orders_of(server: ServerProcess) -> dict[int, dict]:
    """Every order by id as `server` sees it: over the wire while it runs,
    through the storage interface once it has stopped."""
    if server.proc.poll() is None:
        return {order["id"]: order for order in listed(server.port)}
    return stored_orders(server.db)


def stored_orders(db: Path | str) -> dict[int, dict]:
    """Every stored order by id, each as the contract's row (read through the
    storage interface, handing nothing back)."""
    return {order["id"]: order for order in read_all_orders(str(db))}


def kill_pids(pids: list[int]) -> None:
    """SIGKILL processes this test started (by their own pid), ignoring those already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- shared by the client tests (issue 5) ---------------------------------------------


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole test module, its orders done at once (`--work-time 0`).
    Shared: a test must not count on order ids or totals, only on its own orders."""
    with running_server(tmp_path_factory.mktemp("quick"), "--work-time", "0") as srv:
        yield srv


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole test module whose orders take 0.5 s each, so that
    they can be seen `pendiente` and `en proceso`. Keep what a module sends it small."""
    with running_server(tmp_path_factory.mktemp("slow"), "--work-time", "0.5") as srv:
        yield srv


Replies = Callable[[int, bytes], "bytes | None"]  # a FakeServer's answer to line `bytes` of connection `int`


class FakeServer:
    """A loopback listener playing a server that misbehaves, for the client's tests.

    `script`: "silent" accepts and never says a word; "mute" greets, then never
    answers; "hangup" greets, then closes at the first request; "busy" refuses
    the connection with `servidor_ocupado`, as a full server does; "answer"
    greets, then answers every request line with `reply`. Or a function
    `(n, line) -> bytes | None`: each connection (n: its number from 0) greets,
    then answers each request line with what the function returns, or closes
    at None; `requests[n]` holds the lines connection n read.
    """

    GREETING = b'{"ok": true, "servidor": "pedidos", "protocolo": 1, "mensaje": "hola"}\n'
    BUSY = b'{"ok": false, "error": "servidor_ocupado", "mensaje": "El servidor no acepta m\xc3\xa1s."}\n'

    def __init__(self, script: str | Replies, reply: bytes = b"") -> None:
        self.script = script
        self.reply = reply
        self.requests: list[list[bytes]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.conns.append(conn)
            if callable(self.script):
                seen: list[bytes] = []
                self.requests.append(seen)
                args = (conn, self.script, len(self.requests) - 1, seen)
                threading.Thread(target=self._talk, args=args, daemon=True).start()
                continue
            with contextlib.suppress(OSError):
                if self.script == "busy":
                    conn.sendall(self.BUSY)
                    conn.close()
                elif self.script in ("mute", "hangup", "answer"):
                    conn.sendall(self.GREETING)
                if self.script == "answer":
                    self._answer(conn)
                if self.script == "hangup":
                    conn.settimeout(10)
                    conn.recv(1)
                    conn.close()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        while data := conn.recv(65536):
            conn.sendall(self.reply * data.count(b"\n"))
        conn.close()

    def _talk(
        self,
        conn: socket.socket,
        replies: Callable[[int, bytes], bytes | None],
        number: int,
        seen: list[bytes],
    ) -> None:
        conn.settimeout(10)
        buf = b""
        with contextlib.suppress(OSError):
            conn.sendall(self.GREETING)
            while data := conn.recv(65536):
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    seen.append(line)
                    reply = replies(number, line)
                    if reply is None:
                        conn.shutdown(socket.SHUT_RDWR)
                        return
                    conn.sendall(reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def _start(script: str | Replies, reply: bytes = b"") -> FakeServer:
        servers.append(FakeServer(script, reply))
        return servers[-1]

    yield _start
    for fake in servers:
        fake.close()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port nobody listens on: bound (so nobody else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def has_open(pid: int, path: Path) -> bool:
    """True if process `pid` has `path` open (a worker opens the database once it is set up)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                return True
    return False


def workers_ready(server: ServerProcess) -> list[int]:
    """Pids of the workers that have finished starting (their database is open)."""
    return [pid for pid in workers_alive(server) if has_open(pid, server.db)]


class StorageHarness:
    """A started backend on its own event loop, driven from a plain test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.stored: list[int] = []  # what on_stored heard
        self.storage: Storage | None = None
        self.recovery: Recovery | None = None
        self._workers: list[WorkerStore] = []

    def start(self, recover: bool = True) -> StorageHarness:
        async def start() -> None:
            self.storage = open_storage(self.url, on_stored=self.stored.extend)
            self.recovery = await self.storage.start(recover)

        self.run(start())
        return self

    def stop(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers.clear()
        if self.storage is not None:
            self.run(self.storage.stop())
            self.storage = None

    def close(self) -> None:
        self.stop()
        self.loop.close()

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(awaitable, 60))

    def __getattr__(self, name: str) -> Any:
        """`h.get(1)` runs `storage.get(1)` to its end."""
        method = getattr(self.storage, name)
        return lambda *args, **kwargs: self.run(method(*args, **kwargs))

    def submit(self, *orders: NewOrder, owner: str | None = None) -> list[Receipt]:
        """Submit together (one batch, as orders arriving at once would), wait for all."""

        async def submit() -> list[Receipt]:
            futures = [self.storage.submit(order, owner) for order in orders]  # type: ignore[union-attr]
            return list(await asyncio.gather(*futures))

        return self.run(submit())

    def worker(self, number: int) -> WorkerStore:
        """A worker's store, opened in this process (a spawned one: see below)."""
        store = self.storage.worker_opener()(number, os.getpid())  # type: ignore[union-attr]
        self._workers.append(store)
        return store


# --- the live panel (issue 12) ----------------------------------------------------------

PANEL_ON = re.compile(r"panel on (http://\S+/)")


def panel_url(server: ServerProcess, timeout: float = 10.0) -> str:
    """The panel's address as the server logged it (`--panel 0` picks a free port)."""
    return wait_for(lambda: PANEL_ON.search(server.log), timeout).group(1)  # type: ignore[union-attr]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--servidor-rapido",
        action="store_true",
        help="start the servers on the rapido extra's uvloop (it must be installed) "
        "instead of with --sin-rapido",
    )
    parser.addoption(
        "--panel-screenshot",
        metavar="PATH",
        default=None,
        help="also save the browser test's screenshot of the panel under load here (docs/panel.png)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--servidor-rapido"):
        SERVER_MODE.clear()


def marked_processes(marker: str) -> dict[int, str]:
    """Processes that inherited the marker (an environment value) from a tool a test ran: pid -> command."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "environ").read_bytes():
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


@pytest.fixture
def redis_answering_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Redis a tool starts answers each RPUSH with an error: its key holds a
    string (a full disk would do the same). The load generator counts Redis's
    replies without reading them, so only asking Redis afterwards can tell."""
    from pedidos.tools import redis

    start = redis.start

    def key_of_another_type(tmp: Path) -> Any:
        child = start(tmp)
        with socket.create_connection(("127.0.0.1", child.port)) as sock:
            sock.sendall(b"SET " + redis.KEY + b" x\r\n")
            assert sock.recv(100) == b"+OK\r\n"
        return child

    monkeypatch.setattr(redis, "start", key_of_another_type)


def stop_tool(proc: subprocess.Popen) -> None:
    """End a tool a test ran (the benchmark, the ceiling probe) by its own pid:
    SIGTERM first, which the tool turns into an exit that unwinds and stops every
    server it started, then SIGKILL past a deadline. SIGKILL alone left its
    redis-server running, which `marked_processes` cannot see: Redis writes its
    process title over its environment."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def assert_nothing_left(marker: str) -> None:
    deadline = time.monotonic() + 15
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = marked_processes(marker)
    for pid in left:  # do not leave them running for the next test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
