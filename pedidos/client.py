"""A Python client for the order server, so that nobody writes the protocol by hand.

    with Client("localhost", 8888) as client:
        receipt = client.submit("Ana", ["pan"], "Calle 1")
        order = client.wait(receipt.id)

A refusal raises `Refused` (with the contract's error code); a connection
problem raises `ConnectionProblem`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_PORT = 8888
DEFAULT_TIMEOUT = 10.0


class PedidosError(Exception):
    """Base of the client's errors."""


class Refused(PedidosError):
    """The server answered `ok: false`."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.code: str = reply.get("error", "?")
        self.mensaje: str = reply.get("mensaje", "")
        self.reply = reply
        super().__init__(f"{self.code}: {self.mensaje}")


class ConnectionProblem(PedidosError):
    """The server could not be reached, or stopped answering."""


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
        )


@dataclass(frozen=True)
class Receipt:
    """The server's acknowledgement of a new order."""

    id: int
    estado: str
    duplicado: bool = False


def order_request(
    cliente: str, productos: Sequence[str], direccion: str, referencia: str | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {"cliente": cliente, "productos": list(productos), "direccion": direccion}
    if referencia is not None:
        request["referencia"] = referencia
    return request


def encode(request: dict[str, Any]) -> bytes:
    return (json.dumps(request, ensure_ascii=False) + "\n").encode("utf-8")


def receipt_of(reply: dict[str, Any]) -> Receipt:
    return Receipt(reply["id"], reply["estado"], bool(reply.get("duplicado", False)))


def checked(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise Refused(reply)
    return reply


class Client:
    """A blocking client: one connection, requests answered in order."""

    def __init__(
        self, host: str = "localhost", port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.greeting: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._file: Any = None

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Try each address the host resolves to, IPv4 or IPv6, until one answers."""
        host = self.host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ConnectionProblem(f"no se encuentra el servidor {host!r}: {exc.strerror}") from None
        last: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self.timeout)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            self._sock = sock
            self._file = sock.makefile("rb")
            self.greeting = self._read()
            if not self.greeting.get("ok"):
                raise Refused(self.greeting)
            return
        reason = last.strerror if last is not None and last.strerror else last
        raise ConnectionProblem(f"no se puede conectar con {host}:{self.port}: {reason}")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    # --- the protocol -------------------------------------------------------------

    def request(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send one request and return the server's reply, `ok` or not."""
        self.send(encode(request))
        return self._read(timeout)

    def send(self, data: bytes) -> None:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ConnectionProblem(f"se perdió la conexión con el servidor: {exc}") from None

    def _read(self, timeout: float | None = None) -> dict[str, Any]:
        assert self._sock is not None
        self._sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            line = self._file.readline()
        except TimeoutError:
            raise ConnectionProblem("el servidor no respondió a tiempo") from None
        except OSError as exc:
            raise ConnectionProblem(f"se perdió la conexión con el servidor: {exc}") from None
        if not line.endswith(b"\n"):
            raise ConnectionProblem("el servidor cerró la conexión")
        try:
            reply = json.loads(line)
        except ValueError:
            raise ConnectionProblem(f"respuesta ilegible del servidor: {line[:80]!r}") from None
        if not isinstance(reply, dict):
            raise ConnectionProblem(f"respuesta inesperada del servidor: {line[:80]!r}")
        return reply

    # --- orders and commands --------------------------------------------------------

    def submit(
        self, cliente: str, productos: Sequence[str], direccion: str, referencia: str | None = None
    ) -> Receipt:
        return receipt_of(checked(self.request(order_request(cliente, productos, direccion, referencia))))

    def submit_many(
        self, requests: Iterable[dict[str, Any]], window: int = 200
    ) -> Iterator[Receipt | Refused]:
        """Send order objects pipelined, `window` in flight at most; yields a
        Receipt or a Refused for each, in order."""
        step = max(1, window // 2)
        in_flight = 0
        chunk: list[bytes] = []
        for request in requests:
            chunk.append(encode(request))
            if len(chunk) == step:
                self.send(b"".join(chunk))
                in_flight += step
                chunk = []
                while in_flight > window - step:
                    yield _receipt_or_refusal(self._read())
                    in_flight -= 1
        if chunk:
            self.send(b"".join(chunk))
            in_flight += len(chunk)
        for _ in range(in_flight):
            yield _receipt_or_refusal(self._read())

    def get(self, order_id: int) -> Order:
        return Order.from_reply(checked(self.request({"accion": "consultar", "id": order_id}))["pedido"])

    def wait(self, order_id: int, timeout: float = 30.0) -> Order:
        """The order once it is final; Refused with code `tiempo_agotado` if not in time."""
        reply = self.request(
            {"accion": "esperar", "id": order_id, "timeout": timeout}, timeout + self.timeout
        )
        return Order.from_reply(checked(reply)["pedido"])

    def list(
        self, estado: str | None = None, cliente: str | None = None, desde_id: int = 0, limite: int = 100
    ) -> list[Order]:
        request = {
            "accion": "listar",
            "estado": estado,
            "cliente": cliente,
            "desde_id": desde_id,
            "limite": limite,
        }
        reply = checked(self.request({k: v for k, v in request.items() if v is not None}))
        return [Order.from_reply(item) for item in reply["pedidos"]]

    def cancel(self, order_id: int) -> Order:
        return Order.from_reply(checked(self.request({"accion": "cancelar", "id": order_id}))["pedido"])

    def stats(self) -> dict[str, Any]:
        reply = checked(self.request({"accion": "estadisticas"}))
        return {k: v for k, v in reply.items() if k != "ok"}


def _receipt_or_refusal(reply: dict[str, Any]) -> Receipt | Refused:
    return receipt_of(reply) if reply.get("ok") else Refused(reply)
