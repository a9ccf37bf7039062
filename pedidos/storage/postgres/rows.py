"""Rows of the PostgreSQL table as the contract's ORDER objects."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pedidos.domain import RawJSON


def iso(moment: datetime | None) -> str | None:
    """A timestamptz as the contract writes times: UTC, microseconds, offset."""
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def order(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of `sql.COLUMNS` as an ORDER."""
    return {
        "id": row[0],
        "cliente": row[1],
        "productos": row[2],
        "direccion": row[3],
        "referencia": row[4],
        "estado": row[5],
        "fecha_recibido": iso(row[6]),
        "fecha_inicio": iso(row[7]),
        "fecha_fin": iso(row[8]),
        "worker": row[9],
        "intentos": row[10],
        "fallos": row[11],
        "resultado": None if row[12] is None else RawJSON(row[12]),
        "error": row[13],
        "reintentar_despues": iso(row[14]),
        "nodo": row[15],
    }


def storable_text(text: str) -> str:
    """PostgreSQL text cannot hold NUL: written escaped rather than refused (a
    worker retries a write that fails until it succeeds)."""
    return text.replace("\x00", "\\x00")
