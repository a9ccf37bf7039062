"""The order server: listeners, connections, and an orderly start and stop.

`serve()` runs `startup()`, waits for a signal, then `shutdown()`: close the
listeners, answer what was already received, let the workers finish the order
in hand, and commit everything before returning. Signal handlers only set a
flag; a second Ctrl-C or SIGTERM stops at once: the workers are killed, and
their orders are taken up by the next start, as after a crash.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pedidos.domain import Estado, show_address
from pedidos.events import ELSEWHERE, FAILED, RECEIVED, REQUEUED, Event, EventBus
from pedidos.panel import MAX_CONNECTIONS as PANEL_CONNECTIONS  # stdlib only, unlike the panel itself
from pedidos.processing.retry import RetryPolicy
from pedidos.processing.supervisor import Processing
from pedidos.processing.worker import WorkerConfig
from pedidos.protocol.replies import order_ack
from pedidos.server.announce import announce_ready, log_activity, log_recovery
from pedidos.server.auth import FailureThrottle, TokenBook, TokenFileError, load_tokens
from pedidos.server.config import ServerConfig
from pedidos.server.connection import Connection
from pedidos.server.listener import Listener, connection_budget, startup_shortage
from pedidos.server.preflight import StartupError, bind_sockets, tls_context
from pedidos.server.service import OrderService
from pedidos.server.starting import StoppedStarting, children_deaf, start_storage
from pedidos.server.state import ServerState
from pedidos.stats import Stats
from pedidos.storage import Cluster, is_postgres, open_storage
from pedidos.storage.base import Storage, StorageError
from pedidos.wording import count

logger = logging.getLogger(__name__)

__all__ = ["Server", "ServerConfig", "StartupError"]

FORCED_WRITER_STOP_S = 2.0  # after a second signal: the database's last commit, at most
# A second stop signal stops at once, without waiting for the workers; one that
# comes within this time of the first is the same request sent twice: `timeout`
# signals the server and then its whole process group, and `kill` of the server
# followed by `kill -- -PGID` does the same, microseconds apart.
SAME_STOP_S = 1.0


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.addresses: list[tuple[str, int]] = []
        self.started = asyncio.Event()
        self.state: ServerState | None = None  # what connections share, once started
        self._exit = asyncio.Event()
        self._force_exit = False
        self._exit_asked = 0.0  # when the stop was first asked for (time.monotonic)
        self._forced = asyncio.Event()
        self._listeners: list[Listener] = []
        self._storage: Storage | None = None
        self._processing: Processing | None = None
        self.tokens: TokenBook | None = None
        self._panel: Any = None  # pedidos.panel.web.Panel with --panel, imported only then
        self.nodo: str | None = None  # this server's name on a shared database

    async def serve(self, install_signal_handlers: bool = True) -> None:
        if install_signal_handlers:
            self._install_signal_handlers()
        try:
            await self.startup()
        except StoppedStarting:
            logger.info("stopped before the database was ready")
            return
        try:
            await self._exit.wait()
        finally:
            await self.shutdown()

    def request_exit(self) -> None:
        now = time.monotonic()
        if self._exit.is_set():
            if now - self._exit_asked < SAME_STOP_S:
                return  # the same stop, asked twice (see SAME_STOP_S)
            self._force_exit = True
            self._forced.set()
            if self.state is not None:
                self.state.drained.set()
        else:
            self._exit_asked = now
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
        # Bind, then start the storage, which makes the database this server's
        # (SQLite: a lock file) before it takes up what a crash left behind: a
        # second start on the same database fails on one of the two and
        # changes nothing of the running server's orders. (On a shared
        # database, a node's default name is HOSTNAME:PORT, known only now.)
        sockets = bind_sockets(config.hosts, config.port)
        try:
            bus = EventBus()
            stats = Stats()  # subscribed first: it counts every event from the start
            stats.subscribe(bus)
            if logger.isEnabledFor(logging.DEBUG):
                bus.subscribe(log_activity)
            # The protocol layer writes the acks; the backend only calls it.
            self._storage = open_storage(
                config.db,
                ack=order_ack,
                on_stored=lambda ids: bus.publish(Event(RECEIVED, ids)),
                on_commit=stats.commit.observe,
                log_level=config.log_level,
                log_format=config.log_format,
                cluster=self._cluster(bus, sockets[0].getsockname()[1]),
            )
            try:
                log_recovery(await start_storage(self._storage, self._exit))
            except StorageError as exc:
                raise StartupError(str(exc)) from None
            panel = PANEL_CONNECTIONS if config.panel_port is not None else 0
            max_connections = connection_budget(config.max_connections, config.workers, panel)
            self._processing = Processing(
                config.workers,
                WorkerConfig(
                    self._storage.worker_opener(),
                    config.work_time,
                    config.log_level,
                    config.log_format,
                    task=config.task,
                    retry=RetryPolicy(config.retries, config.backoff),
                ),
                bus,
                self._storage,
                config.task_limit,
            )
            service = OrderService(self._storage, bus, self._live_figures)
            self.state = state = ServerState(
                config, service, loop, self.tokens, FailureThrottle(), max_connections, stats=stats
            )
            if config.panel_port is not None:
                await self._start_panel(bus, state)  # before the workers: it sees their first orders
            self._processing.start()
            for sock in sockets:
                listener = Listener(loop, sock, lambda: Connection(state), tls)
                listener.start()
                self._listeners.append(listener)
        except BaseException as exc:
            for sock in sockets:
                sock.close()
            await self.shutdown(quiet=True)
            if (shortage := startup_shortage(exc, config.workers)) is not None:
                raise StartupError(shortage) from None
            raise
        state.accepting = True
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            self.addresses.append((host, port))
            logger.info("listening on %s", show_address(host, port))
        await children_deaf(self._exit)
        announce_ready(config, self.addresses, tls is not None, self.tokens)
        self.started.set()

    async def _start_panel(self, bus: EventBus, state: ServerState) -> None:
        from pedidos.panel.web import Panel, PanelError, PanelSource  # only with --panel: aiohttp

        storage = self._storage
        assert storage is not None
        source = PanelSource(
            bus=bus,
            stats=state.stats,
            counts=storage.counts,
            latest=lambda n: storage.list_orders(None, None, 0, n, orden="desc"),
            figures=self._live_figures,
            workers=self.config.workers,
            # On a shared database, the service's nodes (none to show on SQLite).
            live_nodes=storage.live_nodes if self.nodo is not None else None,
            listing=storage.list_orders,
            tokens=state.tokens,
            throttle=state.throttle,
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
            ajustes=config.processing_options(),
        )

    # --- stop -----------------------------------------------------------------------

    async def shutdown(self, quiet: bool = False) -> None:
        if not quiet:
            logger.info("shutting down")
        timeout = self.config.shutdown_timeout
        state = self.state
        # The panel first: its open pages would otherwise keep reading a
        # database that is about to close.
        panel, self._panel = self._panel, None
        if panel is not None:
            await panel.stop()
        for listener in self._listeners:
            listener.close()
        if state is not None:
            state.accepting = False
        if state is not None and state.connections:
            state.drained.clear()
            state.service.release_waiters()
            for connection in list(state.connections):
                connection.close_when_answered()
            if not self._force_exit:
                busy = sum(1 for connection in state.connections if connection.busy)
                if busy:
                    logger.info(
                        "waiting for %s to be answered (up to %g s)", count(busy, "connection"), timeout
                    )
            try:
                await asyncio.wait_for(state.drained.wait(), timeout)
            except asyncio.TimeoutError:
                logger.warning("%s still busy; closing them", count(len(state.connections), "connection"))
            for connection in list(state.connections):
                connection.abort()
        if self._processing is not None:
            processing = self._processing
            await self._unless_forced(
                processing.stop(0 if self._force_exit else timeout), processing.kill_now
            )
        if self._storage is not None:
            await self._storage.stop(FORCED_WRITER_STOP_S if self._force_exit else timeout)
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
