"""Closing a client's connection without throwing its replies away.

Closing a socket with input left unread makes the kernel reset the
connection, and a reset discards the replies still on their way to the
client. When the server ends a connection while the client may still be
sending (a stop, an oversized request, idleness), it half-closes instead: its
replies, then the end of its output; what the client still sends is read and
dropped until the client closes, or for `LINGER_S` after the replies stopped
going out.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios

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
