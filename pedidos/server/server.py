"""The order server: listeners, connections, and an orderly start and stop.

`serve()` runs `startup()`, waits for a signal, then `shutdown()`: close the
listeners, answer what was already received, let the workers finish the order
in hand, and commit everything before returning. Signal handlers only set a
flag; a second Ctrl-C or SIGTERM stops at once: the workers are killed, and
their orders are taken up by the next start, as after a crash.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pedidos.events import FINISHED, RECEIVED, STARTED, Event, EventBus
from pedidos.processing.supervisor import Processing
from pedidos.processing.worker import SERVER, WorkerConfig
from pedidos.protocol.framing import DEFAULT_MAX_REQUEST_BYTES
from pedidos.server.auth import FailureThrottle, TokenBook, TokenFileError, load_tokens
from pedidos.server.connection import Connection
from pedidos.server.listener import Listener, connection_budget
from pedidos.server.preflight import StartupError, bind_sockets, lock_database, prepare_database, tls_context
from pedidos.server.service import OrderService, Reader
from pedidos.storage.sqlite.writer import Writer
from pedidos.wording import count

logger = logging.getLogger(__name__)

__all__ = ["Server", "ServerConfig", "StartupError"]

FORCED_WRITER_STOP_S = 2.0  # after a second signal: the writer's last commit, at most
ACTIVITY = {RECEIVED: "acknowledged", STARTED: "started", FINISHED: "finished"}


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
    log_format: str = "text"
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.addresses: list[tuple[str, int]] = []
        self.connections: set[Connection] = set()
        self.started = asyncio.Event()
        self._exit = asyncio.Event()
        self._force_exit = False
        self._forced = asyncio.Event()
        self._accepting = False
        self._listeners: list[Listener] = []
        self._db_lock: int | None = None
        # Computed once: per-connection and per-order debug lines cost nothing
        # when they are off.
        self.debug = logger.isEnabledFor(logging.DEBUG)
        self.max_connections = config.max_connections
        self._full = False  # refusing connections at the limit
        self._drained = asyncio.Event()
        self._writer: Writer | None = None
        self._reader: Reader | None = None
        self._processing: Processing | None = None
        self.tokens: TokenBook | None = None
        self.throttle = FailureThrottle()

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
            self._force_exit = True
            self._forced.set()
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
        # Bind, then lock the database, and only then take up what a crash
        # left behind: a second start on the same database fails on one of
        # the first two and changes nothing of the running server's orders.
        sockets = bind_sockets(config.hosts, config.port)
        try:
            self._db_lock = lock_database(config.db)
            prepare_database(config.db)
            self.max_connections = connection_budget(config.max_connections, config.workers)
            bus = EventBus()
            if self.debug:
                bus.subscribe(_log_activity)
            self._reader = Reader(config.db)
            await self._reader.open()
            self._processing = Processing(
                config.workers,
                WorkerConfig(config.db, config.work_time, config.log_level, config.log_format),
                bus,
                write=lambda fn, *args: self._writer.run(fn, *args),  # type: ignore[union-attr]
                read=self._reader,
            )
            pool = self._processing.pool
            lock, lock_holder = pool.shared_lock
            release = lambda: pool.release_lock_of(SERVER)  # noqa: E731
            self._writer = Writer(
                config.db, lock, lock_holder, self.loop, bus, release, config.log_level, config.log_format
            )
            await self._writer.start()
            self.service = OrderService(self._writer, self._reader, bus, self._live_figures)
            self._processing.start()
            for sock in sockets:
                listener = Listener(self.loop, sock, lambda: Connection(self), tls)
                listener.start()
                self._listeners.append(listener)
        except BaseException:
            for sock in sockets:
                sock.close()
            await self.shutdown(quiet=True)
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
            "ready: %s, database %s, work time %s s, %s, %s",
            count(config.workers, "worker"),
            config.db,
            "-".join(f"{t:g}" for t in sorted(set(config.work_time))),
            "TLS" if tls is not None else "plain TCP",
            count(len(self.tokens), "access token") if self.tokens is not None else "no access tokens",
        )
        self.started.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_exit)

    # --- connections ----------------------------------------------------------------

    def admit(self, connection: Connection) -> bool:
        if not self._accepting:
            return False
        if len(self.connections) >= self.max_connections:
            if not self._full:  # one line per episode, not one per refused client
                self._full = True
                logger.warning(
                    "refusing new connections with servidor_ocupado: %s open (--max-connections %d)",
                    count(len(self.connections), "connection"),
                    self.max_connections,
                )
            return False
        self._full = False
        self.connections.add(connection)
        if self.debug:
            logger.debug(
                "connection from %s opened",
                connection.peer,
                extra={"event": "connection_opened", "peer": connection.peer},
            )
        return True

    def forget(self, connection: Connection) -> None:
        if self.debug and connection in self.connections:
            logger.debug(
                "connection from %s closed",
                connection.peer,
                extra={"event": "connection_closed", "peer": connection.peer},
            )
        self.connections.discard(connection)
        if not self.connections:
            self._drained.set()

    def _live_figures(self) -> dict[str, Any]:
        workers = self._processing.pool.alive() if self._processing else 0
        return {"workers": workers, "conexiones": len(self.connections)}

    # --- stop -----------------------------------------------------------------------

    async def shutdown(self, quiet: bool = False) -> None:
        if not quiet:
            logger.info("shutting down")
        timeout = self.config.shutdown_timeout
        self._accepting = False
        for listener in self._listeners:
            listener.close()
        if self.connections:
            self._drained.clear()
            self.service.release_waiters()
            for connection in list(self.connections):
                connection.close_when_answered()
            if not self._force_exit:
                busy = sum(1 for connection in self.connections if connection.busy)
                if busy:
                    logger.info(
                        "waiting for %s to be answered (up to %g s)", count(busy, "connection"), timeout
                    )
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except asyncio.TimeoutError:
                logger.warning("%s still busy; closing them", count(len(self.connections), "connection"))
            for connection in list(self.connections):
                connection.abort()
        if self._processing is not None:
            processing = self._processing
            await self._unless_forced(
                processing.stop(0 if self._force_exit else timeout), processing.kill_now
            )
        if self._writer is not None:
            await self._writer.stop(FORCED_WRITER_STOP_S if self._force_exit else timeout)
        if self._reader is not None:
            self._reader.close()
        if self._db_lock is not None:
            os.close(self._db_lock)  # releases the database for the next start
            self._db_lock = None
        if not quiet:
            logger.info("stopped")

    async def _unless_forced(self, step: Awaitable[None], on_force: Callable[[], None]) -> None:
        """Await `step`; if a second signal comes meanwhile, call `on_force` and
        await what is left of `step`, which then ends at once."""
        task = asyncio.ensure_future(step)
        forced = asyncio.ensure_future(self._forced.wait())
        try:
            await asyncio.wait({task, forced}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                on_force()
            await task
        finally:
            forced.cancel()


def _log_activity(event: Event) -> None:
    """At DEBUG: one line per order acknowledged, started, finished; ids only."""
    what = ACTIVITY.get(event.kind)
    if what is None:
        return
    by = f" by worker {event.worker}" if event.worker is not None else ""
    for order_id in event.ids:
        logger.debug(
            "order %d %s%s",
            order_id,
            what,
            by,
            extra={"event": f"order_{what}", "id": order_id, "worker": event.worker},
        )
