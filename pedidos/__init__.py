"""pedidos: a concurrent order service (asyncio server, worker processes, SQLite)."""

__version__ = "1.1.0"
