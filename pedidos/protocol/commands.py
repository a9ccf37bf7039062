"""What a command means: its fields, checked one by one against `COMMANDS`.

Every refusal is a RequestError whose sentence names the field at fault.
Values are refused, never clamped. validation.py tells a command from an order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pedidos.domain import (
    CLIENTE_MAX,
    DEFAULT_LIMIT,
    DEFAULT_TIMEOUT,
    ESTADOS,
    MAX_ID,
    MAX_LIMIT,
    MAX_SECONDS,
    MAX_TOKEN_CHARS,
    REFERENCIA_MAX,
)
from pedidos.protocol.replies import ACCION_DESCONOCIDA, MENSAJE_INVALIDO, RequestError

ORDENES = ("asc", "desc")  # `listar`: oldest first (the default) or newest first


@dataclass(frozen=True)
class Command:
    accion: str
    args: dict[str, Any]


Check = Callable[[str, Any], Any]
_REQUIRED = object()


def _id(name: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_ID:
        raise RequestError(
            MENSAJE_INVALIDO, f"'{name}' debe ser un entero entre 1 y {MAX_ID}, no {shown(raw)}."
        )
    return raw


def _from_id(name: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_ID:
        raise RequestError(
            MENSAJE_INVALIDO, f"'{name}' debe ser un entero entre 0 y {MAX_ID}, no {shown(raw)}."
        )
    return raw


def _timeout(name: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= MAX_SECONDS:
        raise RequestError(
            MENSAJE_INVALIDO,
            f"'{name}' debe ser un número de segundos entre 0 y {MAX_SECONDS:g}, no {shown(raw)}.",
        )
    return float(raw)


def _limit(name: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_LIMIT:
        raise RequestError(
            MENSAJE_INVALIDO, f"'{name}' debe ser un entero entre 1 y {MAX_LIMIT}, no {shown(raw)}."
        )
    return raw


def _estado(name: str, raw: Any) -> str:
    if raw not in ESTADOS:
        raise RequestError(
            MENSAJE_INVALIDO,
            f"'{name}' debe ser uno de {', '.join(ESTADOS)}; no {shown(raw)}.",
        )
    return raw


def _trimmed(name: str, raw: Any, limit: int) -> str:
    # Trimmed before counting, as stored values were: any value an order may
    # carry can be looked up or filtered on.
    text = raw.strip() if isinstance(raw, str) else ""
    if not 1 <= len(text) <= limit:
        raise RequestError(
            MENSAJE_INVALIDO,
            f"'{name}' debe ser un texto de 1 a {limit} caracteres después de quitar los espacios.",
        )
    if "\x00" in text:  # no order carries one (validation.py); PostgreSQL's text cannot
        raise RequestError(
            MENSAJE_INVALIDO, f"'{name}' contiene el carácter nulo (\\u0000), que no se admite."
        )
    return text


def _text(name: str, raw: Any) -> str:
    """A `cliente` filter: the rule of an order's `cliente`."""
    return _trimmed(name, raw, CLIENTE_MAX)


def _referencia(name: str, raw: Any) -> str:
    """The rule of an order's `referencia`, so any stored key can be looked up."""
    return _trimmed(name, raw, REFERENCIA_MAX)


def _orden(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or raw not in ORDENES:
        raise RequestError(
            MENSAJE_INVALIDO,
            f"'{name}' debe ser 'asc' (del más antiguo al más nuevo) o 'desc' (del más nuevo al más "
            f"antiguo), no {shown(raw)}.",
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
    # `id` or `referencia`, exactly one: see ONE_OF.
    "consultar": {"id": (_id, None), "referencia": (_referencia, None)},
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
    "reintentar": {"id": (_id, _REQUIRED)},
    "estadisticas": {},
    "autenticar": {"token": (_token, _REQUIRED)},
}

# Commands that take exactly one of these fields.
ONE_OF: dict[str, tuple[str, ...]] = {"consultar": ("id", "referencia")}


def parse_command(value: dict[str, Any]) -> Command:
    accion = value["accion"]
    if not isinstance(accion, str):
        raise RequestError(MENSAJE_INVALIDO, f"'accion' debe ser un texto, no {json_type(accion)}.")
    fields = COMMANDS.get(accion)
    if fields is None:
        raise RequestError(
            ACCION_DESCONOCIDA,
            f"La acción {shown(accion)} no existe; las acciones son: {', '.join(COMMANDS)}.",
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
    one_of = ONE_OF.get(accion)
    if one_of is not None and sum(args[name] is not None for name in one_of) != 1:
        names = " o ".join(f"'{name}'" for name in one_of)
        given = [name for name in one_of if args[name] is not None]
        missing = "Falta el campo" if not given else "Sobra un campo: lleve solo"
        raise RequestError(
            MENSAJE_INVALIDO, f"{missing} {names} para la acción '{accion}' (uno de los dos, no ambos)."
        )
    return Command(accion, args)


def json_type(value: Any) -> str:
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


def shown(value: Any) -> str:
    """A value as the client wrote it (JSON: `true`, `"5"`, `null`), cut
    short: error replies stay small."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
