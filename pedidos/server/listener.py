"""Accepting connections, and what to do when file descriptors run out.

asyncio's own accept loop, on EMFILE, logs a traceback and schedules a retry
for every one of up to `backlog` connections waiting, each time: with a
backlog of 4096 that flooded the log with millions of lines and kept the loop
too busy to handle a signal. Here a listener that runs out pauses accepting
for a moment, says so once per episode, and the loop stays free for the
clients already connected and for signals.

`connection_budget` keeps it rare: `--max-connections` is capped below the
descriptor limit at start, leaving room for what else the server opens.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl
from collections.abc import Callable

from pedidos.descriptors import OUT_OF_RESOURCES, PAUSE_S
from pedidos.domain import show_address
from pedidos.logsetup import Repeating

logger = logging.getLogger(__name__)
# A plain-text client on a TLS port that sends something (a line typed at
# telnet, a browser's http://) gets a close: one line says why, per connection,
# and a client retrying in a loop is one line every 10 s. One that sends
# nothing and waits for the greeting (cliente.py without --tls) looks like a
# port check and stays at DEBUG: cliente.py tells its own user to use --tls.
not_tls = Repeating(logger)
# OpenSSL's words for a first record that is no TLS at all: text, an HTTP
# request, junk. (A TLS client that refuses the certificate, or one gone
# before a byte, is something else: the debug log only, as before.)
NOT_TLS_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "UNKNOWN_PROTOCOL",
        "PACKET_LENGTH_TOO_LONG",
    }
)

ACCEPT_BATCH = 100  # connections taken per readiness event, so that one listener cannot hog the loop
# Descriptors kept for what is not a connection: the database and its WAL
# files per reader thread, the lock file, listeners, the event loop, stdio,
# the writer's pipes, and per worker its queue, its pipe and its process.
RESERVED_FDS = 64
RESERVED_FDS_PER_WORKER = 8


def connection_budget(max_connections: int, workers: int, panel: int = 0) -> int:
    """`max_connections`, or less when the descriptor limit (`ulimit -n`) cannot
    hold that many besides `panel` connections of the panel. Raises the soft
    limit towards the hard one first."""
    reserved = RESERVED_FDS + RESERVED_FDS_PER_WORKER * workers + panel
    needed = max_connections + reserved
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return max_connections
    if soft <= reserved:
        # Not even room for what the rest is estimated to need: the server
        # starts all the same, and takes one connection so that it can be reached.
        logger.warning(
            "--max-connections %d does not fit in %d file descriptors (ulimit -n), fewer than the %d it "
            "would keep for the database, workers, pipes and panel: serving 1 connection at a time, "
            "refusing others with servidor_ocupado; raise ulimit -n (LimitNOFILE= under systemd)",
            max_connections,
            soft,
            reserved,
        )
        return 1
    capped = soft - reserved
    logger.warning(
        "--max-connections %d does not fit in %d file descriptors (ulimit -n; %d kept for the "
        "database, workers, pipes and panel): at most %d %s",
        max_connections,
        soft,
        reserved,
        capped,
        "connection" if capped == 1 else "connections",
    )
    return capped


def startup_shortage(exc: BaseException, workers: int) -> str | None:
    """The one line for an operator whose start ran out of file descriptors
    (too many --workers for `ulimit -n`), or None for any other failure."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.EMFILE, errno.ENFILE):
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (
        f"out of file descriptors while starting {workers} workers (ulimit -n is {soft}): "
        "raise the limit (ulimit -n; LimitNOFILE= under systemd) or give fewer --workers"
    )


class Listener:
    """Accepts on one listening socket; each connection gets a protocol from `factory`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        tls: ssl.SSLContext | None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._tls = tls
        self._fd = sock.fileno()
        self._retry: asyncio.TimerHandle | None = None
        # Said when it starts, then at most once every 10 s while it lasts: in a
        # storm of connections one accept in a retry gets through, and a line
        # per retry would say the same thing five times a second.
        self._exhausted = Repeating(logger)
        self._starting: set[asyncio.Task[None]] = set()
        self.closed = False

    def start(self) -> None:
        self._retry = None
        if not self.closed:
            self._loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._fd)
        self._sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up before we took it
            except OSError as exc:
                self._pause(exc)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._start_connection(conn, address))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_connection(self, conn: socket.socket, address: object) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._tls)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, EOFError) as exc:
            # A TLS handshake that failed, a client gone at once: nothing to answer.
            if isinstance(exc, ssl.SSLError) and exc.reason in NOT_TLS_REASONS:
                peer = show_address(*address[:2]) if isinstance(address, tuple) else "?"
                not_tls.info(
                    "connection from %s closed: it did not speak TLS, and this server speaks only TLS "
                    "(--tls-cert); a client needs TLS here (cliente.py --tls, openssl s_client)",
                    peer,
                    key="not TLS",
                )
            else:
                logger.debug("connection not started: %r", exc)
            conn.close()

    def _pause(self, exc: OSError) -> None:
        self._loop.remove_reader(self._fd)
        if exc.errno in OUT_OF_RESOURCES:
            self._exhausted.warning(
                "cannot accept connections: %s; pausing new connections (retrying every %g s), "
                "serving the open ones",
                exc.strerror,
                PAUSE_S,
                key=exc.errno,
            )
        else:
            self._exhausted.error(
                "cannot accept connections: %s; retrying every %g s", exc, PAUSE_S, key=exc.errno
            )
        self._retry = self._loop.call_later(PAUSE_S, self.start)
