"""One client connection: bytes in, requests to the service, replies out in order.

Replies leave in the order of the requests even though an order waits for a
commit and `esperar` waits for a worker: each request takes a place in line,
and the line is written out as its head becomes ready.

Backpressure: a client that sends many requests without reading the replies
stops being read once `MAX_IN_FLIGHT` are waiting or the transport's write
buffer is full, instead of buffering without bound. Requests already read but
not yet begun wait, parsed, until the line has room and the client reads again:
no new work starts for a client that is not reading what it asked for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Union

from pedidos.domain import NewOrder, show_address
from pedidos.logsetup import Repeating
from pedidos.protocol.framing import Decoder, TlsHello
from pedidos.protocol.replies import (
    NO_AUTORIZADO,
    RequestError,
    encode_line,
    error_reply,
    greeting,
)
from pedidos.protocol.telnet import TelnetReply
from pedidos.protocol.validation import Command, parse_request
from pedidos.server.auth import Principal, answer_token
from pedidos.server.closing import Closing, Linger
from pedidos.server.failures import SERVER_FULL, reply_of
from pedidos.server.state import ServerState

logger = logging.getLogger(__name__)
# A TLS client on this plain port (cliente.py --tls, https://): its handshake
# cannot read the reply, so the log says why it failed; a client retrying in
# a loop is one line every 10 s.
speaks_tls = Repeating(logger)

MAX_IN_FLIGHT = 1000
# Commands (every request but a new order) in the line at once. An order's
# reply is a few bytes; a command's may be a `listar` page of a thousand
# orders, and one read can hold thousands of them: the line's memory is this
# many replies. Pipelined orders, which do need depth, are not bounded by it.
MAX_COMMANDS_IN_FLIGHT = 16
Slot = Union[dict, "asyncio.Future[dict]"]


# One receive buffer for every connection: asyncio fills it and calls
# `buffer_updated` right away, on the loop's one thread, so connections never
# share it at the same time. A plain Protocol would get a fresh 256 KiB bytes
# object per read (three memory-mapping system calls each time).
_RECEIVE_BUFFER = memoryview(bytearray(64 * 1024))


class Connection(Closing, asyncio.BufferedProtocol):
    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._service = state.service
        self._loop = state.loop
        self._decoder = Decoder(state.config.max_request_bytes)
        self._line: deque[Slot] = deque()
        # Requests decoded from one read beyond MAX_IN_FLIGHT wait here, as
        # small parsed values rather than tasks, until the line has room.
        self._parked: deque[Any] = deque()
        self._commands = 0  # commands in the line (MAX_COMMANDS_IN_FLIGHT)
        self._transport: asyncio.Transport | None = None
        self._eof_received = False
        self._linger: Linger | None = None  # half-closed, waiting for the client (closing.py)
        self._read_paused = False
        self._write_paused = False
        self._closing = False
        self._last_order: asyncio.Future[Any] | None = None
        self._last_activity = 0.0
        self._begun_at = 0.0  # when the request now partly read began (data_received)
        self._idle_timer: asyncio.TimerHandle | None = None
        self.peer = "?"
        self._host = "?"
        self._tokens = state.tokens
        self._principal: Principal | None = None
        # Ack latency: each order's future and when its last byte arrived
        # (one clock read per read from the socket, not per order). An order
        # parked by backpressure counts from the latest read when it leaves
        # the park, so under backpressure the figure is a lower bound.
        self._stats = state.stats
        self._arrived = 0.0
        self._acks: deque[tuple[asyncio.Future[Any], float]] = deque()

    # --- asyncio.BufferedProtocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no asyncio.Transport subclasses, but have all its methods.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self._host = peer[0]
            self.peer = show_address(peer[0], peer[1])
        if not self._state.admit(self):
            transport.write(SERVER_FULL)
            transport.close()
            self._closing = True
            return
        transport.write(encode_line(greeting(token_needed=self._tokens is not None)))
        self._last_activity = self._loop.time()
        self._arm_idle_timer(self._state.config.idle_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECEIVE_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_RECEIVE_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._arrived = time.monotonic()
        decoder = self._decoder
        if not decoder.partial:
            # A request begun is activity too: a person typing an order line by
            # line at telnet has the whole idle timeout to finish it.
            self._begun_at = self._loop.time()
        for item in decoder.feed(data):
            if type(item) is TelnetReply:
                # Not a reply to a request: telnet waits for it (a refused
                # option, or the timing mark after Ctrl-C), so it goes now.
                self._write(item.data)
            else:
                self._parked.append(item)
                # Activity is a request, not bytes: a request sent a byte at a
                # time, or blank lines without end, would hold a connection
                # (and its place under --max-connections) for ever.
                self._last_activity = self._loop.time()
        if decoder.partial and self._begun_at > self._last_activity:
            self._last_activity = self._begun_at
        self._take_parked()
        if self._decoder.closed:
            self.close_when_answered()

    def _take_parked(self) -> None:
        parked, line = self._parked, self._line
        while (
            parked
            and len(line) < MAX_IN_FLIGHT
            and self._commands < MAX_COMMANDS_IN_FLIGHT
            and not self._write_paused
        ):
            item = parked.popleft()
            if isinstance(item, RequestError):
                if type(item) is TlsHello:
                    speaks_tls.info(
                        "connection from %s speaks TLS, and this server does not use TLS "
                        "(no --tls-cert): it gets json_invalido",
                        self.peer,
                        key="TLS",
                    )
                self._enqueue(item.reply())
            else:
                self._enqueue(self._handle(item))
        if parked or len(line) >= MAX_IN_FLIGHT:
            self._pause_reading()

    def eof_received(self) -> bool:
        # The client finished sending; answer what it sent, then close. TLS
        # cannot half-close, so there the transport closes at once.
        self._eof_received = True
        if self._linger is not None:
            return False  # our side was already done: close
        if not self._closing:  # closing already (a stop, an idle close): nothing more is answered
            self._parked.extend(self._decoder.finish())
            self._take_parked()
        self.close_when_answered()
        return self._transport is not None and self._transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._linger is not None:
            self._linger.cancel()
        for slot in self._line:
            if isinstance(slot, asyncio.Task):
                slot.cancel()
        self._line.clear()
        self._parked.clear()
        self._commands = 0
        self._acks.clear()
        self._state.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        transport = self._transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return  # closed already (idle, a stop): what is parked is never begun
        self._take_parked()
        if self._closing and not self._line and not self._parked:
            self._close_now()
        else:
            self._maybe_resume_reading()

    # --- requests --------------------------------------------------------------

    def _handle(self, value: Any) -> Slot:
        wants_auth = isinstance(value, dict) and value.get("accion") == "autenticar"
        if self._tokens is not None and self._principal is None and not wants_auth:
            return error_reply(
                NO_AUTORIZADO,
                'Este servidor pide un token: envíe primero {"accion": "autenticar", "token": "..."}.',
            )
        try:
            request = parse_request(value)
        except RequestError as refused:
            if wants_auth:
                self._principal = None  # a malformed token is a wrong one (_authenticate)
            return refused.reply()
        if isinstance(request, NewOrder):
            self._last_order = self._service.submit(request, self._principal, self._on_ready)
            self._acks.append((self._last_order, self._arrived))
            return self._last_order
        if wants_auth:
            return self._authenticate(request.args["token"])
        # Who asks is who the connection was when the request arrived: an
        # `autenticar` pipelined after it must not change what it may see.
        self._commands += 1
        return self._loop.create_task(self._command(request, self._last_order, self._principal))

    async def _command(
        self, command: Command, after: asyncio.Future[Any] | None, principal: Principal | None
    ) -> dict:
        # A command sees the orders sent before it on this connection.
        if after is not None and not after.done():
            await asyncio.wait([after])
        return await self._service.command(command, principal)

    def _authenticate(self, token: str) -> Slot:
        principal, reply = answer_token(
            self._tokens, self._state.throttle, self._loop, self._host, self.peer, token
        )
        # A wrong token leaves the connection with none, not with the one
        # before it: what follows was meant for someone else.
        self._principal = principal
        return reply

    def _enqueue(self, slot: Slot) -> None:
        if isinstance(slot, dict) and not self._line:
            self._write(encode_line(slot))
            return
        self._line.append(slot)
        # An order's future wakes the connection through the writer's notify.
        if isinstance(slot, asyncio.Future) and slot is not self._last_order:
            slot.add_done_callback(self._on_ready)

    def _on_ready(self, _future: asyncio.Future[Any] | None = None) -> None:
        out = []
        acks, written = self._acks, 0.0
        while self._line:
            head = self._line[0]
            if isinstance(head, asyncio.Future):
                if not head.done():
                    break
                if acks and acks[0][0] is head:
                    arrived = acks.popleft()[1]
                    head = reply_of(head, self.peer)
                    # Only a new order's ack is bytes (replies.order_ack): a
                    # duplicado or a refused order, counted, would make
                    # pedidos_ack_segundos_count drift from pedidos_recibidos_total.
                    # Inline: once per ack.
                    if type(head) is bytes:
                        written = written or time.monotonic()
                        self._stats.ack.observe(written - arrived)
                else:
                    if isinstance(head, asyncio.Task):  # a command's (an order's is a plain future)
                        self._commands -= 1
                    head = reply_of(head, self.peer)
            self._line.popleft()
            out.append(head if isinstance(head, bytes) else encode_line(head))
        if out:
            self._write(b"".join(out))
            # Idleness counts from the last reply too: a client that waited for
            # one (a long `esperar`) has been busy, not idle.
            self._last_activity = self._loop.time()
        self._take_parked()
        if not self._line and not self._parked:
            if self._closing:
                self._close_now()
            else:
                self._maybe_resume_reading()
        elif len(self._line) < MAX_IN_FLIGHT // 2:
            self._maybe_resume_reading()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing() and self._linger is None:
            self._transport.write(data)

    # --- flow control (closing and idleness: closing.py) -----------------------

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None and not self._transport.is_closing():
            self._read_paused = True
            self._transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._read_paused
            and not self._closing
            and not self._write_paused
            and not self._parked
            and len(self._line) < MAX_IN_FLIGHT // 2
            and self._transport is not None
        ):
            self._read_paused = False
            self._transport.resume_reading()
