"""What the client library hands back, and how requests and replies are written.

Shared by the blocking `Client` and the asyncio `AsyncClient`, so that both
speak the protocol the same way and only differ in how they wait.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypedDict

from pedidos.domain import FINAL_ESTADOS, MAX_SECONDS, show_address
from pedidos.protocol.replies import CONNECTION_CLOSED_FIELD, TIEMPO_AGOTADO

DEFAULT_PORT = 8888
DEFAULT_TIMEOUT = 10.0
DEFAULT_WINDOW = 500
# The server refuses an `esperar` longer than this; longer waits are split.
MAX_WAIT = MAX_SECONDS
__all__ = ["FINAL_ESTADOS", "TIEMPO_AGOTADO"]  # re-exported for the two clients
# Marks the server's last line before it closes an idle connection: no reply.
CONEXION_CERRADA = CONNECTION_CLOSED_FIELD


class PedidosError(Exception):
    """Base of the client's errors."""


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


class ConnectionProblem(PedidosError):
    """The server could not be reached, or stopped answering."""


class NoAnswer(ConnectionProblem):
    """The server said nothing within the time allowed."""


class ServerStopping(ConnectionProblem):
    """An `esperar` cut short because the server is stopping (`"apagando": true`):
    the order goes on when the server is back; `.order` is the order as it stood."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.order = Order.from_reply(reply["pedido"])
        super().__init__(
            f"el servidor se detuvo mientras se esperaba el pedido {self.order.id}, "
            f"que sigue '{self.order.estado}'"
        )


class Stats(TypedDict, total=False):
    estados: dict[str, int]
    workers: int
    conexiones: int
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
        return cls(
            id=data["id"],
            cliente=data["cliente"],
            productos=tuple(data["productos"]),
            direccion=data["direccion"],
            referencia=data.get("referencia"),
            estado=data["estado"],
            fecha_recibido=data["fecha_recibido"],
            fecha_inicio=data.get("fecha_inicio"),
            fecha_fin=data.get("fecha_fin"),
            worker=data.get("worker"),
            intentos=data.get("intentos", 0),
            fallos=data.get("fallos", 0),
            resultado=data.get("resultado"),
            error=data.get("error"),
            reintentar_despues=data.get("reintentar_despues"),
            nodo=data.get("nodo"),
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
    request: dict[str, Any] = {"cliente": cliente, "productos": list(productos), "direccion": direccion}
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
    except ValueError:
        raise ConnectionProblem(f"respuesta ilegible del servidor: {line[:80]!r}") from None
    if not isinstance(reply, dict):
        raise ConnectionProblem(f"respuesta inesperada del servidor: {line[:80]!r}")
    if reply.get(CONEXION_CERRADA) is True:
        mensaje = str(reply.get("mensaje", ""))
        raise ConnectionProblem(f"el servidor cerró la conexión: {mensaje[:1].lower()}{mensaje[1:]}")
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
    return Receipt(reply["id"], reply["estado"], bool(reply.get("duplicado", False)))


def receipt_or_refusal(reply: dict[str, Any]) -> Receipt | Refused:
    return receipt_of(reply) if reply.get("ok") else Refused(reply)


def order_of(reply: dict[str, Any]) -> Order:
    return Order.from_reply(checked(reply)["pedido"])


def polled_order(reply: dict[str, Any]) -> Order:
    """The order from an `esperar` reply, final or still on its way."""
    if not reply.get("ok") and reply.get("error") != TIEMPO_AGOTADO:
        raise Refused(reply)
    return Order.from_reply(not_stopping(reply)["pedido"])


def not_stopping(reply: dict[str, Any]) -> dict[str, Any]:
    """An `esperar` reply, unless the server said it is stopping: no use asking again."""
    if reply.get("apagando") is True:
        raise ServerStopping(reply)
    return reply


def stats_of(reply: dict[str, Any]) -> Stats:
    return Stats(**{k: v for k, v in checked(reply).items() if k != "ok"})  # type: ignore[typeddict-item]


# --- addresses and what went wrong, for a person ---------------------------------------

_REASONS = {
    errno.ECONNREFUSED: "conexión rechazada (¿está en marcha el servidor, y en ese puerto?)",
    errno.ETIMEDOUT: "no contesta",
    errno.EHOSTUNREACH: "no hay ruta hasta esa máquina",
    errno.ENETUNREACH: "la red no está accesible",
    errno.EADDRNOTAVAIL: "esa dirección no está disponible en esta máquina",
    errno.ECONNRESET: "la cortó el otro extremo",
    errno.EPIPE: "la cortó el otro extremo",
    errno.ENOENT: "no existe",
    errno.EISDIR: "es un directorio",
    errno.EACCES: "no hay permiso",
}


def reason(exc: BaseException) -> str:
    """An OS error in Spanish, for the one line a person reads."""
    if isinstance(exc, TimeoutError):
        return "no contesta"
    if isinstance(exc, ssl.SSLEOFError):
        return "la cortó el otro extremo"
    if isinstance(exc, ssl.SSLError):
        return f"error de TLS: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    if isinstance(exc, OSError) and exc.errno in _REASONS:
        return _REASONS[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def bare_host(host: str) -> str:
    """`[::1]` as people write it in URLs is `::1` for getaddrinfo."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


shown = show_address


def unresolved(host: str, exc: socket.gaierror) -> ConnectionProblem:
    return ConnectionProblem(f"no se encuentra el servidor {host!r} ({exc.strerror})")


def unreachable(host: str, port: int, failures: list[tuple[str, str]]) -> ConnectionProblem:
    """`failures`: (address tried, why it failed), one per address the host named."""
    if len(failures) == 1:
        detail = failures[0][1]
    else:
        detail = "; ".join(f"{address}: {why}" for address, why in failures)
    return ConnectionProblem(f"no se puede conectar con {shown(host, port)}: {detail}")


def silent(timeout: float) -> ConnectionProblem:
    return NoAnswer(f"el servidor dejó de responder (nada en {timeout:g} s)")


def lost(exc: BaseException) -> ConnectionProblem:
    return ConnectionProblem(f"se perdió la conexión con el servidor: {reason(exc)}")


def closed() -> ConnectionProblem:
    return ConnectionProblem("el servidor cerró la conexión")
