"""What the server tells its log when it starts, and of each order at DEBUG.

The ready line ends with key=value fields that programs (tests, tools) read to
know where to connect; the rest is for the person running the server."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from pedidos.domain import show_address
from pedidos.events import FINISHED, RECEIVED, STARTED, Event
from pedidos.server import rapido
from pedidos.server.auth import TokenBook
from pedidos.server.config import ServerConfig
from pedidos.storage import shown_db
from pedidos.storage.base import Recovery
from pedidos.wording import count

# The server's own logger, as these lines always were: log filters and docs/operations.md name it.
logger = logging.getLogger("pedidos.server.server")

ACTIVITY = {RECEIVED: "acknowledged", STARTED: "started", FINISHED: "finished"}


def announce_ready(
    config: ServerConfig, addresses: list[tuple[str, int]], tls: bool, tokens: TokenBook | None
) -> None:
    """Log the ready line, after a warning when orders are open to other machines unguarded."""
    exposed = [host for host, _ in addresses if not ipaddress.ip_address(host).is_loopback]
    if exposed and tokens is None:
        logger.warning(
            "listening beyond this machine (%s) with no access token: anyone who can reach it "
            "can read every order; see --token-file",
            ", ".join(exposed),
        )
    logger.info(
        # Ends with key=value fields for programs (tests, tools): where to connect.
        "ready: %s, database %s, %s, %s, %s, %s; addresses=%s",
        count(config.workers, "worker"),
        shown_db(config.db),
        _work(config),
        rapido.describe(asyncio.get_running_loop()),
        "TLS" if tls else "plain TCP",
        count(len(tokens), "access token") if tokens is not None else "no access tokens",
        ",".join(show_address(host, port) for host, port in addresses),
    )


def _work(config: ServerConfig) -> str:
    """What a worker does with an order, for the ready line."""
    if config.task is None:
        return f"work time {config.processing_options()['--work-time']} s"
    limit = f", limit {config.task_limit:g} s" if config.task_limit else ""
    return f"task {config.task} ({count(config.retries, 'retry', 'retries')}{limit})"


def log_recovery(recovery: Recovery) -> None:
    """What the last run left `en proceso` was taken up at the start."""
    released = len(recovery.requeued) + len(recovery.failed)
    if released:
        logger.warning(
            "%s in process when the server last stopped; %d back to pending, %d failed",
            count(released, "order was", "orders were"),
            len(recovery.requeued),
            len(recovery.failed),
        )


def log_activity(event: Event) -> None:
    """At DEBUG: one line per order acknowledged, started, finished; ids only."""
    what = ACTIVITY.get(event.kind)
    if what is None:
        return
    by = f" by worker {event.worker}" if event.worker is not None else ""
    for order_id in event.ids:
        logger.debug(
            "order %d %s%s",
            order_id,
            what,
            by,
            extra={"event": f"order_{what}", "id": order_id, "worker": event.worker},
        )
