"""Closing a client's connection without throwing its replies away.

Closing a socket with input left unread makes the kernel reset the
connection, and a reset discards the replies still on their way to the
client. When the server ends a connection while the client may still be
sending (a stop, an oversized request, idleness), it half-closes instead: its
replies, then the end of its output; what the client still sends is read and
dropped until the client closes, or for `LINGER_S` after the replies stopped
going out.

`Closing` is how a `Connection` ends (a base of it): once every request is
answered, after idleness, or at once; none of it is on the per-request path.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import termios
from collections import deque
from collections.abc import Callable
from typing import Any

from pedidos.protocol.replies import encode_line, idle_notice
from pedidos.server.state import ServerState

# An idle close is logged as the connection's event, under the logger it
# always had: log filters and the tests select it by that name.
logger = logging.getLogger("pedidos.server.connection")

LINGER_S = 2.0


def unread(transport: asyncio.BaseTransport) -> bool:
    """Whether the client's input waits unread in the kernel (FIONREAD)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return True  # cannot tell: linger, the safe side
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] > 0
    except OSError:
        return True


class Linger:
    """A half-closed connection waiting for its client to close."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self._loop = loop
        self._transport = transport
        transport.write_eof()
        self._left = transport.get_write_buffer_size()
        self._timer = loop.call_later(LINGER_S, self._look)
        transport.resume_reading()  # to drop what comes

    def cancel(self) -> None:
        self._timer.cancel()

    def _look(self) -> None:
        """Close, unless the client is still reading replies (more of them
        went out since the last look): then look again later."""
        transport = self._transport
        if transport.is_closing():
            return
        left = transport.get_write_buffer_size()
        if 0 < left < self._left:
            self._left = left
            self._timer = self._loop.call_later(LINGER_S, self._look)
        else:
            transport.close()


class Closing:
    """How a `Connection` (connection.py) ends: `close_when_answered` (a stop,
    the client's end, an oversized request), `_check_idle` (silent too long)
    and `abort` (a stop whose wait ran out).

    A base of `Connection`, whose `__init__` sets the attributes below and
    which defines `_write` and `_pause_reading`. None of this runs per request:
    the per-request path stays whole in connection.py.
    """

    _state: ServerState
    _loop: asyncio.AbstractEventLoop
    _transport: asyncio.Transport | None
    _line: deque[Any]
    _parked: deque[Any]
    _closing: bool
    _eof_received: bool
    _linger: Linger | None
    _read_paused: bool
    _idle_timer: asyncio.TimerHandle | None
    _last_activity: float
    peer: str
    _write: Callable[[bytes], None]
    _pause_reading: Callable[[], None]

    @property
    def busy(self) -> bool:
        """Requests received and not answered yet."""
        return bool(self._line or self._parked)

    def close_when_answered(self) -> None:
        """Stop reading; close once every request received so far is answered."""
        self._closing = True
        self._pause_reading()
        if not self._line and not self._parked:
            self._close_now()

    def _close_now(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return
        if self._eof_received or not transport.can_write_eof() or not unread(transport):
            transport.close()
            return
        # The client is still sending: closing now would reset the connection (see above).
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._read_paused = False  # Linger reads, to drop what comes
        self._linger = Linger(self._loop, transport)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _arm_idle_timer(self, delay: float) -> None:
        if delay > 0:
            self._idle_timer = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        if self._closing:
            return  # closing already: nothing more is written
        timeout = self._state.config.idle_timeout
        idle_for = self._loop.time() - self._last_activity
        if self._line:  # waiting for its own replies is not idleness
            self._arm_idle_timer(timeout)
        elif idle_for >= timeout:
            # Per connection, so DEBUG as the opened/closed lines: at INFO a
            # crowd of idle clients would fill the log one line each.
            logger.debug("closing %s: idle for %.0f s", self.peer, idle_for)
            # Say why before closing: a person at telnet otherwise sees only
            # "Connection closed by foreign host".
            self._write(encode_line(idle_notice(timeout)))
            self._closing = True
            # What it sent that still waits unbegun, behind replies it has not
            # read, never begins: the notice tells it the connection is closed.
            self._parked.clear()
            self._close_now()
        else:
            self._arm_idle_timer(timeout - idle_for)
