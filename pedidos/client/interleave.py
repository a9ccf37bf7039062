"""Pipelining on one blocking socket: the loop behind `Client.pipeline`.

Requests go out while replies come in, through one selector: a client that
only wrote would fill the server's receive buffer while the server, whose
replies nobody read, stopped reading (backpressure), and both would wait for
ever. At most `window` requests are unanswered at a time.
"""

from __future__ import annotations

import selectors
import socket
import ssl
from collections.abc import Iterable, Iterator
from typing import Any

from pedidos.client.problems import MAX_REPLY_BYTES, closed, lost, silent, too_long
from pedidos.client.records import encode, parse_reply

CHUNK = 256 * 1024  # bytes asked of the socket per read


def interleaved(
    sock: socket.socket, buf: bytearray, requests: Iterable[Any], window: int, timeout: float | None
) -> Iterator[dict[str, Any]]:
    """Send `requests`, at most `window` unanswered, and yield every reply in
    order. `buf`: what was read past the last reply (kept across calls). The
    socket is left non-blocking; the caller puts its timeout back."""
    source = iter(requests)
    out = bytearray()
    in_flight = 0
    exhausted = False
    with selectors.DefaultSelector() as sel:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        while True:
            while not exhausted and in_flight < window:
                try:
                    out += encode(next(source))
                except StopIteration:
                    exhausted = True
                    break
                in_flight += 1
            if exhausted and in_flight == 0:
                return
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
            events = sel.select(timeout)
            if not events:
                raise silent(timeout, partial=bool(buf))
            mask = events[0][1]
            data = b""
            try:
                if mask & selectors.EVENT_WRITE:
                    del out[: sock.send(out)]
                if mask & selectors.EVENT_READ:
                    data = sock.recv(CHUNK)
                    if not data:
                        raise closed()
                    buf += data
                    while isinstance(sock, ssl.SSLSocket) and sock.pending():  # unseen by select()
                        more = sock.recv(CHUNK)
                        buf += more
                        data += more
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except OSError as exc:
                raise lost(exc) from None
            if b"\n" not in data:  # only the new bytes: a long reply comes in many reads
                if len(buf) > MAX_REPLY_BYTES:
                    raise too_long()
                continue
            end = buf.rfind(b"\n")
            lines = buf[:end].split(b"\n")
            del buf[: end + 1]
            for line in lines:
                in_flight -= 1
                yield parse_reply(line)
