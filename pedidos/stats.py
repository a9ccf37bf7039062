"""Running figures of the server, cheap enough to keep on the hot path.

Plain integers and bucketed histograms, counted as things happen: the
connection adds each ack's latency, the storage each group commit's time,
the server each refused connection, and the event bus everything else.
Nothing here formats or exports: the panel (pedidos/panel/) reads these at
scrape time. Stdlib only, so the server keeps them whether or not the
panel's libraries are installed.
"""

from __future__ import annotations

import time
from bisect import bisect_left

from pedidos.domain import Estado
from pedidos.events import CANCELLED, FAILED, FINISHED, RECEIVED, WORKER_DIED, Event, EventBus

# Upper bounds (seconds) of the ack latency buckets: group commit puts most
# acks in the low milliseconds, an overloaded disk in the seconds.
ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Upper bounds of the orders stored per commit answer (group commit batches).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# Upper bounds (seconds) of one group commit of new orders: from a tenth of a
# millisecond (an fsync on fast storage) to the seconds of a struggling disk
# or database (PostgreSQL's intake gives up on a batch after 10 s).
COMMIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
FINAL_ESTADO = {FINISHED: Estado.LISTO.value, CANCELLED: Estado.CANCELADO.value, FAILED: Estado.FALLIDO.value}


class Histogram:
    """Counts per bucket (the last one is +Inf) and the sum: what Prometheus
    wants, without its locks. `observe` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[int]:
        total, out = 0, []
        for count in self.counts:
            total += count
            out.append(total)
        return out


class Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.received = 0  # acknowledged new orders (not duplicates)
        self.finished = dict.fromkeys(FINAL_ESTADO.values(), 0)
        self.worker_restarts = 0
        self.refused_connections = 0
        self.ack = Histogram(ACK_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)
        self.commit = Histogram(COMMIT_BUCKETS)  # observed by the storage, once per group commit

    def subscribe(self, bus: EventBus) -> None:
        bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        kind = event.kind
        if kind == RECEIVED:
            self.received += len(event.ids)
            self.batch.observe(len(event.ids))
        elif kind in FINAL_ESTADO:
            self.finished[FINAL_ESTADO[kind]] += len(event.ids)
        elif kind == WORKER_DIED:
            self.worker_restarts += 1

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started
