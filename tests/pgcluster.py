"""A throwaway PostgreSQL cluster for the tests: started once per session, stopped
by its own postmaster pid whatever happens to pytest.

Debian's server binaries (`/usr/lib/postgresql/*/bin`, the newest) run as the
`postgres` user when the tests run as root, since initdb and postgres refuse
root; the cluster lives in its own `mktemp -d` with its socket there too, and
listens on 127.0.0.1 at a free port.

fsync stays on: some tests kill servers and PostgreSQL itself and then count
what survived, and one cluster for every test keeps the session's start at
about a second. Batching makes the cost of fsync small for the rest.

`--database-url` (or `DATABASE_URL`, the one variable of the caller's
environment the tests honour, as the issue asks) points the tests at an
existing server instead: they then create and drop databases of their own,
named `pedidos_test_*`, and touch nothing else.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

START_TIMEOUT_S = 30
DB_PREFIX = "pedidos_test_"


class PostgresMissing(Exception):
    """No PostgreSQL server binaries on this machine."""


def bin_dir() -> Path:
    """The newest Debian PostgreSQL's bin directory."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresMissing(
            "PostgreSQL's server binaries are missing (/usr/lib/postgresql/*/bin/initdb): "
            "run `bash scripts/test`, which installs Debian's `postgresql`, or give "
            "--database-url postgresql://... of a server the tests may create databases on"
        )
    return found[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """One postmaster in a temporary directory; `stop()` is safe to call twice."""

    def __init__(self, fsync: bool = True) -> None:
        self.bin = bin_dir()
        self.as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="pedidos-pg-"))
        self.data = self.dir  # postgres must own the directory it runs in
        self.port = free_port()
        self.fsync = fsync
        self.pid: int | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        if self.as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")

    def start(self) -> Cluster:
        made = self._run(
            "initdb", "-D", str(self.data), "-E", "UTF8", "--locale=C.UTF-8",
            "-A", "trust", "-U", "postgres", "--no-sync",
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()}")
        self.boot()
        atexit.register(self.stop)
        return self

    def boot(self) -> None:
        """Start the postmaster (again, after `halt`) on the same port."""
        options = f"-k {self.data} -c listen_addresses=127.0.0.1 -p {self.port} -c max_connections=300"
        if not self.fsync:
            options += " -c fsync=off -c full_page_writes=off"
        started = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.data / "log"), "-o", options, "-w", "start"
        )
        if started.returncode != 0:
            log = (self.data / "log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}\n{log}")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._start_watchdog()

    def halt(self) -> None:
        """Stop the postmaster at once (`-m immediate`), as a crash would; `boot` brings it back."""
        if self.pid is None:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        _wait_gone(self.pid)
        self.pid = None
        self._stop_watchdog()

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _start_watchdog(self) -> None:
        """A tiny process that kills the postmaster if pytest dies without
        cleaning up (kill -9): the cluster must never outlive its session."""
        script = (
            "import os, signal, sys, time\n"
            "parent, pm = int(sys.argv[1]), int(sys.argv[2])\n"
            "while os.getppid() == parent: time.sleep(0.5)\n"
            "try: os.kill(pm, signal.SIGQUIT)\n"
            "except ProcessLookupError: pass\n"
        )
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", script, str(os.getpid()), str(self.pid)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._watchdog.pid, signal.SIGKILL)
            self._watchdog.wait()
            self._watchdog = None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until `pid` has exited (a zombie left to init counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.02)


def with_dbname(url: str, dbname: str) -> str:
    """The same server's URL for another database (a postgresql:// URL stays one:
    the server tells its backend by the scheme)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def with_options(url: str, options: str) -> str:
    """The URL with libpq's `options` (server settings for its sessions: `-c name=value`)."""
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode({"options": options}, quote_via=quote)]))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class Databases:
    """Creates and drops the tests' own databases on a server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._made: list[str] = []

    def create(self) -> str:
        """A new empty database: its URL."""
        import psycopg

        name = DB_PREFIX + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._made.append(name)
        return with_dbname(self.admin_url, name)

    def drop(self, url: str) -> None:
        import psycopg

        name = urlsplit(url).path.lstrip("/")
        assert str(name).startswith(DB_PREFIX)
        with (
            contextlib.suppress(psycopg.OperationalError),
            psycopg.connect(self.admin_url, autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with contextlib.suppress(ValueError):
            self._made.remove(str(name))


# --- pytest wiring (registered by conftest.py as a plugin) ---------------------------

import pytest  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database-url",
        default=None,
        help="run the PostgreSQL tests on this existing server (default: $DATABASE_URL, "
        "else a throwaway cluster); they create and drop databases named pedidos_test_*",
    )


@pytest.fixture(scope="session")
def pg_databases(request: pytest.FixtureRequest):
    """The session's PostgreSQL server, as a maker of fresh databases."""
    url = request.config.getoption("--database-url") or os.environ.get("DATABASE_URL")
    cluster = None
    if not url:
        try:
            cluster = Cluster().start()
        except PostgresMissing as exc:
            pytest.fail(str(exc), pytrace=False)
        url = cluster.url()
    databases = Databases(url)
    try:
        yield databases
    finally:
        for name in list(databases._made):
            databases.drop(with_dbname(url, name))
        if cluster is not None:
            cluster.stop()


@pytest.fixture
def pg_url(pg_databases: Databases):
    """A new empty database for one test: its URL, dropped afterwards."""
    url = pg_databases.create()
    try:
        yield url
    finally:
        pg_databases.drop(url)


@pytest.fixture
def pg_cluster():
    """A cluster of the test's own, for tests that stop and start PostgreSQL."""
    try:
        cluster = Cluster().start()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
