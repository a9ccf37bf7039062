"""What goes wrong between the client and the server, told in one line of Spanish.

The connection errors the client raises (`ConnectionProblem` and its kinds),
how an OS or TLS error reads for a person (`reason`), and how a host is
written and shown. The server's own refusals (`Refused`, `ServerStopping`)
carry a reply and an order, so they live with the records in `records`.
"""

from __future__ import annotations

import errno
import socket
import ssl

from pedidos.domain import show_address


class PedidosError(Exception):
    """Base of the client's errors."""


class ConnectionProblem(PedidosError):
    """The server could not be reached, or stopped answering."""


class NoAnswer(ConnectionProblem):
    """The server said nothing within the time allowed."""


class ClosedIdle(ConnectionProblem):
    """The server closed an idle connection (its notice, `"conexion_cerrada": true`).
    It sends the notice only with every request it began answered, and begins
    none after it: whatever was sent and is still unanswered never began, so
    it may be sent again on a new connection, whatever it was."""


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


def unresolved(host: str, exc: socket.gaierror | UnicodeError) -> ConnectionProblem:
    # A name DNS cannot carry (a label over 63 characters, an empty label)
    # fails in the IDNA codec before any lookup: not found all the same.
    why = exc.strerror if isinstance(exc, socket.gaierror) else "no es un nombre válido"
    # `localhost:8888`: one colon is no IPv6 address, but a port in the wrong place.
    hint = "; el puerto va aparte: --port" if host.count(":") == 1 else ""
    return ConnectionProblem(f"no se encuentra el servidor {host!r} ({why}{hint})")


def unreachable(host: str, port: int, failures: list[tuple[str, str]]) -> ConnectionProblem:
    """`failures`: (address tried, why it failed), one per address the host named."""
    if len(failures) == 1:
        detail = failures[0][1]
    else:
        detail = "; ".join(f"{address}: {why}" for address, why in failures)
    return ConnectionProblem(f"no se puede conectar con {show_address(host, port)}: {detail}")


def silent(timeout: float, partial: bool = False) -> ConnectionProblem:
    """No reply within `timeout`; `partial`: part of one came, never its end."""
    if partial:
        return NoAnswer(f"la respuesta del servidor no terminó en {timeout:g} s (llegó solo una parte)")
    return NoAnswer(f"el servidor dejó de responder (nada en {timeout:g} s)")


# A reply line longer than this is not an order server's: the longest the
# server sends, a `listar` of 1000 orders each at every limit (its fields as the
# 64 KiB request gave them, a 64 KiB `resultado`, a 1000-character `error`), is
# about 136 MiB. Without a bound, a peer that streams bytes and never a newline
# (a wrong port, a broken proxy) would fill the client's memory until the timeout.
MAX_REPLY_BYTES = 256 * 1024 * 1024


def too_long() -> ConnectionProblem:
    return ConnectionProblem(
        f"la respuesta del servidor pasó de {MAX_REPLY_BYTES // (1024 * 1024)} MiB sin terminar "
        "(ningún servidor de pedidos manda tanto en una línea); se dejó de leer"
    )


def lost(exc: BaseException) -> ConnectionProblem:
    return ConnectionProblem(f"se perdió la conexión con el servidor: {reason(exc)}")


def closed() -> ConnectionProblem:
    return ConnectionProblem("el servidor cerró la conexión")
