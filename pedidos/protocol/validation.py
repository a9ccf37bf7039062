"""What a request means: a new order or a command, checked field by field.

Every refusal is a RequestError whose sentence names the field at fault, so a
person at a telnet prompt can fix it. Values are refused, never clamped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pedidos.domain import (
    CLIENTE_MAX,
    DEFAULT_LIMIT,
    DEFAULT_TIMEOUT,
    DIRECCION_MAX,
    ESTADOS,
    MAX_ID,
    MAX_LIMIT,
    MAX_SECONDS,
    MAX_TOKEN_CHARS,
    PRODUCTO_MAX,
    PRODUCTOS_MAX,
    REFERENCIA_MAX,
    NewOrder,
)
from pedidos.protocol.replies import (
    ACCION_DESCONOCIDA,
    MENSAJE_INVALIDO,
    PEDIDO_INVALIDO,
    RequestError,
)

ORDENES = ("asc", "desc")  # `listar`: oldest first (the default) or newest first
ORDER_FIELDS = ("cliente", "productos", "direccion", "referencia")
_ORDER_FIELD_SET = frozenset(ORDER_FIELDS)


@dataclass(frozen=True)
class Command:
    accion: str
    args: dict[str, Any]


def parse_request(value: Any) -> NewOrder | Command:
    """Turn a decoded JSON value into a NewOrder or a Command, or refuse it."""
    if not isinstance(value, dict):
        raise RequestError(
            MENSAJE_INVALIDO,
            f"Se esperaba un objeto JSON ({{...}}), no {_json_type(value)}.",
        )
    if "accion" in value:
        return parse_command(value)
    return parse_order(value)


def parse_order(value: dict[str, Any]) -> NewOrder:
    order = plain_order(value)
    return order if order is not None else careful_order(value)


def careful_order(value: dict[str, Any]) -> NewOrder:
    """Check an order field by field, so that a refusal names the field at fault."""
    for name in value:
        if name not in ORDER_FIELDS:
            raise RequestError(
                PEDIDO_INVALIDO,
                f"Campo desconocido '{name}'; un pedido lleva cliente, productos, "
                "direccion y, opcionalmente, referencia.",
            )
    cliente = order_text(value, "cliente", CLIENTE_MAX)
    productos = order_products(value.get("productos"))
    direccion = order_text(value, "direccion", DIRECCION_MAX)
    referencia = None
    if value.get("referencia") is not None:
        referencia = order_text(value, "referencia", REFERENCIA_MAX)
    return NewOrder(cliente, productos, direccion, referencia)


def plain_order(value: dict[str, Any]) -> NewOrder | None:
    """The common valid order, checked in a few steps that run in C; None when
    anything is unusual, and then `careful_order` says what is wrong. Both
    accept exactly the same orders (tests/test_properties.py)."""
    cliente = value.get("cliente")
    productos = value.get("productos")
    direccion = value.get("direccion")
    referencia = value.get("referencia")
    if not (
        type(cliente) is str
        and type(direccion) is str
        and type(productos) is list
        and (referencia is None or type(referencia) is str)
        and value.keys() <= _ORDER_FIELD_SET
        and 1 <= len(productos) <= PRODUCTOS_MAX
    ):
        return None
    try:
        items = tuple(map(str.strip, productos))  # TypeError for anything but text
    except TypeError:
        return None
    cliente, direccion = cliente.strip(), direccion.strip()
    if not (
        0 < len(cliente) <= CLIENTE_MAX
        and 0 < len(direccion) <= DIRECCION_MAX
        and all(items)
        and max(map(len, items)) <= PRODUCTO_MAX
    ):
        return None
    if referencia is not None:
        referencia = referencia.strip()
        if not 0 < len(referencia) <= REFERENCIA_MAX:
            return None
    return NewOrder(cliente, items, direccion, referencia)


def order_text(value: dict[str, Any], name: str, limit: int) -> str:
    if name not in value or value[name] is None:
        raise RequestError(PEDIDO_INVALIDO, f"Falta el campo '{name}'.")
    return _trimmed(value[name], f"'{name}'", limit)


def order_products(productos: Any) -> tuple[str, ...]:
    if productos is None:
        raise RequestError(PEDIDO_INVALIDO, "Falta el campo 'productos'.")
    if not isinstance(productos, list):
        raise RequestError(
            PEDIDO_INVALIDO,
            f"'productos' debe ser una lista de textos, no {_json_type(productos)}.",
        )
    if not 1 <= len(productos) <= PRODUCTOS_MAX:
        raise RequestError(
            PEDIDO_INVALIDO,
            f"'productos' debe tener entre 1 y {PRODUCTOS_MAX} productos; tiene {len(productos)}.",
        )
    # Named by its place *and* its field, as every refusal names the field.
    return tuple(
        _trimmed(item, f"El producto {i + 1} de 'productos'", PRODUCTO_MAX)
        for i, item in enumerate(productos)
    )


def _trimmed(raw: Any, what: str, limit: int) -> str:
    if not isinstance(raw, str):
        raise RequestError(PEDIDO_INVALIDO, f"{what} debe ser un texto, no {_json_type(raw)}.")
    text = raw.strip()
    if not text:
        raise RequestError(PEDIDO_INVALIDO, f"{what} está vacío.")
    if len(text) > limit:
        raise RequestError(
            PEDIDO_INVALIDO,
            f"{what} tiene {len(text)} caracteres; el máximo es {limit}.",
        )
    return text


# --- commands ---------------------------------------------------------------

Check = Callable[[str, Any], Any]
_REQUIRED = object()


def _id(name: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_ID:
        raise RequestError(MENSAJE_INVALIDO, f"'{name}' debe ser un entero positivo, no {_show(raw)}.")
    return raw


def _from_id(name: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_ID:
        raise RequestError(
            MENSAJE_INVALIDO, f"'{name}' debe ser un entero mayor o igual a 0, no {_show(raw)}."
        )
    return raw


def _timeout(name: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= MAX_SECONDS:
        raise RequestError(
            MENSAJE_INVALIDO,
            f"'{name}' debe ser un número de segundos entre 0 y {MAX_SECONDS:g}, no {_show(raw)}.",
        )
    return float(raw)


def _limit(name: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_LIMIT:
        raise RequestError(
            MENSAJE_INVALIDO, f"'{name}' debe ser un entero entre 1 y {MAX_LIMIT}, no {_show(raw)}."
        )
    return raw


def _estado(name: str, raw: Any) -> str:
    if raw not in ESTADOS:
        raise RequestError(
            MENSAJE_INVALIDO,
            f"'{name}' debe ser uno de {', '.join(ESTADOS)}; no {_show(raw)}.",
        )
    return raw


def _text(name: str, raw: Any) -> str:
    # Trimmed before counting, as the stored value was: any `cliente` an order
    # may carry is a filter `listar` takes.
    text = raw.strip() if isinstance(raw, str) else ""
    if not 1 <= len(text) <= CLIENTE_MAX:
        raise RequestError(
            MENSAJE_INVALIDO,
            f"'{name}' debe ser un texto de 1 a {CLIENTE_MAX} caracteres después de quitar los espacios.",
        )
    return text


def _orden(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or raw not in ORDENES:
        raise RequestError(
            MENSAJE_INVALIDO,
            f"'{name}' debe ser 'asc' (del más antiguo al más nuevo) o 'desc' (del más nuevo al más "
            f"antiguo), no {_show(raw)}.",
        )
    return raw


def _token(name: str, raw: Any) -> str:
    # Never echo the value: it may be someone's secret, mistyped.
    if not isinstance(raw, str) or not 1 <= len(raw) <= MAX_TOKEN_CHARS:
        raise RequestError(
            MENSAJE_INVALIDO, f"'{name}' debe ser un texto de 1 a {MAX_TOKEN_CHARS} caracteres."
        )
    return raw


# accion: {field: (check, default)}; _REQUIRED marks a field that must be there.
COMMANDS: dict[str, dict[str, tuple[Check, Any]]] = {
    "consultar": {"id": (_id, _REQUIRED)},
    "esperar": {"id": (_id, _REQUIRED), "timeout": (_timeout, DEFAULT_TIMEOUT)},
    "listar": {
        "estado": (_estado, None),
        "cliente": (_text, None),
        "contiene": (_text, None),  # case-insensitive substring of `cliente`
        "desde_id": (_from_id, 0),
        "limite": (_limit, DEFAULT_LIMIT),
        "orden": (_orden, "asc"),
    },
    "cancelar": {"id": (_id, _REQUIRED)},
    "estadisticas": {},
    "autenticar": {"token": (_token, _REQUIRED)},
}


def parse_command(value: dict[str, Any]) -> Command:
    accion = value["accion"]
    if not isinstance(accion, str):
        raise RequestError(MENSAJE_INVALIDO, f"'accion' debe ser un texto, no {_json_type(accion)}.")
    fields = COMMANDS.get(accion)
    if fields is None:
        raise RequestError(
            ACCION_DESCONOCIDA,
            f"La acción {_show(accion)} no existe; las acciones son: {', '.join(COMMANDS)}.",
        )
    args: dict[str, Any] = {}
    for name in value:
        if name != "accion" and name not in fields:
            raise RequestError(MENSAJE_INVALIDO, f"Campo desconocido '{name}' para la acción '{accion}'.")
    for name, (check, default) in fields.items():
        raw = value.get(name)
        if raw is None:
            if default is _REQUIRED:
                raise RequestError(MENSAJE_INVALIDO, f"Falta el campo '{name}' para la acción '{accion}'.")
            args[name] = default
        else:
            args[name] = check(name, raw)
    return Command(accion, args)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "un booleano"
    if isinstance(value, (int, float)):
        return "un número"
    if isinstance(value, str):
        return "un texto"
    if isinstance(value, list):
        return "una lista"
    return "un objeto"


def _show(value: Any) -> str:
    """A value as the client wrote it, cut short: error replies stay small."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
