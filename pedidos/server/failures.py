"""What a client is told when its request came to grief on the server's side.

A request's future that was cancelled, or raised, becomes one error reply
here, so the connection writes it like any other answer and the event loop
never sees the exception. An unavailable database is the client's cue to try
again later (`servidor_ocupado`), unless it went away during the write: then
the reply says the order may be stored. A write whose outcome was lost with the
process doing it is `error_interno` saying just that, since it may be stored;
anything else is logged and answered as `error_interno`, and it changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pedidos.logsetup import Repeating
from pedidos.protocol.replies import ERROR_INTERNO, SERVIDOR_OCUPADO, RequestError, encode_line, error_reply
from pedidos.storage.base import OutcomeUnknown, StorageBusy, StorageRefused, StorageUnavailable

# Logged as the connection's event, under the logger it always had: log
# filters and collectors select on that name.
logger = logging.getLogger("pedidos.server.connection")
failed = Repeating(logger)  # a broken database fails every request alike

UNKNOWN_OUTCOME = (
    "no se sabe si la petición tuvo efecto. Compruébelo (consultar, listar) antes de repetirla; "
    "un pedido con referencia se puede reenviar sin riesgo."
)
MAYBE_STORED = f"La base de datos dejó de responder mientras guardaba: {UNKNOWN_OUTCOME}"
BUSY = "La base de datos está ocupada: la operación esperó demasiado y se canceló"

# Sent before closing a connection accepted beyond the server's limit.
SERVER_FULL = encode_line(
    error_reply(SERVIDOR_OCUPADO, "El servidor no acepta más conexiones ahora; pruebe más tarde.")
)


def reply_of(future: asyncio.Future[Any], peer: str) -> dict | bytes:
    """The reply for a request's finished future: its result, or its failure told as an error."""
    if future.cancelled():
        return error_reply(ERROR_INTERNO, "La petición fue cancelada.")
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, RequestError):
        return error.reply()
    if isinstance(error, StorageBusy):  # logged by the backend, at most once every 10 s
        return error_reply(SERVIDOR_OCUPADO, f"{BUSY}; el pedido no se guardó. Pruebe más tarde.")
    if isinstance(error, StorageRefused):  # logged by the backend, at most once every 10 s
        return error_reply(
            SERVIDOR_OCUPADO,
            "La base de datos no admite escrituras ahora (solo lectura, disco lleno...); el pedido "
            "no se guardó. Pruebe más tarde.",
        )
    if isinstance(error, StorageUnavailable):  # logged once by the backend, not per order
        if error.maybe_done:
            # Still `servidor_ocupado` (the contract's code for a database that
            # went away), but "try later" alone would invite a duplicate.
            return error_reply(SERVIDOR_OCUPADO, MAYBE_STORED)
        return error_reply(SERVIDOR_OCUPADO, "La base de datos no responde ahora; pruebe más tarde.")
    if isinstance(error, OutcomeUnknown):  # logged once by the backend, not per request
        return error_reply(ERROR_INTERNO, f"Error interno del servidor: {UNKNOWN_OUTCOME}")
    failed.error("request from %s failed: %r", peer, error, key=(type(error), str(error)))
    return error_reply(ERROR_INTERNO, "Error interno del servidor; la petición no tuvo efecto.")
