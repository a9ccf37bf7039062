"""Creating and migrating the schema, one node at a time."""

from __future__ import annotations

from typing import Any

import psycopg

from pedidos.storage.postgres import sql


async def migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create what is missing, under an advisory lock: nodes starting at once
    would otherwise race on CREATE ... IF NOT EXISTS (which is not safe
    against a concurrent creator). The lock is the transaction's, so a node
    that dies here releases it."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (sql.SCHEMA_LOCK,))
        await conn.execute(sql.SCHEMA)
        await conn.execute(sql.MIGRATE)
