"""The panel's listening sockets, with a cap on its connections.

aiohttp takes every connection offered, and each holds a file descriptor of
the server's process for as long as the client likes (a half-sent request
waits for ever, a keep-alive one for an hour). Enough of them on the panel's
port would leave the order port without descriptors to accept with. So the
panel accepts by itself, and holds at most `MAX_CONNECTIONS`
(pedidos/panel/__init__.py, reserved by the server's descriptor budget): at
the cap it stops accepting, and new connections wait in the kernel's backlog,
holding no descriptor of ours, until one closes. The count is exact: taken at
accept, given back when the connection ends (asyncio's own server would call
aiohttp's factory a loop pass later, after the descriptor is spent).

The cap alone would let 256 clients that never finish a request (slowloris:
a header line every few seconds) shut everyone else out of the panel, and
aiohttp has no deadline for a request's head. So each connection has
`HEAD_S` to send a request's head whole, counted from its first byte (from
the connection's start for the first request); past it the connection is
closed. A response being streamed (`/eventos`) and an idle keep-alive
connection run no such clock: aiohttp's keep-alive timeout is the latter's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from aiohttp import web

from pedidos.descriptors import OUT_OF_RESOURCES, PAUSE_S
from pedidos.panel import MAX_CONNECTIONS

logger = logging.getLogger(__name__)

BACKLOG = 128
ACCEPT_BATCH = 32  # connections taken per readiness event: the order port shares the loop
HEAD_S = 10.0  # a request's head, first byte to blank line: a browser's takes milliseconds


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, telling the site when it ends,
    and closing it when a request's head takes longer than `HEAD_S`."""

    __slots__ = ("_handler", "_site", "_ended", "_transport", "_deadline", "_tail")

    def __init__(self, handler: Any, site: CappedSite) -> None:
        self._handler, self._site, self._ended = handler, site, False
        self._transport: Any = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes of a head not yet ended: its blank line may be cut

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._start_clock()
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        seen = self._tail + data
        # A head ends at a blank line (CRLF as every client sends it; LF alone
        # as the parser also takes it). What follows it begins another request.
        crlf, lf = seen.rfind(b"\r\n\r\n"), seen.rfind(b"\n\n")
        end = max(crlf + 4 if crlf >= 0 else 0, lf + 2 if lf >= 0 else 0)
        if end:
            self._stop_clock()
        rest = seen[end:]
        if rest and self._deadline is None:
            self._start_clock()
        self._tail = rest[-3:]
        self._handler.data_received(data)

    def _start_clock(self) -> None:
        self._stop_clock()
        self._deadline = asyncio.get_running_loop().call_later(HEAD_S, self._too_slow)

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        # Not logged: under a slowloris that would be a line per connection.
        self._deadline = None
        self._transport.abort()

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        self.end()
        self._handler.connection_lost(exc)

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._site.ended()


class _Listening:
    """What aiohttp's runner reads of a site's server: its sockets, and close()."""

    def __init__(self, site: CappedSite) -> None:
        self._site = site

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._site.sockets)

    def close(self) -> None:
        self._site.close()

    async def wait_closed(self) -> None:
        return None


class CappedSite(web.BaseSite):
    def __init__(self, runner: web.BaseRunner, host: str, port: int, limit: int = MAX_CONNECTIONS) -> None:
        super().__init__(runner)
        self._host, self._port, self._limit = host, port, limit
        self.sockets: list[socket.socket] = []
        self.open = 0  # connections accepted and not ended
        self._accepting = False
        self._closed = False
        self._said_full = False  # in an episode at the cap: said once, not again until half are free

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # one socket per family, as the order port
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.setblocking(False)
        except OSError:
            self.close()
            raise
        self._server = _Listening(self)  # type: ignore[assignment]
        self._accept_again()

    def close(self) -> None:
        self._closed = True
        self._stop_accepting()
        for sock in self.sockets:
            sock.close()

    def ended(self) -> None:
        self.open -= 1
        if self.open < self._limit // 2:
            self._said_full = False
        if not self._accepting and self.open < self._limit:
            self._accept_again()

    def _accept_again(self) -> None:
        if self._closed or self._accepting:
            return
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._accepting = True

    def _stop_accepting(self) -> None:
        if self._accepting:
            loop = asyncio.get_running_loop()
            for sock in self.sockets:
                loop.remove_reader(sock.fileno())
            self._accepting = False

    def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            if self.open >= self._limit:
                self._stop_accepting()
                if not self._said_full:
                    self._said_full = True
                    logger.warning("panel: %d connections open, accepting more as they close", self._limit)
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._stop_accepting()
                    loop.call_later(PAUSE_S, self._accept_again)
                    return
                continue  # that one connection failed (ECONNABORTED): the next
            self.open += 1
            conn.setblocking(False)
            loop.create_task(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        server = self._runner.server
        protocol = _Counted(server(), self) if server is not None else None
        try:
            if protocol is None or self._closed:
                raise ConnectionError("the panel is stopping")
            await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock=conn)
        except Exception:
            conn.close()
            if protocol is not None:
                protocol.end()
            else:
                self.ended()
