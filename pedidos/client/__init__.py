"""The client side: a Python library and `cliente.py`.

`Client` (blocking) and `AsyncClient` (asyncio) speak the protocol for a
program, each command defined once for both in `commands`; `records` are what
they hand back, `wire` the bytes of an asyncio
connection, `access` tokens and TLS; `cli/` is `python3 cliente.py`. Imports
the domain and the wire vocabulary (`pedidos.protocol`) only; nothing here
knows about the server's insides.

    from pedidos.client import Client, AsyncClient
"""

from pedidos.client.blocking import (
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    AsyncClient,
    Client,
    ConnectionProblem,
    Order,
    PedidosError,
    Receipt,
    Refused,
    ServerStopping,
    Stats,
    order_request,
)

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
    "order_request",
]
