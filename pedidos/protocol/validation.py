"""What a request means: a new order or a command (commands.py), checked field by field.

Every refusal is a RequestError whose sentence names the field at fault, so a
person at a telnet prompt can fix it. Values are refused, never clamped.
"""

from __future__ import annotations

from typing import Any

from pedidos.domain import (
    CLIENTE_MAX,
    DIRECCION_MAX,
    ESTADOS,
    MAX_ID,
    MAX_TOKEN_CHARS,
    PRODUCTO_MAX,
    PRODUCTOS_MAX,
    REFERENCIA_MAX,
    NewOrder,
)
from pedidos.protocol.commands import COMMANDS, Command, json_type, parse_command
from pedidos.protocol.framing import RepeatedKeys
from pedidos.protocol.replies import MENSAJE_INVALIDO, PEDIDO_INVALIDO, RequestError

# Defined in commands.py and domain.py; requests, and the tests, find them here too.
__all__ = ["COMMANDS", "ESTADOS", "MAX_ID", "MAX_TOKEN_CHARS", "Command", "parse_command"]

ORDER_FIELDS = ("cliente", "productos", "direccion", "referencia")
_ORDER_FIELD_SET = frozenset(ORDER_FIELDS)
# Valid JSON (`"\u0000"`), but no text a person means, and PostgreSQL's text
# cannot hold it: refused here, with the field named, so it cannot fail a whole
# group commit of other clients' orders in the storage.
NUL = "\x00"


def parse_request(value: Any) -> NewOrder | Command:
    """Turn a decoded JSON value into a NewOrder or a Command, or refuse it."""
    if not isinstance(value, dict):
        raise RequestError(
            MENSAJE_INVALIDO,
            f"Se esperaba un objeto JSON ({{...}}), no {json_type(value)}.",
        )
    if type(value) is RepeatedKeys:
        raise repeated_key(value)
    if "accion" in value:
        return parse_command(value)
    return parse_order(value)


def repeated_key(value: RepeatedKeys) -> RequestError:
    """The refusal of an object with a key given twice (see framing.RepeatedKeys)."""
    return RequestError(
        MENSAJE_INVALIDO if "accion" in value else PEDIDO_INVALIDO,
        f"El campo '{value.repeated}' aparece más de una vez; cada campo va una sola vez.",
    )


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
        if not 0 < len(referencia) <= REFERENCIA_MAX or NUL in referencia:
            return None
    if NUL in cliente or NUL in direccion or NUL in "".join(items):
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
            f"'productos' debe ser una lista de textos, no {json_type(productos)}.",
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
        raise RequestError(PEDIDO_INVALIDO, f"{what} debe ser un texto, no {json_type(raw)}.")
    text = raw.strip()
    if not text:
        raise RequestError(PEDIDO_INVALIDO, f"{what} está vacío.")
    if len(text) > limit:
        raise RequestError(
            PEDIDO_INVALIDO,
            f"{what} tiene {len(text)} caracteres; el máximo es {limit}.",
        )
    if NUL in text:
        raise RequestError(PEDIDO_INVALIDO, f"{what} contiene el carácter nulo (\\u0000), que no se admite.")
    return text
