"""A Python client for the order server, so that nobody writes the protocol by hand.

    with Client("localhost", 8888) as client:
        receipt = client.submit("Ana", ["pan"], "Calle 1")
        order = client.wait(receipt.id)

    async with AsyncClient("::1", 8888) as client:
        receipts = [r async for r in client.submit_many(orders)]

With `token=` (default: the environment variable PEDIDOS_TOKEN) the client
authenticates right after the greeting; with `tls=True` it speaks TLS and
verifies the server's certificate (against `cafile=`, if given).

A refusal raises `Refused` (with the contract's error code and message); a
connection problem, including a server that stops answering within `timeout`
seconds or a failed TLS handshake, raises `ConnectionProblem`. Orders come back as `Order` records and
acknowledgements as `Receipt`s. `AsyncClient` lives in `pedidos.aclient`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

from pedidos.client.access import auth_request, authenticated, no_greeting, wrap
from pedidos.client.aio import AsyncClient
from pedidos.client.commands import Commands, Following, Plan
from pedidos.client.interleave import CHUNK, interleaved
from pedidos.client.problems import (
    MAX_REPLY_BYTES,
    ClosedIdle,
    ConnectionProblem,
    PedidosError,
    bare_host,
    closed,
    lost,
    reason,
    silent,
    too_long,
    unreachable,
    unresolved,
)
from pedidos.client.records import (
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    Order,
    Receipt,
    Refused,
    ServerStopping,
    Stats,
    UnexpectedReply,
    check_greeting,
    encode,
    order_request,
    parse_reply,
    receipt_or_refusal,
)
from pedidos.domain import DEFAULT_PORT
from pedidos.protocol.replies import DEMASIADO_GRANDE

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WINDOW",
    "AsyncClient",
    "Client",
    "ConnectionProblem",
    "Order",
    "PedidosError",
    "Receipt",
    "Refused",
    "ServerStopping",
    "Stats",
    "UnexpectedReply",
    "order_request",
]


class Client(Commands):
    """A blocking client: one connection, requests answered in order.

    Not thread-safe: give each thread its own. Methods connect on first use if
    the client was not opened with `with` or `connect()`.
    """

    def _setup(self) -> None:
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Try each address the host resolves to, IPv4 or IPv6, until one answers;
        then TLS and the token, if the client was given them."""
        self.close()
        context = self.access.context()
        host = bare_host(self.host)
        try:
            infos = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise unresolved(host, exc) from None
        failures: list[tuple[str, str]] = []
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self.timeout)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                failures.append((address[0], reason(exc)))
                continue
            if context is not None:  # a failure is final: every address has the same certificate
                sock = wrap(sock, context, host, self.timeout, self.access.cafile)
            self._sock = sock
            try:
                self._greet()
            except PedidosError:
                self.close()
                raise
            return
        raise unreachable(host, self.port, failures)

    def _greet(self) -> None:
        try:
            self.greeting = check_greeting(self._read(self.timeout))
        except ConnectionProblem as problem:
            raise no_greeting(problem, self.access.tls) from None
        token = self.access.token
        self.role = None if token is None else authenticated(self.request(auth_request(token)))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buf.clear()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # --- the protocol -------------------------------------------------------------

    def request(self, request: Any, timeout: float | None = None) -> dict[str, Any]:
        """Send one request and return the server's reply, `ok` or not. `timeout`:
        how long the reply may take (default: the client's timeout).

        A connection the server closed while nothing was asked (`--idle-timeout`)
        is opened again, as `AsyncClient` does; and so it is when the server's
        idle notice comes instead of the reply: the server began nothing after
        it, so the request is sent again on the new connection. A connection
        lost any other way after the request left is a `ConnectionProblem`:
        the request may have had its effect, and is not sent twice."""
        data = encode(request)
        allowance = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            if self._closed_meanwhile():
                self.close()  # nothing of this request has left yet: connect again
            try:
                self.send(data)
                reply = self._read(allowance)
            except ClosedIdle:
                if attempt == 2:
                    raise
                continue  # the notice came before any reply: this request never began
            except BaseException:
                # Interrupted (Ctrl-C, a signal handler) with the request out: its
                # reply would be taken for the next request's.
                self.close()
                raise
            if reply.get("error") == DEMASIADO_GRANDE:
                self.close()  # the server closes after it: the next call connects again
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _closed_meanwhile(self) -> bool:
        """Whether the server ended the connection since its last reply: its
        idle notice, its end, or anything else nobody asked for. Asked before a
        request leaves, with nothing in flight, so connecting again loses nothing."""
        sock = self._sock
        if sock is None:
            return False
        if self._buf:
            return True
        try:
            sock.setblocking(False)
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False  # nothing came (over TLS, perhaps a session ticket): still open
        except OSError:
            return True
        finally:
            sock.settimeout(self.timeout)
        self._buf += data
        return True  # its end (b""), or words before any request

    def send(self, data: bytes) -> None:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self._broken(lost(exc))

    def _read(self, allowance: float) -> dict[str, Any]:
        """The next reply line, which must come within `allowance` seconds."""
        assert self._sock is not None
        deadline = time.monotonic() + allowance
        scanned = 0  # looked at for its end already: a reply of many MB comes in many reads
        while True:
            end = self._buf.find(b"\n", scanned)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                try:
                    return parse_reply(line)
                except ConnectionProblem as problem:
                    self._broken(problem)
            scanned = len(self._buf)
            if scanned > MAX_REPLY_BYTES:  # all of it one line, unended
                self._broken(too_long())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._broken(silent(allowance, partial=bool(self._buf)))
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(CHUNK)
            except TimeoutError:
                self._broken(silent(allowance, partial=bool(self._buf)))
            except OSError as exc:
                self._broken(lost(exc))
            if not data:
                self._broken(closed())
            self._buf += data

    def _broken(self, problem: ConnectionProblem) -> NoReturn:
        # A reply that comes late would be taken for the next request's:
        # the connection cannot be used any more.
        self.close()
        raise problem

    def pipeline(self, requests: Iterable[Any], window: int = DEFAULT_WINDOW) -> Iterator[dict[str, Any]]:
        """Send requests without waiting for each reply, at most `window` unanswered;
        yield every reply in order. Sending and reading interleave, so neither side
        ever blocks on the other. Do not use the client for anything else until the
        iteration ends; stopping early closes the connection."""
        if self._sock is None or self._closed_meanwhile():
            self.connect()
        sock = self._sock
        assert sock is not None
        done = False
        try:
            yield from interleaved(sock, self._buf, requests, window, self.timeout)
            done = True
        finally:
            if done:
                sock.settimeout(self.timeout)
            else:
                self.close()

    # --- orders and commands --------------------------------------------------------

    def submit_many(
        self, requests: Iterable[dict[str, Any]], window: int = DEFAULT_WINDOW
    ) -> Iterator[Receipt | Refused]:
        """Send order objects (see `order_request`) pipelined; yield a Receipt or a
        Refused for each, in order. Refusals are yielded, not raised."""
        with contextlib.closing(self.pipeline(requests, window)) as replies:
            for reply in replies:
                yield receipt_or_refusal(reply)

    def follow(self, order_id: int, interval: float = 0.25) -> Iterator[Order]:
        """The order now, then again each time it changes, ending once it is final."""
        plan = Following(order_id, interval, self.timeout)
        yield plan.first(self.get(order_id))
        while not plan.done:
            request, timeout = plan.step()
            if (order := self._execute(request, plan.answer, timeout)) is not None:
                yield order

    # --- how Commands (commands.py) run here: blocking -------------------------------

    def _execute(
        self, request: Any, parse: Callable[[dict[str, Any]], Any], timeout: float | None = None
    ) -> Any:
        reply = self.request(request, timeout)
        try:
            return parse(reply)
        except UnexpectedReply as problem:  # not an order server's: like any other problem
            self._broken(problem)

    def _execute_until(self, plan: Plan) -> Any:
        while True:
            request, timeout = plan.step()
            if (result := self._execute(request, plan.answer, timeout)) is not None:
                return result
