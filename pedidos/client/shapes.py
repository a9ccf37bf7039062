"""What a reply must hold before the client reads it.

A reply that parses but lacks a field the contract promises, or holds one of
another type, comes from something that is not a working order server (or
from a bug in one): `UnexpectedReply`, a `ConnectionProblem` that names the
field, rather than a `KeyError` deep in the code that reads it, or a record
that breaks later in the hands of whoever uses it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pedidos.client.problems import ConnectionProblem


class UnexpectedReply(ConnectionProblem):
    """A reply that is not what the contract says: not an order server's."""

    def __init__(self, what: str) -> None:
        super().__init__(f"respuesta inesperada del servidor: {what}")


_KINDS = {int: "un número entero", float: "un número", str: "un texto", list: "una lista", dict: "un objeto"}


def field(data: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    """`data[name]`, checked to be a `kind` (an int is a number too; a bool
    is neither); None if `optional` and absent or null."""
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        said = "falta" if value is None else f"no es {_KINDS[kind]}"
        raise UnexpectedReply(f"'{name}' {said}")
    return value


def moment(data: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    """A time as the server writes it (ISO 8601), checked to read as one."""
    text = field(data, name, str, optional=optional)
    if text is not None:
        try:
            datetime.fromisoformat(text)
        except ValueError:
            raise UnexpectedReply(f"'{name}' no es una fecha") from None
    return text


def texts(data: dict[str, Any], name: str) -> list[str]:
    items = field(data, name, list)
    if not all(isinstance(item, str) for item in items):
        raise UnexpectedReply(f"'{name}' no es una lista de textos")
    return items


def objects(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = field(data, name, list)
    if not all(isinstance(item, dict) for item in items):
        raise UnexpectedReply(f"'{name}' no es una lista de objetos")
    return items


def counts(data: dict[str, Any], name: str) -> dict[str, int]:
    items = field(data, name, dict)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in items.values()):
        raise UnexpectedReply(f"'{name}' no es un objeto de cuentas")
    return items


def stats(reply: dict[str, Any]) -> dict[str, Any]:
    """`estadisticas`: its figures checked, `nodos` (section 9) included."""
    counts(reply, "estados")
    for name in ("workers", "conexiones", "esperando", "en_cola"):
        field(reply, name, int, optional=True)
    field(reply, "uptime_s", float, optional=True)
    for node in objects(reply, "nodos") if reply.get("nodos") is not None else []:
        field(node, "nodo", str)
        for name in ("workers", "conexiones", "en proceso"):
            field(node, name, int)
        moment(node, "visto", optional=True)
    return {k: v for k, v in reply.items() if k != "ok"}
