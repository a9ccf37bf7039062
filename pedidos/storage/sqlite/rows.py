"""The SQLite table: its schema, and how an order becomes a row and back.

The columns and their order are the contract's (section 7); `productos` is a
JSON array of strings that any program reading the file can parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from pedidos.domain import RawJSON

SCHEMA = """
CREATE TABLE IF NOT EXISTS pedidos (
    id             INTEGER PRIMARY KEY,
    cliente        TEXT    NOT NULL,
    productos      TEXT    NOT NULL,
    direccion      TEXT    NOT NULL,
    referencia     TEXT    UNIQUE,
    estado         TEXT    NOT NULL,
    fecha_recibido TEXT    NOT NULL,
    fecha_inicio   TEXT,
    fecha_fin      TEXT,
    worker         INTEGER,
    intentos       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pedidos_estado ON pedidos (estado, id);
CREATE INDEX IF NOT EXISTS pedidos_cliente ON pedidos (cliente, id);
"""

# Columns beyond the contract's, added to older databases as they open.
EXTRA_COLUMNS = {
    "propietario": "TEXT",  # digest of the access token that submitted the order (see auth.py)
    # Tasks (section 11): what the last call returned or raised, when a retry
    # may start, and how many of `intentos` were failures rather than crashes.
    "resultado": "TEXT",  # JSON
    "error": "TEXT",
    "reintentar_despues": "TEXT",
    "fallos": "INTEGER NOT NULL DEFAULT 0",
}

# `resultado` is read as its JSON text and passed on unparsed (domain.RawJSON).
# Written by this server's workers it is valid JSON; text another program wrote
# there that is not comes out as a JSON string, so a reply is never broken by
# it. SQLite checks in C, with the interpreter lock released (store.py gives a
# build without JSON functions Python ones).
RESULTADO = (
    "CASE WHEN resultado IS NULL THEN NULL"
    # SQLite's json_valid stops at a NUL: '[1]' followed by NUL and more is "valid".
    " WHEN typeof(resultado) = 'text' AND instr(resultado, char(0)) = 0 AND json_valid(resultado)"
    " THEN resultado"
    " ELSE json_quote(CAST(resultado AS TEXT)) END"
)
COLUMNS = (
    "id, cliente, productos, direccion, referencia, estado, fecha_recibido, "
    f"fecha_inicio, fecha_fin, worker, intentos, fallos, {RESULTADO}, error, reintentar_despues"
)
# json.dumps with an argument builds a new encoder on every call.
_encode_json = json.JSONEncoder(ensure_ascii=False).encode
# What JSON must escape in a string (ensure_ascii=False): anything else is copied.
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def products_json(productos: Sequence[str]) -> str:
    """`productos` as JSON text, exactly as `json.dumps(productos, ensure_ascii=False)`."""
    if productos and _NEEDS_ESCAPE.search("".join(productos)) is None:
        return '["' + '", "'.join(productos) + '"]'
    return _encode_json(productos)


def now() -> str:
    """ISO 8601 UTC with microseconds and offset, as the contract writes times."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def order_of_row(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": row[0],
        "cliente": row[1],
        "productos": json.loads(row[2]),
        "direccion": row[3],
        "referencia": row[4],
        "estado": row[5],
        "fecha_recibido": row[6],
        "fecha_inicio": row[7],
        "fecha_fin": row[8],
        "worker": row[9],
        "intentos": row[10],
        "fallos": row[11],
        "resultado": None if row[12] is None else RawJSON(row[12]),
        "error": row[13],
        "reintentar_despues": row[14],
    }


MAX_PARAMS = 500  # ids per IN (...) list, well under SQLite's variable limit


def parts(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    """`ids` in slices that fit one `IN (...)` list."""
    for i in range(0, len(ids), MAX_PARAMS):
        yield ids[i : i + MAX_PARAMS]


def due() -> str:
    """SQL: a pending order may be taken now (its one `?` is the time now).
    Times in one format compare as text in time order."""
    return "(reintentar_despues IS NULL OR reintentar_despues <= ?)"
