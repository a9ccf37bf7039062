"""Every command of the protocol, defined once for both clients.

redis-py's pattern (`commands/core.py`): `Commands` builds each request and
says how to read its reply; the client it is mixed into carries it out with
`_execute` (one request) or `_execute_until` (a `Plan` of several). `Client`
does that blocking and returns the result; `AsyncClient` does it in a
coroutine, so there each command is awaited. How a command reads the wire is
then written once, and the two clients differ only in how they wait.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pedidos.client.access import Access
from pedidos.client.records import (
    DEFAULT_TIMEOUT,
    MAX_WAIT,
    TIEMPO_AGOTADO,
    Order,
    Receipt,
    Stats,
    checked,
    list_request,
    not_stopping,
    order_of,
    order_request,
    orders_of,
    polled_order,
    receipt_of,
    stats_of,
    wait_request,
)
from pedidos.domain import DEFAULT_PORT

Reply = dict[str, Any]


class Plan(Protocol):
    """A command that takes several requests: ask `step()` for the next
    request and its time allowance, hand its reply to `answer()`, until that
    returns something other than None."""

    def step(self) -> tuple[Reply, float]: ...

    def answer(self, reply: Reply) -> Any: ...


class Waiting:
    """`esperar` for any time: the server takes at most MAX_WAIT per request."""

    def __init__(self, order_id: int, timeout: float | None, allowance: float) -> None:
        self._id = order_id
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._allowance = allowance  # for the reply to travel, beyond the wait itself
        self._left: float | None = None

    def step(self) -> tuple[Reply, float]:
        self._left = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        step = MAX_WAIT if self._left is None else min(self._left, MAX_WAIT)
        return wait_request(self._id, step), step + self._allowance

    def answer(self, reply: Reply) -> Order | None:
        reply = not_stopping(reply)  # the server is stopping: no use asking again
        if reply.get("error") != TIEMPO_AGOTADO or (self._left is not None and self._left <= MAX_WAIT):
            return order_of(reply)
        return None  # the server's longest wait ran out, ours did not: ask again


class Following:
    """`follow`: the order now, then each change, until it is final. The
    client asks `first()` with the order as it stands, then `step()` and
    `answer()` while not `done`; `answer()` is the changed order, or None."""

    def __init__(self, order_id: int, interval: float, allowance: float) -> None:
        self._request = wait_request(order_id, interval)
        self._allowance = interval + allowance
        self.order: Order | None = None

    def first(self, order: Order) -> Order:
        self.order = order
        return order

    @property
    def done(self) -> bool:
        return self.order is not None and self.order.final

    def step(self) -> tuple[Reply, float]:
        return self._request, self._allowance

    def answer(self, reply: Reply) -> Order | None:
        now = polled_order(reply)
        if now == self.order:
            return None
        self.order = now
        return now


def receipt_checked(reply: Reply) -> Receipt:
    return receipt_of(checked(reply))


class Commands:
    """The commands, over `_execute` and `_execute_until` (see the module
    docstring). In `AsyncClient` each returns an awaitable of what is shown."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        token: str | None = None,
        tls: bool = False,
        cafile: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.access = Access(token, tls, cafile, ssl_context)
        self.greeting: Reply = {}
        self.role: str | None = None  # what the server made of the token, once connected
        self._setup()

    def _setup(self) -> None:
        """The client's own state: its connection, not yet open."""

    def _execute(self, request: Reply, parse: Callable[[Reply], Any], timeout: float | None = None) -> Any:
        raise NotImplementedError

    def _execute_until(self, plan: Plan) -> Any:
        raise NotImplementedError

    def call(self, request: Reply, timeout: float | None = None) -> Reply:
        """Like `request`, but a refusal raises `Refused`."""
        return self._execute(request, checked, timeout)

    def submit(
        self, cliente: str, productos: Sequence[str], direccion: str, referencia: str | None = None
    ) -> Receipt:
        return self._execute(order_request(cliente, productos, direccion, referencia), receipt_checked)

    def get(self, order_id: int | None = None, *, referencia: str | None = None) -> Order:
        """The order with that id, or (`referencia=`) with that key of the client's own."""
        if (order_id is None) == (referencia is None):
            raise ValueError("get() takes an order id or referencia=, exactly one of them")
        key: Reply = {"id": order_id} if referencia is None else {"referencia": referencia}
        return self._execute({"accion": "consultar", **key}, order_of)

    def wait(self, order_id: int, timeout: float | None = 30.0) -> Order:
        """The order once it is final; `Refused` with code `tiempo_agotado` (and the
        order as it stands in `.order`) if not within `timeout` s (None: no limit)."""
        return self._execute_until(Waiting(order_id, timeout, self.timeout))

    def list(
        self,
        estado: str | None = None,
        cliente: str | None = None,
        desde_id: int = 0,
        limite: int = 100,
        *,
        contiene: str | None = None,
        orden: str = "asc",
    ) -> list[Order]:
        """Orders after `desde_id`, oldest first; with `orden="desc"`, newest first
        and below `desde_id` (0: from the newest). `cliente` is the exact name,
        `contiene` a part of it, any case."""
        request = list_request(estado, cliente, desde_id, limite, contiene, orden)
        return self._execute(request, orders_of)

    def cancel(self, order_id: int) -> Order:
        return self._execute({"accion": "cancelar", "id": order_id}, order_of)

    def retry(self, order_id: int) -> Order:
        """`reintentar`: a `fallido` order back to `pendiente` with a fresh set of
        attempts; `Refused` with code `no_reintentable` in any other state."""
        return self._execute({"accion": "reintentar", "id": order_id}, order_of)

    def stats(self) -> Stats:
        return self._execute({"accion": "estadisticas"}, stats_of)
