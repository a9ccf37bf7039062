"""`AsyncClient`: the order client for asyncio programs (also importable from `pedidos.client`).

    async with AsyncClient("localhost", 8888) as client:
        receipt = await client.submit("Ana", ["pan"], "Calle 1")
        order = await client.wait(receipt.id)

One connection carries any number of requests at once: tasks may share a
client, and each gets its own reply, because the server answers in order and
every request waits on its own place in line.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

from pedidos.client import records
from pedidos.client.access import auth_request, authenticated, no_greeting, tls_failure
from pedidos.client.commands import Commands, Following, Plan
from pedidos.client.problems import (
    ClosedIdle,
    ConnectionProblem,
    bare_host,
    reason,
    unreachable,
    unresolved,
)
from pedidos.client.records import DEFAULT_WINDOW, Refused, check_greeting, encode, receipt_or_refusal
from pedidos.client.wire import Wire
from pedidos.protocol.replies import DEMASIADO_GRANDE

Reply = dict[str, Any]


class AsyncClient(Commands):
    """An asyncio client: `async with AsyncClient(host, port) as client: ...`.

    Connects on first use if not opened with `async with` or `connect()`, and
    again after the connection was lost."""

    def _setup(self) -> None:
        self._wire: Wire | None = None
        self._connecting: asyncio.Lock | None = None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Try each address the host resolves to, IPv4 or IPv6, until one answers."""
        await self.close()
        loop = asyncio.get_running_loop()
        context = self.access.context()
        host = bare_host(self.host)
        try:
            infos = await loop.getaddrinfo(host, self.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise unresolved(host, exc) from None
        failures: list[tuple[str, str]] = []
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, address), self.timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                sock.close()
                why = "no contesta" if isinstance(exc, asyncio.TimeoutError) else reason(exc)
                failures.append((address[0], why))
                continue
            except BaseException:
                sock.close()
                raise
            wire = await self._open(sock, context, host)
            try:
                await self._greet(wire)
            except BaseException:
                wire.close()
                raise
            # Only now is it the connection: a task that found it before the
            # token was accepted would write ahead of `autenticar`.
            self._wire = wire
            return
        raise unreachable(host, self.port, failures)

    async def _open(self, sock: socket.socket, context: ssl.SSLContext | None, host: str) -> Wire:
        loop = asyncio.get_running_loop()
        if context is None:
            return (await loop.create_connection(lambda: Wire(self.timeout), sock=sock))[1]
        # A failure is final, not a reason to try another address: every
        # address has the same certificate.
        try:
            _, wire = await loop.create_connection(
                lambda: Wire(self.timeout),
                sock=sock,
                ssl=context,
                server_hostname=host,
                ssl_handshake_timeout=self.timeout,
            )
        except OSError as exc:  # the handshake's timeout too (ConnectionAbortedError)
            sock.close()
            raise tls_failure(exc, host, self.timeout, self.access.cafile) from None
        except BaseException:
            sock.close()
            raise
        return wire

    async def _greet(self, wire: Wire) -> None:
        try:
            self.greeting = check_greeting(await wire.greeting)
        except ConnectionProblem as problem:
            raise no_greeting(problem, self.access.tls) from None
        token = self.access.token
        self.role = None
        if token is not None:
            future = wire.expect(self.timeout)
            wire.write(encode(auth_request(token)))
            self.role = authenticated(await future)

    async def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
        self._wire = None

    async def _connected(self) -> Wire:
        if self._wire is None or self._wire.problem is not None:
            # Two tasks finding the connection gone must not both reconnect.
            self._connecting = self._connecting or asyncio.Lock()
            async with self._connecting:
                if self._wire is None or self._wire.problem is not None:
                    await self.connect()
        assert self._wire is not None
        return self._wire

    # --- the protocol ---------------------------------------------------------------

    async def request(self, request: Any, timeout: float | None = None) -> Reply:
        """Send one request and return the server's reply, `ok` or not.

        A connection the server closed while nothing was asked (`--idle-timeout`)
        is opened again; and so it is when the server's idle notice comes
        instead of the reply: the server began nothing after it, so the request
        is sent again on the new connection. A connection lost any other way
        after the request left is a `ConnectionProblem`: the request may have
        had its effect, and is not sent twice."""
        data = encode(request)
        allowance = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            wire = await self._connected()
            future = wire.expect(allowance)
            wire.write(data)
            try:
                await wire.drain()
                reply = await future
            except ClosedIdle:
                if attempt == 2:
                    raise
                continue  # the notice came before this reply: this request never began
            if reply.get("error") == DEMASIADO_GRANDE and self._wire is wire:
                await self.close()  # the server closes after it: the next call connects again
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    async def pipeline(
        self, requests: Iterable[Any] | AsyncIterable[Any], window: int = DEFAULT_WINDOW
    ) -> AsyncIterator[Reply]:
        """Send requests without waiting for each reply, at most `window` unanswered;
        yield every reply in order. The client stays usable meanwhile."""
        wire = await self._connected()
        # A plain iterable is ready at once, so it goes out in batches (fewer
        # writes); an async source may trickle, so each request leaves as it comes.
        step = 1 if isinstance(requests, AsyncIterable) else max(1, window // 4)
        pending: deque[asyncio.Future[Reply]] = deque()
        batch: list[bytes] = []
        async for request in _each(requests):
            batch.append(encode(request))
            if len(batch) < step:
                continue
            pending.extend(wire.expect(self.timeout) for _ in batch)
            wire.write(b"".join(batch))
            batch.clear()
            await wire.drain()
            while len(pending) > window - step:
                yield await pending.popleft()
        if batch:
            pending.extend(wire.expect(self.timeout) for _ in batch)
            wire.write(b"".join(batch))
        while pending:
            yield await pending.popleft()

    # --- orders and commands --------------------------------------------------------

    async def submit_many(
        self, requests: Iterable[dict[str, Any]] | AsyncIterable[dict[str, Any]], window: int = DEFAULT_WINDOW
    ) -> AsyncIterator[records.Receipt | Refused]:
        """Send order objects pipelined; yield a Receipt or a Refused for each, in order."""
        async for reply in self.pipeline(requests, window):
            yield receipt_or_refusal(reply)

    async def follow(self, order_id: int, interval: float = 0.25) -> AsyncIterator[records.Order]:
        """The order now, then again each time it changes, ending once it is final."""
        plan = Following(order_id, interval, self.timeout)
        yield plan.first(await self.get(order_id))
        while not plan.done:
            if (order := plan.answer(await self.request(*plan.step()))) is not None:
                yield order

    # --- how Commands (commands.py) run here: awaited -------------------------------

    async def _execute(
        self, request: Any, parse: Callable[[Reply], Any], timeout: float | None = None
    ) -> Any:
        return parse(await self.request(request, timeout))

    async def _execute_until(self, plan: Plan) -> Any:
        while (result := plan.answer(await self.request(*plan.step()))) is None:
            pass
        return result


async def _each(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
