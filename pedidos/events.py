"""What happens to orders and workers, published in one place.

The writer (orders received, cancelled), the workers (started, finished) and
the pool (a worker died, its orders handed back) all publish here; whoever
needs to know subscribes: `esperar`, the dispatcher, the log, and later a live
dashboard. Subscribers run on the event loop's thread and must not block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

RECEIVED = "received"  # committed, `pendiente`
STARTED = "started"  # a worker took them: `en proceso`
FINISHED = "finished"  # `listo`
CANCELLED = "cancelled"  # `cancelado`
FAILED = "failed"  # `fallido`: too many interrupted attempts, or the task's last retry failed
RETRYING = "retrying"  # a task failed: `pendiente` again, taken no sooner than `at`
REQUEUED = "requeued"  # back to `pendiente` after their worker was gone
RETRIED = "retried"  # `fallido` back to `pendiente`: `reintentar`
ELSEWHERE = "elsewhere"  # another node changed them (no ids: maybe any): look again
WORKER_STARTED = "worker_started"
WORKER_DIED = "worker_died"
WORKER_IDLE = "worker_idle"  # a worker ended its chunk with none `listo` (each failed or was taken away)

FINAL = frozenset({FINISHED, CANCELLED, FAILED})


@dataclass(frozen=True)
class Event:
    kind: str
    ids: tuple[int, ...] = ()
    worker: int | None = None
    at: str | None = None  # the time the store recorded, when there is one


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                logger.exception("event subscriber failed on %s", event.kind)
