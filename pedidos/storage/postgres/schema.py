"""Creating and migrating the schema, one node at a time."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg import errors

from pedidos.storage.postgres import sql

ATTEMPTS = 5  # a migration PostgreSQL broke up as a deadlock is tried again, this often


async def migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create what is missing. A node starting on a database that has it all
    only looks (`sql.SCHEMA_CURRENT`, no lock on any table): the DDL below locks
    `pedidos` (CREATE INDEX IF NOT EXISTS and ALTER TABLE take their locks
    before they look), which would stop every other node's intake meanwhile and
    can deadlock with their statements.

    What is missing is created under an advisory lock: nodes starting at once
    would otherwise race on CREATE ... IF NOT EXISTS (which is not safe against
    a concurrent creator). The lock is the transaction's, so a node that dies
    here releases it."""
    for attempt in range(1, ATTEMPTS + 1):
        cur = await conn.execute(sql.SCHEMA_CURRENT)
        row = await cur.fetchone()
        if row is not None and row[0]:
            return
        try:
            async with conn.transaction():
                # DDL on a big table takes its time: not a slow statement to cancel.
                await conn.execute("SET LOCAL statement_timeout = 0")
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (sql.SCHEMA_LOCK,))
                await conn.execute(sql.SCHEMA)
                await conn.execute(sql.MIGRATE)
            return
        except errors.DeadlockDetected:
            if attempt == ATTEMPTS:
                raise
            await asyncio.sleep(0.1 * attempt)
