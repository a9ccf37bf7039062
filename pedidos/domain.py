"""What an order is, whatever carries or stores it: its states, its limits, a new order.

Each of these is defined here once and imported everywhere else (the wire,
the server, the storage backends, the client). Imports only the standard
library; every other module may import it.
"""

from __future__ import annotations

import enum
import json
from typing import Any, NamedTuple


class Estado(str, enum.Enum):
    """The state of an order. A `str` whose value is the wire's Spanish word,
    so JSON, SQL parameters and comparisons with plain text all see the word."""

    PENDIENTE = "pendiente"
    EN_PROCESO = "en proceso"
    LISTO = "listo"
    CANCELADO = "cancelado"
    FALLIDO = "fallido"

    # Python 3.11 changed format()/str() of mixed-in enums; a state always
    # reads as its word.
    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class RawJSON:
    """JSON text carried as it is: an order's `resultado` goes from the database
    into a reply without being parsed and written again. A `listar` page holds
    up to a thousand of them of up to 64 KiB: parsed and re-encoded, tens of
    megabytes that held the event loop, and every client, for seconds.
    `load()` gives the value where one is needed (a task's argument)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def load(self) -> Any:
        return json.loads(self.text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawJSON) and other.text == self.text

    __hash__ = None  # type: ignore[assignment]  # equal by text, like the str it wraps; not a key

    def __repr__(self) -> str:
        return f"RawJSON({self.text!r})"


ESTADOS = tuple(e.value for e in Estado)  # the words, in the contract's order
FINAL_ESTADOS = frozenset({Estado.LISTO.value, Estado.CANCELADO.value, Estado.FALLIDO.value})

MAX_ATTEMPTS = 3  # attempts interrupted by a crash before an order is `fallido`
# The `error` of an order made `fallido` by crashes: no exception to record, but
# the order must say why it was given up on.
CRASH_ERROR = (
    f"Interrumpido: el worker que lo hacía (o su servidor) terminó sin terminarlo {MAX_ATTEMPTS} veces."
)
DEFAULT_RETRIES = 3  # `--reintentos`: retries of a task that failed, before `fallido`
MAX_RESULT_BYTES = 64 * 1024  # a task's `resultado`, as UTF-8 JSON
MAX_ERROR_CHARS = 1000  # an `error` is cut to this: one line for a person, not a dump
# `--lease` on a shared PostgreSQL: how long a silent node lives on. Not under
# a second: renewals (three within the workers' part of it) and checks would
# load the database tens of times a second per node, and a pause of the
# node's process no longer than a scheduler's hiccup would cost a false death.
DEFAULT_LEASE_S = 5.0
MIN_LEASE_S = 1.0

# Limits of the contract (characters after trimming, seconds, rows).
CLIENTE_MAX = 200
PRODUCTO_MAX = 200
PRODUCTOS_MAX = 100
DIRECCION_MAX = 500
REFERENCIA_MAX = 100
MAX_TOKEN_CHARS = 256
# Said once for the client and the server, which may not import each other.
DEFAULT_PORT = 8888
TOKEN_ENV_VAR = "PEDIDOS_TOKEN"  # the client's access token (the server only names it)
MAX_ID = 2**63 - 1
MAX_SECONDS = 3600.0  # the longest `esperar` timeout, and the longest simulated work time
DEFAULT_TIMEOUT = 30.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class NewOrder(NamedTuple):
    """An order as the client sent it, validated and trimmed, not yet stored."""

    # A NamedTuple, not a frozen dataclass: one is built per order on the
    # event loop, and this is several times cheaper to build.
    cliente: str
    productos: tuple[str, ...]
    direccion: str
    referencia: str | None = None


class Receipt(NamedTuple):
    """What submitting one new order came to, once committed."""

    id: int
    estado: str
    duplicado: bool  # its referencia was stored already: this is that order
    # Its referencia is stored for a different order (other content, or another
    # owner's): nothing stored, refused with `referencia_en_uso`.
    taken: bool = False
    referencia: str | None = None  # given when `taken`, for the refusal to name


def show_address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets: `[::1]:8888`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
