"""pedidos: a concurrent order service (asyncio server, worker processes, SQLite or PostgreSQL).

The layers are the subpackages, each saying in its own docstring what lives in
it: `protocol` (the wire), `server`, `processing` (the workers), `storage`
(SQLite, PostgreSQL), `panel` (the optional web panel), `client` (the library
and `cliente.py`) and `tools` (benchmark and soak). The modules here are what
several layers share, importing none of the layers: `domain` (an order, its
states and limits), `events` (the event bus), `stats` (the server's running
figures), `background` (a coroutine run beside the server's work),
`descriptors` (the accept loops' pause when descriptors run out), `logsetup`,
`stopsignals`, `wording`, `extras` (the install hint of an optional extra) and
`pyversion`. `__main__`, `bench` and `soak` are what `python3 -m pedidos`,
`-m pedidos.bench` and `-m pedidos.soak` run.
"""

__version__ = "1.1.0"
