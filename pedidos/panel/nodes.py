"""The service's nodes on a shared PostgreSQL database, as the page shows them.

The same live nodes as `estadisticas` gives in `nodos` (section 9: workers,
connections, orders `en proceso`, last lease renewal), this node's own
workers and connections as of now, and for every node the order each of its
busy workers holds, from the `en proceso` orders in the database (other
nodes' workers publish nothing on this node's event bus). Read at most once a
second, and only while a page is open; on SQLite there are no nodes and the
page hides the section.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pedidos.domain import Estado

IN_PROCESS = Estado.EN_PROCESO.value
# `en proceso` orders read per refresh: a worker holding a chunk of many shows
# from its first; past this many some busy workers show as free until the next read.
IN_PROCESS_ROWS = 500

LiveNodes = Callable[[], Awaitable["list[dict[str, Any]] | None"]]
Listing = Callable[..., Awaitable[list[dict[str, Any]]]]


class Nodes:
    def __init__(self, live_nodes: LiveNodes | None, listing: Listing | None) -> None:
        self._live_nodes = live_nodes
        self._listing = listing
        self.nodes: list[dict[str, Any]] | None = None  # None: no nodes to show (SQLite)
        self.fetched = False

    @property
    def shared(self) -> bool:
        """Whether there may be nodes to show at all."""
        return self._live_nodes is not None

    async def refresh(self) -> None:
        self.fetched = True  # a failed read is retried at the next second, not every tick
        if self._live_nodes is None:
            return
        nodes = await self._live_nodes()
        if nodes is None or self._listing is None:
            self.nodes = nodes
            return
        held: dict[tuple[str, int], list[Any]] = {}  # (nodo, worker) -> [first id, n, since]
        for row in await self._listing(IN_PROCESS, None, 0, IN_PROCESS_ROWS):  # oldest first
            if row.get("worker") is None:
                continue
            key = (row.get("nodo"), row["worker"])
            if key in held:
                held[key][1] += 1
            else:
                held[key] = [row["id"], 1, row.get("fecha_inicio")]
        for node in nodes:
            node["trabajando"] = [
                {"worker": worker, "pedido": first, "mas": n - 1, "desde": since}
                for (nodo, worker), (first, n, since) in sorted(held.items(), key=lambda kv: kv[0][1])
                if nodo == node["nodo"]
            ]
        self.nodes = nodes

    def view(self, figures: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The nodes for a picture; this node's figures as of now (`figures`)."""
        if self.nodes is None:
            return None
        me = figures.get("nodo")
        view = []
        for node in self.nodes:
            node = dict(node, este=node["nodo"] == me)
            if node["este"]:
                node["workers"], node["conexiones"] = figures.get("workers", 0), figures.get("conexiones", 0)
            view.append(node)
        return view
