"""The SQLite table: its schema, and how an order becomes a row and back.

The columns and their order are the contract's (section 7); `productos` is a
JSON array of strings that any program reading the file can parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

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
}

COLUMNS = (
    "id, cliente, productos, direccion, referencia, estado, fecha_recibido, "
    "fecha_inicio, fecha_fin, worker, intentos"
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
    }
