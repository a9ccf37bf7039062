"""The order server: listeners, connections, and an orderly start and stop.

`serve()` runs `startup()`, waits for a signal, then `shutdown()`: close the
listeners, answer what was already received, let the workers finish the order
in hand, and commit everything before returning. Signal handlers only set a
flag; a second Ctrl-C skips the waiting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import sqlite3
import ssl
from dataclasses import dataclass, field
from typing import Any

from pedidos.events import EventBus
from pedidos.processing.supervisor import Processing
from pedidos.processing.worker import SERVER, WorkerConfig
from pedidos.protocol.framing import DEFAULT_MAX_REQUEST_BYTES
from pedidos.server.auth import FailureThrottle, TokenBook, TokenFileError, load_tokens
from pedidos.server.connection import Connection
from pedidos.server.service import OrderService, Reader
from pedidos.stats import Stats
from pedidos.storage.sqlite.store import Store
from pedidos.storage.sqlite.writer import Writer

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096


@dataclass
class ServerConfig:
    hosts: list[str] = field(default_factory=lambda: ["localhost"])
    port: int = 8888
    workers: int = 2
    db: str = "pedidos.db"
    work_time: tuple[float, float] = (1.0, 3.0)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_connections: int = 10_000
    idle_timeout: float = 300.0
    shutdown_timeout: float = 30.0
    log_level: int = logging.INFO
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    panel_port: int | None = None  # None: no panel (pedidos/panel/), nothing of it imported
    panel_host: str = "127.0.0.1"


class StartupError(Exception):
    """The server cannot start; the message is one line for the operator."""


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.addresses: list[tuple[str, int]] = []
        self.connections: set[Connection] = set()
        self.started = asyncio.Event()
        self._exit = asyncio.Event()
        self._force_exit = False
        self._accepting = False
        self._listeners: list[asyncio.AbstractServer] = []
        self._drained = asyncio.Event()
        self._writer: Writer | None = None
        self._reader: Reader | None = None
        self._processing: Processing | None = None
        self.tokens: TokenBook | None = None
        self.throttle = FailureThrottle()
        self.stats = Stats()
        self._panel: Any = None

    async def serve(self, install_signal_handlers: bool = True) -> None:
        if install_signal_handlers:
            self._install_signal_handlers()
        await self.startup()
        try:
            await self._exit.wait()
        finally:
            await self.shutdown()

    def request_exit(self) -> None:
        if self._exit.is_set():
            logger.warning("second signal: stopping without waiting")
            self._force_exit = True
            self._drained.set()
        self._exit.set()

    # --- start ------------------------------------------------------------------

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = self.config
        try:
            self.tokens = load_tokens(config.token_file)
        except TokenFileError as exc:
            raise StartupError(str(exc)) from None
        tls = tls_context(config.tls_cert, config.tls_key)
        _prepare_database(config.db)
        sockets = bind_sockets(config.hosts, config.port)
        try:
            bus = EventBus()
            self.stats.subscribe(bus)
            self._reader = Reader(config.db)
            self._processing = Processing(
                config.workers,
                WorkerConfig(config.db, config.work_time, config.log_level),
                bus,
                write=lambda fn, *args: self._writer.run(fn, *args),  # type: ignore[union-attr]
                read=self._reader,
            )
            pool = self._processing.pool
            lock, lock_holder = pool.shared_lock
            release = lambda: pool.release_lock_of(SERVER)  # noqa: E731
            self._writer = Writer(config.db, lock, lock_holder, self.loop, bus, release, config.log_level)
            await self._writer.start()
            self.service = OrderService(self._writer, self._reader, bus, self._live_figures)
            if config.panel_port is not None:
                await self._start_panel(bus)  # before the workers: it sees their first orders
            self._processing.start()
            for sock in sockets:
                listener = await self.loop.create_server(
                    lambda: Connection(self), sock=sock, backlog=LISTEN_BACKLOG, ssl=tls
                )
                self._listeners.append(listener)
        except BaseException:
            for sock in sockets:
                sock.close()
            await self.shutdown()
            raise
        self._accepting = True
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            self.addresses.append((host, port))
            shown = f"[{host}]" if ":" in host else host
            logger.info("listening on %s:%d", shown, port)
        exposed = [host for host, _ in self.addresses if not ipaddress.ip_address(host).is_loopback]
        if exposed and self.tokens is None:
            logger.warning(
                "listening beyond this machine (%s) with no access token: anyone who can reach it "
                "can read every order; see --token-file",
                ", ".join(exposed),
            )
        logger.info(
            "ready: %d workers, database %s, work time %s s, %s, %s",
            config.workers,
            config.db,
            "-".join(f"{t:g}" for t in sorted(set(config.work_time))),
            "TLS" if tls is not None else "plain TCP",
            f"{len(self.tokens)} access tokens" if self.tokens is not None else "no access tokens",
        )
        self.started.set()

    async def _start_panel(self, bus: EventBus) -> None:
        from pedidos.panel.web import Panel, PanelError, PanelSource  # only with --panel: aiohttp

        reader = self._reader
        source = PanelSource(
            bus=bus,
            stats=self.stats,
            counts=lambda: reader(Store.counts),  # type: ignore[misc]
            latest=lambda from_id, n: reader(Store.list_orders, None, None, from_id, n),  # type: ignore[misc]
            figures=self._live_figures,
            workers=self.config.workers,
            tokens=self.tokens,
            throttle=self.throttle,
        )
        self._panel = Panel(source)
        try:
            await self._panel.start(self.config.panel_host, self.config.panel_port or 0)
        except PanelError as exc:
            raise StartupError(str(exc)) from None

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_exit)

    # --- connections ----------------------------------------------------------------

    def admit(self, connection: Connection) -> bool:
        if not self._accepting or len(self.connections) >= self.config.max_connections:
            self.stats.refused_connections += 1
            logger.warning("refusing %s: %d connections open", connection.peer, len(self.connections))
            return False
        self.connections.add(connection)
        return True

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._drained.set()

    def _live_figures(self) -> dict[str, Any]:
        workers = self._processing.pool.alive() if self._processing else 0
        return {"workers": workers, "conexiones": len(self.connections)}

    # --- stop -----------------------------------------------------------------------

    async def shutdown(self) -> None:
        logger.info("shutting down")
        timeout = self.config.shutdown_timeout
        self._accepting = False
        if self._panel is not None:
            await self._panel.stop()
        for listener in self._listeners:
            listener.close()
        if self.connections:
            self._drained.clear()
            self.service.release_waiters()
            for connection in list(self.connections):
                connection.close_when_answered()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except asyncio.TimeoutError:
                logger.warning("%d connections still busy; closing them", len(self.connections))
            for connection in list(self.connections):
                connection.abort()
        if self._processing is not None:
            await self._processing.stop(0 if self._force_exit else timeout)
        if self._writer is not None:
            await self._writer.stop()
        if self._reader is not None:
            self._reader.close()
        logger.info("stopped")


def _prepare_database(path: str) -> None:
    """Create the table and take up what a crash left `en proceso`."""
    try:
        store = Store(path)
        try:
            store.create_schema()
            released = store.release(None, count_attempt=True)
        finally:
            store.close()
    except sqlite3.Error as exc:
        raise StartupError(f"cannot use the database {path!r}: {exc}") from None
    if released:
        failed = sum(1 for _, estado in released if estado == "fallido")
        logger.warning(
            "%d orders were in process when the server last stopped; %d back to pending, %d failed",
            len(released),
            len(released) - failed,
            failed,
        )


def listen_addresses(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) pairs that `--host` names."""
    if host == "localhost":
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    if host in ("::", "[::]"):
        return [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    pairs = []
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr[0]) not in pairs:
            pairs.append((family, sockaddr[0]))
    return pairs


def bind_sockets(hosts: list[str], port: int) -> list[socket.socket]:
    """One listening socket per address; an IPv6 socket is v6-only, so the
    families never share one. A family missing on this machine is logged and
    skipped; having nothing to listen on is an error."""
    sockets: list[socket.socket] = []
    failures = []
    for host in hosts:
        for family, address in listen_addresses(host, port):
            if any(s.family == family and s.getsockname()[0] == address for s in sockets):
                continue
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address, port))
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                shown = f"[{address}]" if ":" in address else address
                logger.warning("cannot listen on %s:%d: %s", shown, port, exc.strerror or exc)
                failures.append(f"{shown}: {exc.strerror or exc}")
                continue
            if port == 0:  # the other addresses take the same free port
                port = sock.getsockname()[1]
            sockets.append(sock)
    if not sockets:
        raise StartupError("cannot listen on any address (" + "; ".join(failures) + ")")
    return sockets


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context (TLS 1.2 at least), or None for plain TCP."""
    if cert is None and key is None:
        return None
    if cert is None:
        raise StartupError("--tls-key needs --tls-cert")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load the TLS certificate {cert!r}: {exc}") from None
    return context
