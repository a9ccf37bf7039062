"""The bytes of one `AsyncClient` connection, as an asyncio protocol.

The server answers in the order of the requests, so each request takes a
place in line (`expect`) just before it is written, and each reply line goes
to the oldest place. No task reads the socket: replies are handed out as they
arrive, which keeps thousands of pipelined requests cheap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from pedidos.client.problems import MAX_REPLY_BYTES, ConnectionProblem, closed, lost, silent, too_long
from pedidos.client.records import parse_reply

Reply = dict[str, Any]


class Wire(asyncio.Protocol):
    """The connection: replies matched to requests in order, and a watchdog that
    fails everything pending when the server leaves the request at the head of
    the line unanswered for longer than it is allowed."""

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._pending: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._outgoing: list[bytes] = []  # written this turn of the loop, not yet sent
        self._writable = asyncio.Event()
        self._writable.set()
        self.problem: ConnectionProblem | None = None
        # The server speaks first: its greeting answers a request nobody sent.
        self.greeting = self.expect(timeout)

    def expect(self, allowance: float) -> asyncio.Future[Reply]:
        """A place in line for the reply to the next request written."""
        if self.problem is not None:
            raise self.problem
        future: asyncio.Future[Reply] = self._loop.create_future()
        if not self._pending:
            self._arm(allowance)
        self._pending.append((future, allowance))
        return future

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            # Closed by either end but not yet lost: asyncio would drop the
            # bytes (and, over TLS, log a warning for each): fail the line now.
            self._fail(closed())
            raise self.problem  # type: ignore[misc]
        # What the tasks write in one turn of the loop leaves in one write: a
        # socket that broke is then written to once before the loss is known,
        # not once per task (asyncio logs a warning for every write past the
        # fifth to a lost connection), and many small requests cost one send.
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(data)

    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if self.problem is None and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()
        if self.problem is not None:
            raise self.problem

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(ConnectionProblem("la conexión se cerró antes de la respuesta"))

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no asyncio.Transport subclasses, but have all its methods.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # Only the new bytes are searched: a reply of many MB comes in many
        # reads, and searching all of it each time cost seconds (64 MB: 2.2 s).
        end = data.rfind(b"\n")
        if end < 0:
            self._buf += data
            if len(self._buf) > MAX_REPLY_BYTES:
                self._abort(too_long())
            return
        self._buf += data[:end]
        lines = self._buf.split(b"\n")
        self._buf = bytearray(data[end + 1 :])
        for line in lines:
            try:
                reply = parse_reply(line)
            except ConnectionProblem as problem:  # also the server's notice before it closes
                self._abort(problem)
                return
            if not self._pending:
                self._abort(ConnectionProblem("el servidor respondió algo que nadie pidió"))
                return
            future, _ = self._pending.popleft()
            if not future.done():  # its caller may have given up on it
                future.set_result(reply)
        if self._pending:
            self._arm(self._pending[0][1])
        elif self._timer is not None:
            self._timer.cancel()

    def eof_received(self) -> None:
        # The server closed its side: nothing more will be answered. Said now,
        # not at connection_lost, so that no request is written in between.
        self._fail(closed())

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._fail(closed())
        else:
            self._fail(lost(exc))
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- failing ---------------------------------------------------------------

    def _arm(self, allowance: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(allowance, self._silent, allowance)

    def _silent(self, allowance: float) -> None:
        self._abort(silent(allowance, partial=bool(self._buf)))

    def _abort(self, problem: ConnectionProblem) -> None:
        self._fail(problem)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, problem: ConnectionProblem) -> None:
        if self.problem is None:
            self.problem = problem
        if self._timer is not None:
            self._timer.cancel()
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(self.problem)
                # Requests nobody awaits any more (an abandoned pipeline) must
                # not log "exception was never retrieved"; awaiters still get it.
                future.exception()
