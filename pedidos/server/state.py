"""What every connection shares, and all it may reach of the server.

A `Connection` gets this small object, never the `Server` (uvicorn's
`ServerState` is the model): the settings, the service that answers requests,
the access tokens, and the set of open connections with the rule that admits
a new one. The server owns it and reads the same set when it stops.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from pedidos.server.auth import FailureThrottle, TokenBook
from pedidos.server.config import ServerConfig
from pedidos.server.service import OrderService

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class ServerState:
    config: ServerConfig
    service: OrderService
    loop: asyncio.AbstractEventLoop
    tokens: TokenBook | None  # None: the server asks for no token
    throttle: FailureThrottle
    connections: set[Any] = field(default_factory=set)  # the open Connections
    accepting: bool = False  # False before the start and from the stop on
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # set when none is left

    def admit(self, connection: Any) -> bool:
        """Count a new connection in, unless the server stops or is full."""
        if not self.accepting or len(self.connections) >= self.config.max_connections:
            logger.warning("refusing %s: %d connections open", connection.peer, len(self.connections))
            return False
        self.connections.add(connection)
        return True

    def forget(self, connection: Any) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self.drained.set()
