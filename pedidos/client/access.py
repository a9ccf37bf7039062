"""Tokens and TLS for both clients: where the token comes from, the TLS context,
and what a failed handshake means in one Spanish line.

Shared by `Client` and `AsyncClient` (issue 6), so that both choose the token,
verify the server and explain a failure the same way.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any

from pedidos.client.problems import ConnectionProblem, NoAnswer, reason
from pedidos.client.records import Refused
from pedidos.domain import TOKEN_ENV_VAR

# The client's own token. The server never reads it (its tokens come from
# --token-file and PEDIDOS_SERVIDOR_TOKENS), so a shop's token exported in a
# shell never becomes one of a server's. A `TOKEN ROLE` value sends only the token.
ENV_VAR = TOKEN_ENV_VAR


def chosen_token(token: str | None) -> str | None:
    """The token to send: the one given, else PEDIDOS_TOKEN's; None for none.
    An empty string given on purpose means none, without looking at the environment."""
    if token is None:
        words = os.environ.get(ENV_VAR, "").split()
        token = words[0] if words else None
    return token or None


class Access:
    """What a client was told about tokens and TLS, checked once and used again
    at every reconnection."""

    def __init__(
        self, token: str | None, tls: bool, cafile: str | None, context: ssl.SSLContext | None
    ) -> None:
        if cafile is not None and not tls and context is None:
            raise ValueError("cafile is used only with tls=True")
        self.token = chosen_token(token)
        self.tls = tls or context is not None
        self.cafile = cafile
        self._context = context

    def context(self) -> ssl.SSLContext | None:
        """The context to wrap the connection in, or None for plain TCP. Made at
        the first connection, so that an unreadable `cafile` is a ConnectionProblem."""
        if self.tls and self._context is None:
            self._context = default_context(self.cafile)
        return self._context


def default_context(cafile: str | None) -> ssl.SSLContext:
    """Verifies the server's certificate against the system's authorities, or
    only against `cafile` when given, and its name against the host given."""
    try:
        made = ssl.create_default_context(cafile=cafile)
    except FileNotFoundError:
        raise ConnectionProblem(
            f"no se puede leer el certificado de la autoridad {cafile!r}: no existe"
        ) from None
    except ssl.SSLError:
        raise ConnectionProblem(f"{cafile!r} no contiene ningún certificado PEM válido") from None
    except OSError as exc:
        raise ConnectionProblem(
            f"no se puede leer el certificado de la autoridad {cafile!r}: {reason(exc)}"
        ) from None
    made.minimum_version = ssl.TLSVersion.TLSv1_2
    return made


def wrap(
    sock: socket.socket, context: ssl.SSLContext, host: str, timeout: float, cafile: str | None = None
) -> ssl.SSLSocket:
    """The blocking handshake, bounded by the socket's timeout; closes `sock` if it fails."""
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except OSError as exc:
        sock.close()
        raise tls_failure(exc, host, timeout, cafile) from None


# OpenSSL's verification codes (X509_V_ERR_*) said in Spanish; others keep OpenSSL's words.
_UNTRUSTED = {
    9: "aún no es válido",
    10: "ha caducado",
    18: "está firmado por sí mismo y no se le indicó (--cafile)",
    19: "lo firma una autoridad que no se le indicó (--cafile)",
    20: "lo firma una autoridad desconocida (indíquela con --cafile)",
    21: "lo firma una autoridad desconocida (indíquela con --cafile)",
}
_UNTRUSTED_SIGNER = frozenset({18, 19, 20, 21})  # the signer is not among those trusted


def tls_failure(
    exc: BaseException, host: str, timeout: float, cafile: str | None = None
) -> ConnectionProblem:
    """Why the TLS handshake with `host` failed, for the one line a person reads."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _UNTRUSTED_SIGNER and cafile is not None:
            why = f"no lo firma el certificado de {cafile} (¿es el del servidor o el de su autoridad?)"
        elif code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH; 64 is its IP address twin
            why = f"no es válido para {host!r}"
        elif code == 64:
            why = f"no es válido para la dirección {host}"
        else:
            why = _UNTRUSTED.get(code) or exc.verify_message or str(exc)
        return ConnectionProblem(f"el certificado del servidor no es de confianza: {why}")
    if isinstance(exc, (TimeoutError, ConnectionAbortedError)):
        # asyncio gives up on a slow handshake with ConnectionAbortedError.
        return ConnectionProblem(f"la negociación TLS no terminó en {timeout:g} s")
    if isinstance(exc, (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)) or (
        isinstance(exc, ssl.SSLError) and exc.reason == "UNEXPECTED_EOF_WHILE_READING"
    ):
        return ConnectionProblem("el servidor cortó la negociación TLS (¿sirve TLS en ese puerto?)")
    if isinstance(exc, ssl.SSLError):
        detail = (exc.reason or str(exc)).lower().replace("_", " ")
        # A plain-text server greets in JSON, which is no TLS record at all.
        hint = " (¿sirve TLS en ese puerto?)" if "wrong version" in detail or "record" in detail else ""
        return ConnectionProblem(f"no se pudo negociar TLS con el servidor: {detail}{hint}")
    return ConnectionProblem(f"no se pudo negociar TLS con el servidor: {reason(exc)}")


def no_greeting(problem: ConnectionProblem, tls: bool) -> ConnectionProblem:
    """A plain-text client waits for a greeting that a TLS server never sends
    (a TLS server waits for the client to speak first): when the greeting does
    not come in time, say what is probably wrong."""
    if tls or not isinstance(problem, NoAnswer):
        return problem
    return ConnectionProblem(f"{problem}; si el servidor usa TLS, conéctese con --tls")


def auth_request(token: str) -> dict[str, Any]:
    return {"accion": "autenticar", "token": token}


def authenticated(reply: dict[str, Any]) -> str:
    """The role the server gave the token; `Refused` (no_autorizado) if it refused it."""
    if not reply.get("ok"):
        raise Refused(reply)
    return str(reply.get("rol", ""))
