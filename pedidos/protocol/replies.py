"""The wire vocabulary: error codes, replies and how they are written.

Replies are one JSON object per line, UTF-8, non-ASCII written as is.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from pedidos.domain import Estado, RawJSON, Receipt

PROTOCOL_VERSION = 1
SERVER_NAME = "pedidos"

JSON_INVALIDO = "json_invalido"
MENSAJE_INVALIDO = "mensaje_invalido"
PEDIDO_INVALIDO = "pedido_invalido"
ACCION_DESCONOCIDA = "accion_desconocida"
NO_ENCONTRADO = "no_encontrado"
NO_CANCELABLE = "no_cancelable"
NO_REINTENTABLE = "no_reintentable"
TIEMPO_AGOTADO = "tiempo_agotado"
DEMASIADO_GRANDE = "demasiado_grande"
SERVIDOR_OCUPADO = "servidor_ocupado"
ERROR_INTERNO = "error_interno"
NO_AUTORIZADO = "no_autorizado"
REFERENCIA_EN_USO = "referencia_en_uso"

# The greeting's examples are objects of their own, not text inside `mensaje`:
# telnet shows the line as it comes, and quotes inside a JSON string come with
# backslashes (`{\"cliente\": ...}`) that cannot be pasted back as they are.
EXAMPLE_ORDER = {"cliente": "Juan Pérez", "productos": ["pan", "agua"], "direccion": "Av. Siempre Viva 742"}
EXAMPLE_COMMAND = {"accion": "consultar", "id": 1}
EXAMPLE_TOKEN = {"accion": "autenticar", "token": "SU-TOKEN"}
GREETING_TEXT = (
    "Bienvenido a pedidos. Pegue un pedido en JSON, con cliente, productos y direccion, como el "
    "de «ejemplo», o un comando como el de «comando»: cada uno recibe una línea de respuesta."
)
TOKEN_NEEDED_TEXT = (
    "Bienvenido a pedidos. Este servidor pide un token: envíe primero «comando» con su token en "
    "lugar de SU-TOKEN; después, un pedido en JSON, con cliente, productos y direccion, como el "
    "de «ejemplo»."
)
# Marks the line the server sends before it closes an idle connection: it
# answers no request, and a client reading it as a reply would be misled.
CONNECTION_CLOSED_FIELD = "conexion_cerrada"


class RequestError(Exception):
    """A request the server refuses: carries the contract's error code and a sentence."""

    def __init__(self, code: str, mensaje: str, **extra: Any) -> None:
        super().__init__(f"{code}: {mensaje}")
        self.code = code
        self.mensaje = mensaje
        self.extra = extra

    def reply(self) -> dict[str, Any]:
        return error_reply(self.code, self.mensaje, **self.extra)


def error_reply(code: str, mensaje: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": code, "mensaje": mensaje, **extra}


_PENDIENTE = Estado.PENDIENTE.value  # a plain str: compared once per order
_NEW_ORDER_ACK = b'{"ok": true, "id": %d, "estado": "' + _PENDIENTE.encode() + b'"}\n'


def referencia_en_uso(referencia: str | None) -> RequestError:
    """The refusal of a new order whose referencia is stored for a different
    order: the same for any difference, so it tells nothing of that order."""
    return RequestError(
        REFERENCIA_EN_USO,
        f"La referencia '{referencia}' ya está en uso por otro pedido; use otra referencia "
        "(reenviar un pedido propio con los mismos datos sí es seguro).",
    )


def order_ack(receipt: Receipt) -> dict[str, Any] | bytes:
    """The reply to a new order once it is stored: the common one already as
    its line of bytes, the most frequent reply the server writes. The SQLite
    backend runs this in its writer process (picklable, module level)."""
    order_id, estado, duplicado, taken, referencia = receipt
    if taken:
        return referencia_en_uso(referencia).reply()
    if estado == _PENDIENTE and not duplicado:  # the only bytes reply: the ack histogram counts these
        return _NEW_ORDER_ACK % order_id
    reply: dict[str, Any] = {"ok": True, "id": order_id, "estado": estado}
    if duplicado:
        reply["duplicado"] = True
    return reply


def greeting(token_needed: bool = False) -> dict[str, Any]:
    return {
        "ok": True,
        "servidor": SERVER_NAME,
        "protocolo": PROTOCOL_VERSION,
        "mensaje": TOKEN_NEEDED_TEXT if token_needed else GREETING_TEXT,
        "ejemplo": EXAMPLE_ORDER,
        "comando": EXAMPLE_TOKEN if token_needed else EXAMPLE_COMMAND,
    }


def idle_notice(idle_timeout: float) -> dict[str, Any]:
    """The last line of a connection closed for saying nothing for too long."""
    return error_reply(
        TIEMPO_AGOTADO,
        f"Sin actividad durante {idle_timeout:g} s; se cierra la conexión.",
        **{CONNECTION_CLOSED_FIELD: True},
    )


def encode_line(reply: dict[str, Any]) -> bytes:
    """One reply as the bytes of one line.

    Strings that came from the client were checked for lone surrogates by the
    decoder, so strict UTF-8 cannot fail here; `backslashreplace` is only a
    guard so that a reply is never lost to an encoding error. A `RawJSON`
    (an order's `resultado`) goes in as its text, unparsed.
    """
    raws: list[str] = []

    def mark(value: Any) -> str:
        if isinstance(value, RawJSON):
            raws.append(value.text)
            return _RAW_MARK
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    text = json.JSONEncoder(ensure_ascii=False, default=mark).encode(reply)
    if raws:  # each a copy of up to 64 MB: joined once
        parts = text.split(_RAW_MARK_JSON)
        parts[-1] += "\n"
        pieces = [parts[0]]
        for raw, part in zip(raws, parts[1:], strict=True):
            pieces += (_one_line(raw), part)
        return "".join(pieces).encode("utf-8", "backslashreplace")
    return (text + "\n").encode("utf-8", "backslashreplace")


# A RawJSON is written as this string first, then replaced by its text: a NUL
# and 32 hex digits drawn at start, which no value a client or a task sends can
# equal without knowing them.
_RAW_MARK = "\x00" + secrets.token_hex(16)
_RAW_MARK_JSON = json.dumps(_RAW_MARK)


def _one_line(text: str) -> str:
    """Valid JSON has line breaks only as whitespace between tokens (inside a
    string they are escaped): spaces keep the reply one line."""
    if "\n" in text or "\r" in text:
        return text.replace("\n", " ").replace("\r", " ")
    return text
