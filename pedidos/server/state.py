"""What every connection shares, and all it may reach of the server.

A `Connection` gets this small object, never the `Server` (uvicorn's
`ServerState` is the model): the settings, the service that answers requests,
the access tokens, the running figures, and the set of open connections
with the rule that admits a new one. The server owns it and reads the same set when it stops.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from pedidos.logsetup import Repeating
from pedidos.server.auth import FailureThrottle, TokenBook
from pedidos.server.config import ServerConfig
from pedidos.server.service import OrderService
from pedidos.stats import Stats
from pedidos.wording import count

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class ServerState:
    config: ServerConfig
    service: OrderService
    loop: asyncio.AbstractEventLoop
    tokens: TokenBook | None  # None: the server asks for no token
    throttle: FailureThrottle
    max_connections: int  # --max-connections, within the descriptor limit (listener.py)
    connections: set[Any] = field(default_factory=set)  # the open Connections
    accepting: bool = False  # False before the start and from the stop on
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # set when none is left
    # Refusals at the limit: said when they start, then at most once every 10 s
    # while they last, with how many more (a storm of clients is one event).
    refusing: Repeating = field(default_factory=lambda: Repeating(logger), repr=False)
    # Running figures (ack latency, refusals; the rest from the bus) for the panel.
    stats: Stats = field(default_factory=Stats)
    # Computed once: per-connection debug lines cost nothing when they are off.
    debug: bool = field(default_factory=lambda: logger.isEnabledFor(logging.DEBUG))

    def admit(self, connection: Any) -> bool:
        """Count a new connection in, unless the server stops or is full."""
        if not self.accepting:
            self.stats.refused_connections += 1
            return False
        if len(self.connections) >= self.max_connections:
            self.stats.refused_connections += 1
            self.refusing.warning(
                "refusing new connections with servidor_ocupado: %s open (--max-connections %d)",
                count(len(self.connections), "connection"),
                self.max_connections,
                key="full",
            )
            return False
        self.connections.add(connection)
        if self.debug:
            logger.debug(
                "connection from %s opened",
                connection.peer,
                extra={"event": "connection_opened", "peer": connection.peer},
            )
        return True

    def forget(self, connection: Any) -> None:
        if self.debug and connection in self.connections:
            logger.debug(
                "connection from %s closed",
                connection.peer,
                extra={"event": "connection_closed", "peer": connection.peer},
            )
        self.connections.discard(connection)
        if not self.connections:
            self.drained.set()
