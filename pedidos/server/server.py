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
import ssl
from typing import Any

from pedidos.domain import Estado, show_address
from pedidos.events import ELSEWHERE, FAILED, RECEIVED, REQUEUED, Event, EventBus
from pedidos.processing.supervisor import Processing
from pedidos.processing.worker import WorkerConfig
from pedidos.protocol.replies import order_ack
from pedidos.server.auth import FailureThrottle, TokenBook, TokenFileError, load_tokens
from pedidos.server.config import ServerConfig, StartupError
from pedidos.server.connection import Connection
from pedidos.server.service import OrderService
from pedidos.server.state import ServerState
from pedidos.storage import Cluster, is_postgres, open_storage, shown_db
from pedidos.storage.base import Recovery, Storage, StorageError

__all__ = ["Server", "ServerConfig", "StartupError"]

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.addresses: list[tuple[str, int]] = []
        self.started = asyncio.Event()
        self.state: ServerState | None = None  # what connections share, once started
        self._exit = asyncio.Event()
        self._force_exit = False
        self._listeners: list[asyncio.AbstractServer] = []
        self._storage: Storage | None = None
        self._processing: Processing | None = None
        self.tokens: TokenBook | None = None
        self.nodo: str | None = None  # this server's name on a shared database

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
            if self.state is not None:
                self.state.drained.set()
        self._exit.set()

    # --- start ------------------------------------------------------------------

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        try:
            self.tokens = load_tokens(config.token_file)
        except TokenFileError as exc:
            raise StartupError(str(exc)) from None
        tls = tls_context(config.tls_cert, config.tls_key)
        bus = EventBus()
        # Bound before the database is opened: a node's default name is
        # HOST:PORT, and with --port 0 the port is known only now.
        sockets = bind_sockets(config.hosts, config.port)
        try:
            # The protocol layer writes the acks; the backend only calls it.
            self._storage = open_storage(
                config.db,
                ack=order_ack,
                on_stored=lambda ids: bus.publish(Event(RECEIVED, ids)),
                log_level=config.log_level,
                cluster=self._cluster(bus, sockets[0].getsockname()[1]),
            )
            _log_recovery(await self._storage.start())
        except BaseException as exc:
            for sock in sockets:
                sock.close()
            await self.shutdown(quiet=True)
            if isinstance(exc, StorageError):
                raise StartupError(str(exc)) from None
            raise
        try:
            self._processing = Processing(
                config.workers,
                WorkerConfig(self._storage.worker_opener(), config.work_time, config.log_level),
                bus,
                self._storage,
            )
            service = OrderService(self._storage, bus, self._live_figures)
            self.state = state = ServerState(config, service, loop, self.tokens, FailureThrottle())
            self._processing.start()
            for sock in sockets:
                listener = await loop.create_server(
                    lambda: Connection(state), sock=sock, backlog=LISTEN_BACKLOG, ssl=tls
                )
                self._listeners.append(listener)
        except BaseException:
            for sock in sockets:
                sock.close()
            await self.shutdown()
            raise
        state.accepting = True
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            self.addresses.append((host, port))
            logger.info("listening on %s", show_address(host, port))
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
            shown_db(config.db),
            "-".join(f"{t:g}" for t in sorted(set(config.work_time))),
            "TLS" if tls is not None else "plain TCP",
            f"{len(self.tokens)} access tokens" if self.tokens is not None else "no access tokens",
        )
        self.started.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_exit)

    def _live_figures(self) -> dict[str, Any]:
        workers = self._processing.pool.alive() if self._processing else 0
        connections = len(self.state.connections) if self.state is not None else 0
        figures: dict[str, Any] = {"workers": workers, "conexiones": connections}
        if self.nodo is not None:
            figures["nodo"] = self.nodo
        return figures

    def _cluster(self, bus: EventBus, port: int) -> Cluster | None:
        """How this server joins the others on a shared database (section 9)."""
        config = self.config
        if not is_postgres(config.db):
            return None
        self.nodo = config.nodo or f"{socket.gethostname()}:{port}"

        def figures() -> tuple[int, int]:
            live = self._live_figures()
            return live["workers"], live["conexiones"]

        def handed_back(moved: list[tuple[int, str]]) -> None:
            requeued = tuple(i for i, estado in moved if estado == Estado.PENDIENTE)
            failed = tuple(i for i, estado in moved if estado == Estado.FALLIDO)
            if failed:
                bus.publish(Event(FAILED, failed))
            if requeued:
                bus.publish(Event(REQUEUED, requeued))

        def new_elsewhere() -> None:
            if self._processing is not None:
                self._processing.dispatcher.sweep()

        return Cluster(
            nodo=self.nodo,
            lease=config.lease,
            hints=config.hints,
            on_new=new_elsewhere,
            on_done=lambda ids: bus.publish(Event(ELSEWHERE, ids or ())),
            on_handed_back=handed_back,
            figures=figures,
        )

    # --- stop -----------------------------------------------------------------------

    async def shutdown(self, quiet: bool = False) -> None:
        """Stop in order; `quiet` when the start failed before anything ran."""
        if not quiet:
            logger.info("shutting down")
        timeout = self.config.shutdown_timeout
        state = self.state
        for listener in self._listeners:
            listener.close()
        if state is not None:
            state.accepting = False
        if state is not None and state.connections:
            state.drained.clear()
            state.service.release_waiters()
            for connection in list(state.connections):
                connection.close_when_answered()
            try:
                await asyncio.wait_for(state.drained.wait(), timeout)
            except asyncio.TimeoutError:
                logger.warning("%d connections still busy; closing them", len(state.connections))
            for connection in list(state.connections):
                connection.abort()
        if self._processing is not None:
            await self._processing.stop(0 if self._force_exit else timeout)
        if self._storage is not None:
            await self._storage.stop()
        if not quiet:
            logger.info("stopped")


def _log_recovery(recovery: Recovery) -> None:
    """What the last run left `en proceso` was taken up at the start."""
    if recovery.requeued or recovery.failed:
        logger.warning(
            "%d orders were in process when the server last stopped; %d back to pending, %d failed",
            len(recovery.requeued) + len(recovery.failed),
            len(recovery.requeued),
            len(recovery.failed),
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
                logger.warning("cannot listen on %s: %s", show_address(address, port), exc.strerror or exc)
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
