"""The client side: a Python library and `cliente.py`.

`Client` (`blocking`) and `AsyncClient` (`aio`) speak the protocol for a
program, each command defined once for both in `commands`; `records` are what
they hand back, `shapes` what a reply must hold before they read it,
`problems` what goes wrong told in one line, `wire` the bytes of an asyncio
connection, `interleave` pipelining on one blocking socket, `access` tokens
and TLS; `cli/` is `python3 cliente.py`. Imports
the domain and the wire vocabulary (`pedidos.protocol`) only; nothing here
knows about the server's insides.

    from pedidos.client import Client, AsyncClient
"""

# The public names are the blocking module's `__all__`, listed once there.
from pedidos.client.blocking import *  # noqa: F403
from pedidos.client.blocking import __all__  # noqa: F401
