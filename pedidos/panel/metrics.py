"""`/metrics`: the server's figures in Prometheus' text format, computed at scrape time.

The server counts with plain integers (pedidos/stats.py); this collector turns
them into metric families only when Prometheus asks, in a registry of its
own (no process or GC collectors, and nothing shared between servers in one
process). The counts per `estado` are the panel's (live.py): on SQLite read
from the database every few seconds and moved by the server's events between
reads, so that a scrape a second does not count the whole table each time; on
a shared PostgreSQL database read for each scrape, the whole service's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pedidos.domain import Estado
from pedidos.stats import Histogram, Stats


class PedidosCollector(Collector):
    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._counts: dict[str, int] | None = {}
        self._figures: dict[str, Any] = {}
        self._viewers = 0

    def render(
        self,
        registry: CollectorRegistry,
        counts: dict[str, int] | None,
        figures: dict[str, Any],
        viewers: int,
    ) -> bytes:
        """The exposition text, with the figures just read (collect() cannot await);
        `counts` None: the database could not be read, and the counts are left out."""
        self._counts, self._figures, self._viewers = counts, figures, viewers
        return generate_latest(registry)

    def describe(self) -> list[Any]:
        return []  # or register() would call collect() to learn the names

    def collect(self) -> Iterator[Any]:
        stats = self._stats
        yield CounterMetricFamily(
            "pedidos_recibidos",
            "New orders acknowledged (committed), duplicates not counted.",
            stats.received,
        )
        finished = CounterMetricFamily(
            "pedidos_terminados", "Orders that reached a final state, by state.", labels=["estado"]
        )
        for estado, n in stats.finished.items():
            finished.add_metric([estado], n)
        yield finished
        if self._counts is not None:
            by_state = GaugeMetricFamily(
                "pedidos_estado", "Orders in each state in the whole service (database).", labels=["estado"]
            )
            for estado, n in self._counts.items():
                by_state.add_metric([estado], n)
            yield by_state
            yield GaugeMetricFamily(
                "pedidos_en_cola", "Orders pendiente.", self._counts.get(Estado.PENDIENTE.value, 0)
            )
        # Says whether the two above are absent because the database could not
        # be read, which a scraper cannot tell from a server that exports none.
        yield GaugeMetricFamily(
            "pedidos_base_legible",
            "1 if this scrape read the database (pedidos_estado and pedidos_en_cola present), 0 if not.",
            int(self._counts is not None),
        )
        yield GaugeMetricFamily("pedidos_workers", "Worker processes alive.", self._figures.get("workers", 0))
        yield GaugeMetricFamily(
            "pedidos_conexiones", "Open client connections on this node.", self._figures.get("conexiones", 0)
        )
        yield _histogram(
            "pedidos_ack_segundos", "Seconds from the last byte of an order to its ack.", stats.ack
        )
        yield _histogram("pedidos_lote_pedidos", "Orders stored per commit (group commit).", stats.batch)
        yield _histogram(
            "pedidos_commit_segundos",
            "Seconds per group commit of new orders (one transaction).",
            stats.commit,
        )
        yield CounterMetricFamily(
            "pedidos_worker_reinicios", "Worker processes that died and were replaced.", stats.worker_restarts
        )
        yield CounterMetricFamily(
            "pedidos_conexiones_rechazadas",
            "Connections refused (connection limit, or stopping).",
            stats.refused_connections,
        )
        yield GaugeMetricFamily("pedidos_uptime_segundos", "Seconds since the server started.", stats.uptime)
        yield GaugeMetricFamily("pedidos_panel_paginas", "Pages open on the live panel.", self._viewers)


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    cumulative = histogram.cumulative()
    buckets = [(_bound(b), c) for b, c in zip(histogram.bounds, cumulative[:-1], strict=True)]
    buckets.append(("+Inf", cumulative[-1]))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.sum)


def _bound(value: float) -> str:
    return repr(float(value))


def make_registry(stats: Stats) -> tuple[CollectorRegistry, PedidosCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = PedidosCollector(stats)
    registry.register(collector)
    return registry, collector
