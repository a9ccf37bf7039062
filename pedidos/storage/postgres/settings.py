"""What every PostgreSQL connection of a node is: the libpq settings a node
adds to the URL, the session settings of the event loop's connections, their
time limits, and the URL as a log may show it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# A statement unanswered this long gives its connection up: a half-open
# socket, or a stalled middlebox that takes the bytes and forwards nothing,
# must cost a few seconds of refusals, never a node whose commands (and lease
# renewals) wait for TCP to give up, minutes away, or for ever.
COMMAND_TIMEOUT_S = 10.0
# The node's own connections ask PostgreSQL to cancel a statement past this
# (`statement_timeout`, unless the URL asks for less): a slow statement (a
# listing over millions of rows, a wait for a lock another program holds) is
# then rolled back and answered with an error before COMMAND_TIMEOUT_S cuts the
# connection, and the node goes on taking orders instead of refusing them until
# it has reconnected. The schema's DDL is exempt (schema.py).
STATEMENT_TIMEOUT_S = COMMAND_TIMEOUT_S - 1
# libpq settings a node wants unless the URL says otherwise: give up on a
# silent server in seconds, not minutes, and notice a dead peer (no RST):
# keepalives for an idle connection, `tcp_user_timeout` (ms; Linux) for one
# whose statement the path stopped carrying. The latter is the only deadline
# of a worker's statements (COMMAND_TIMEOUT_S is the event loop's): without it
# a worker's finish over a dead path waited for TCP's own retries (~15 minutes).
DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "pedidos",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": str(int(COMMAND_TIMEOUT_S * 1000)),
}


def conninfo(url: str) -> str:
    """The URL with the node's connection defaults for what it leaves unsaid."""
    given = conninfo_to_dict(url)
    return make_conninfo(url, **{k: v for k, v in DEFAULTS.items() if k not in given})


def shown(url: str) -> str:
    """The connection string as a log may show it: never the password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable PostgreSQL URL>"
    if "password" in parts:
        parts["password"] = "***"
    host, port, dbname = parts.get("host", "localhost"), parts.get("port", "5432"), parts.get("dbname", "")
    user = parts.get("user")
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"


async def session(conn: psycopg.AsyncConnection[Any]) -> None:
    """The settings of every connection of a node's event loop. Explicit
    `synchronous_commit`: a database or role default of `off` would ack before
    the flush. `statement_timeout`: see STATEMENT_TIMEOUT_S."""
    await conn.execute(
        "SELECT set_config('synchronous_commit', 'on', false),"
        " (SELECT set_config('statement_timeout', %(limit)s, false)"
        "  WHERE current_setting('statement_timeout')::interval NOT BETWEEN interval '1 ms'"
        "  AND %(limit)s::interval)",
        {"limit": f"{int(STATEMENT_TIMEOUT_S * 1000)}ms"},
    )
