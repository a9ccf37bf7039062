"""What the client library hands back, and how requests and replies are written.

The errors a connection meets, told for a person, are in `problems`; the
refusals here carry the server's reply (and the order it names).

Shared by the blocking `Client` and the asyncio `AsyncClient`, so that both
speak the protocol the same way and only differ in how they wait.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypedDict

from pedidos.client import shapes
from pedidos.client.problems import ClosedIdle, ConnectionProblem, PedidosError
from pedidos.client.shapes import UnexpectedReply
from pedidos.domain import FINAL_ESTADOS, MAX_SECONDS
from pedidos.protocol.replies import CONNECTION_CLOSED_FIELD, TIEMPO_AGOTADO

DEFAULT_TIMEOUT = 10.0
DEFAULT_WINDOW = 500
# The server refuses an `esperar` longer than this; longer waits are split.
MAX_WAIT = MAX_SECONDS
__all__ = ["FINAL_ESTADOS", "TIEMPO_AGOTADO", "UnexpectedReply"]  # re-exported for the two clients
# Marks the server's last line before it closes an idle connection: no reply.
CONEXION_CERRADA = CONNECTION_CLOSED_FIELD


class Refused(PedidosError):
    """The server answered `ok: false`: `code` is the contract's error code."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.code: str = str(reply.get("error", "?"))
        self.mensaje: str = str(reply.get("mensaje", ""))
        self.reply = reply
        super().__init__(f"{self.code}: {self.mensaje}")

    @property
    def order(self) -> Order | None:
        """The order as it stood, for refusals that carry one (`tiempo_agotado`)."""
        pedido = self.reply.get("pedido")
        return Order.from_reply(pedido) if isinstance(pedido, dict) else None


class ServerStopping(ConnectionProblem):
    """An `esperar` cut short because the server is stopping (`"apagando": true`):
    the order goes on when the server is back; `.order` is the order as it stood."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.order = Order.from_reply(shapes.field(reply, "pedido", dict))
        super().__init__(
            f"el servidor se detuvo mientras se esperaba el pedido {self.order.id}, "
            f"que sigue '{self.order.estado}'"
        )


class Stats(TypedDict, total=False):
    estados: dict[str, int]
    workers: int
    conexiones: int
    esperando: int
    en_cola: int
    uptime_s: float
    nodos: list[dict[str, Any]]  # on a shared database: the live servers (section 9)


@dataclass(frozen=True)
class Order:
    id: int
    cliente: str
    productos: tuple[str, ...]
    direccion: str
    referencia: str | None
    estado: str
    fecha_recibido: str
    fecha_inicio: str | None
    fecha_fin: str | None
    worker: int | None
    intentos: int
    # Section 11 (tasks): absent from servers before it, so each has a default.
    fallos: int = 0
    resultado: Any = None
    error: str | None = None
    reintentar_despues: str | None = None
    nodo: str | None = None  # on a shared database: the server that holds or held it

    @classmethod
    def from_reply(cls, data: dict[str, Any]) -> Order:
        """ORDER as the server sent it, each field checked (shapes.py)."""
        field, moment = shapes.field, shapes.moment
        return cls(
            id=field(data, "id", int),
            cliente=field(data, "cliente", str),
            productos=tuple(shapes.texts(data, "productos")),
            direccion=field(data, "direccion", str),
            referencia=field(data, "referencia", str, optional=True),
            estado=field(data, "estado", str),
            fecha_recibido=moment(data, "fecha_recibido"),  # type: ignore[arg-type]
            fecha_inicio=moment(data, "fecha_inicio", optional=True),
            fecha_fin=moment(data, "fecha_fin", optional=True),
            worker=field(data, "worker", int, optional=True),
            intentos=field(data, "intentos", int, optional=True) or 0,
            fallos=field(data, "fallos", int, optional=True) or 0,
            resultado=data.get("resultado"),
            error=field(data, "error", str, optional=True),
            reintentar_despues=moment(data, "reintentar_despues", optional=True),
            nodo=field(data, "nodo", str, optional=True),
        )

    def as_dict(self) -> dict[str, Any]:
        """The order as the server writes it (ORDER in the contract)."""
        data = asdict(self)
        data["productos"] = list(self.productos)
        if data["nodo"] is None:
            del data["nodo"]  # a server alone (SQLite) does not send it
        return data

    @property
    def final(self) -> bool:
        return self.estado in FINAL_ESTADOS

    @property
    def received_at(self) -> datetime:
        return datetime.fromisoformat(self.fecha_recibido)

    @property
    def started_at(self) -> datetime | None:
        return datetime.fromisoformat(self.fecha_inicio) if self.fecha_inicio else None

    @property
    def finished_at(self) -> datetime | None:
        return datetime.fromisoformat(self.fecha_fin) if self.fecha_fin else None

    @property
    def retry_at(self) -> datetime | None:
        return datetime.fromisoformat(self.reintentar_despues) if self.reintentar_despues else None

    @property
    def duration(self) -> float | None:
        """Seconds a worker spent on it, once it is `listo`."""
        start, end = self.started_at, self.finished_at
        return (end - start).total_seconds() if start and end else None


@dataclass(frozen=True)
class Receipt:
    """The server's acknowledgement of a new order."""

    id: int
    estado: str
    duplicado: bool = False


# --- requests -------------------------------------------------------------------


def order_request(
    cliente: str, productos: Sequence[str], direccion: str, referencia: str | None = None
) -> dict[str, Any]:
    # Any sequence goes as a list; a text, a mapping or None as it is, for the
    # server to refuse naming `productos`: list("pan") would store ["p", "a", "n"].
    items = productos if productos is None or isinstance(productos, (str, bytes, dict)) else list(productos)
    request: dict[str, Any] = {"cliente": cliente, "productos": items, "direccion": direccion}
    if referencia is not None:
        request["referencia"] = referencia
    return request


def wait_request(order_id: int, timeout: float) -> dict[str, Any]:
    return {"accion": "esperar", "id": order_id, "timeout": round(timeout, 3)}


def list_request(
    estado: str | None,
    cliente: str | None,
    desde_id: int,
    limite: int,
    contiene: str | None = None,
    orden: str = "asc",
) -> dict[str, Any]:
    request = {
        "accion": "listar",
        "estado": estado,
        "cliente": cliente,
        "contiene": contiene,
        "desde_id": desde_id,
        "limite": limite,
        # The default goes unsaid, so a server older than `orden` still answers.
        "orden": None if orden == "asc" else orden,
    }
    return {k: v for k, v in request.items() if v is not None}


def encode(request: Any) -> bytes:
    return (json.dumps(request, ensure_ascii=False) + "\n").encode("utf-8")


# --- replies ----------------------------------------------------------------------


def parse_reply(line: bytes) -> dict[str, Any]:
    """One line from the server as a reply object; anything else means we are not
    talking to a working order server."""
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):  # nested deeper than Python reads: no reply either
        raise ConnectionProblem(f"respuesta ilegible del servidor: {line[:80]!r}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise UnexpectedReply(f"{line[:80]!r}")
    if reply.get(CONEXION_CERRADA) is True:
        # "Sin actividad durante 300 s; se cierra la conexión." says twice what
        # ours says: its reason alone follows ours.
        reason = str(reply.get("mensaje", "")).partition(";")[0].strip().rstrip(".")
        raise ClosedIdle(f"el servidor cerró la conexión: {reason[:1].lower()}{reason[1:]}")
    if not reply["ok"]:  # a refusal names its code and says why (contract, section 3)
        shapes.field(reply, "error", str)
        shapes.field(reply, "mensaje", str)
    return reply


def checked(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise Refused(reply)
    return reply


def check_greeting(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("ok") and reply.get("servidor") != "pedidos":
        raise ConnectionProblem("quien responde en esa dirección no es un servidor de pedidos")
    return checked(reply)


def receipt_of(reply: dict[str, Any]) -> Receipt:
    return Receipt(
        shapes.field(reply, "id", int), shapes.field(reply, "estado", str), reply.get("duplicado") is True
    )


def receipt_or_refusal(reply: dict[str, Any]) -> Receipt | Refused:
    return receipt_of(reply) if reply.get("ok") else Refused(reply)


def order_of(reply: dict[str, Any]) -> Order:
    return Order.from_reply(shapes.field(checked(reply), "pedido", dict))


def orders_of(reply: dict[str, Any]) -> list[Order]:
    """The orders of a `listar` reply."""
    return [Order.from_reply(item) for item in shapes.objects(checked(reply), "pedidos")]


def polled_order(reply: dict[str, Any]) -> Order:
    """The order from an `esperar` reply, final or still on its way."""
    if not reply.get("ok") and reply.get("error") != TIEMPO_AGOTADO:
        raise Refused(reply)
    return Order.from_reply(shapes.field(not_stopping(reply), "pedido", dict))


def not_stopping(reply: dict[str, Any]) -> dict[str, Any]:
    """An `esperar` reply, unless the server said it is stopping: no use asking again."""
    if reply.get("apagando") is True:
        raise ServerStopping(reply)
    return reply


def stats_of(reply: dict[str, Any]) -> Stats:
    return Stats(**shapes.stats(checked(reply)))  # type: ignore[typeddict-item]
