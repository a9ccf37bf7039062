"""What the page shows, kept up to date from the event bus and pushed a few times a second.

The bus may carry thousands of orders a second; the page needs a few
pictures a second. So an event costs a dict update or two here, whatever its
size (counts move by `len(ids)`, never per id, and nothing is formatted), and
a ticker builds one snapshot every `TICK_S` at most, when something changed
or the chart's second is up. That snapshot is encoded once and handed to
every open page; a page that reads slowly simply skips to the newest one.

The counts per `estado` follow the events and are read again from the
database every `RESYNC_S` while somebody watches or scrapes /metrics, so that
they cannot drift for long (a scrape a second would otherwise count the whole
table every second).
A read may also hold a change whose event comes after it (the worker commits,
then tells the server through its pipe): a read with events during it or
just after it is read again soon, not `RESYNC_S` later; and a read followed
by any event is read again once the events pause, however late that event
came, so the figures are exact a second after the server goes quiet.
On a shared PostgreSQL database this node's events are only its own share of
the service, so there the counts are the last read as it is (one statement:
never an order counted twice), and they, the latest orders and the nodes
(nodes.py) are read every second.
Stdlib only: the HTTP side is in web.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pedidos.background import Background
from pedidos.domain import Estado
from pedidos.events import (
    CANCELLED,
    FAILED,
    FINISHED,
    RECEIVED,
    REQUEUED,
    RETRIED,
    RETRYING,
    STARTED,
    WORKER_DIED,
    WORKER_IDLE,
    Event,
    EventBus,
)
from pedidos.logsetup import Repeating
from pedidos.panel.nodes import Listing, LiveNodes, Nodes
from pedidos.protocol.validation import ESTADOS
from pedidos.stats import Stats

logger = logging.getLogger(__name__)
# A database that is down fails every read, a second apart while a page is
# open: said once per 10 s (with how many were left out), not 3600 times an hour.
unreadable = Repeating(logger)

TICK_S = 0.25  # at most four pictures a second reach a page
TICKS_PER_SECOND = 4
SERIES_SECONDS = 600  # the chart's ten minutes
RESYNC_S = 5
# A read during which events came, or just after it, may count them twice (in
# the read and as moves since): it is read again this soon, not RESYNC_S later.
RESYNC_AGAIN_S = 1.0
# How long after a read an event may still be one of its changes: a commit's
# way through a worker's pipe and the supervisor's thread to the loop.
LATE_S = 0.5
LATEST = 12  # rows of the latest-orders table
RECENT_POINTS = 5  # chart points repeated in each picture, so a skipped one costs nothing

# The plain words (`.value`), as ESTADOS holds them and the page reads them.
_PENDIENTE, _EN_PROCESO, _FALLIDO = Estado.PENDIENTE.value, Estado.EN_PROCESO.value, Estado.FALLIDO.value
# How an event moves orders between states: (from, to); None: a new order.
MOVES: dict[str, tuple[str | None, str]] = {
    RECEIVED: (None, _PENDIENTE),
    STARTED: (_PENDIENTE, _EN_PROCESO),
    FINISHED: (_EN_PROCESO, Estado.LISTO.value),
    CANCELLED: (_PENDIENTE, Estado.CANCELADO.value),
    FAILED: (_EN_PROCESO, _FALLIDO),
    RETRYING: (_EN_PROCESO, _PENDIENTE),
    REQUEUED: (_EN_PROCESO, _PENDIENTE),
    RETRIED: (_FALLIDO, _PENDIENTE),
}
# `nodo`: on a shared database, "worker 1" says nothing without its node (null on SQLite).
LATEST_FIELDS = ("id", "cliente", "estado", "worker", "nodo", "fecha_recibido", "fecha_inicio", "fecha_fin")


@dataclass
class LiveSource:
    """What the panel reads of the server; the server fills it in (server.py)."""

    bus: EventBus
    stats: Stats
    counts: Callable[[], Awaitable[dict[str, int]]]  # the whole service's count per estado
    latest: Callable[[int], Awaitable[list[dict[str, Any]]]]  # the newest N orders, newest first
    figures: Callable[[], dict[str, Any]]  # {"workers": alive, "conexiones": open[, "nodo": name]}
    workers: int  # how many worker processes the server runs (numbered 1..N)
    live_nodes: LiveNodes | None = None  # the storage's: the live nodes, None alone (SQLite)
    listing: Listing | None = None  # the storage's list_orders, for each node's busy workers


class Viewer:
    """One open page: the newest picture it has not yet been sent."""

    __slots__ = ("payload", "wake")

    def __init__(self) -> None:
        self.payload = b""
        self.wake = asyncio.Event()

    def offer(self, payload: bytes) -> None:
        self.payload = payload
        self.wake.set()

    def take(self) -> bytes:
        self.wake.clear()
        payload, self.payload = self.payload, b""
        return payload


class Live:
    def __init__(self, source: LiveSource) -> None:
        self._source = source
        self.viewers: set[Viewer] = set()
        # counts = base (last read from the database) + what the events moved since.
        self._base = dict.fromkeys(ESTADOS, 0)
        self._moved = dict.fromkeys(ESTADOS, 0)
        self._moved_at_base = dict(self._moved)
        self._early = False  # the last read was brought forward (see _bring_forward)
        self._next_early = False  # the next one is
        self._late_until = 0.0  # an event before this may be in the last read (LATE_S)
        self._synced_at: float | None = None  # when the counts were last read
        self._reading = asyncio.Lock()  # one read of the counts at a time (_resync)
        self._moved_at = 0.0  # when an event last moved the counts
        self._unsure = False  # an event since the last read may be one of its changes (_settled_due)
        self._working: dict[int, tuple[int, int, str | None, float]] = {}  # worker -> first id, n, since
        self._dirty = True
        self._latest: list[dict[str, Any]] = []
        self.series: deque[tuple[int, int, int]] = deque(maxlen=SERIES_SECONDS)
        self._nodes = Nodes(source.live_nodes, source.listing)
        self._ticker = Background(self._run)
        source.bus.subscribe(self._on_event)

    # --- the bus: O(1) per event ---------------------------------------------------

    def _on_event(self, event: Event) -> None:
        move = MOVES.get(event.kind)
        if move is not None:
            n = len(event.ids)
            if move[0] is not None:
                self._moved[move[0]] -= n
            self._moved[move[1]] += n
            self._dirty = True
            self._moved_at = time.monotonic()
            self._unsure = True
            if self._late_until:  # zero again at the first event after the read
                if self._moved_at < self._late_until:
                    self._bring_forward()
                self._late_until = 0.0
        # A worker does one chunk at a time, in order: its next STARTED, its
        # FINISHED or, when nothing of the chunk ended listo, its WORKER_IDLE
        # ends what it was doing.
        if event.worker is not None:
            if event.kind == STARTED and event.ids:
                self._working[event.worker] = (event.ids[0], len(event.ids), event.at, time.monotonic())
            elif event.kind in (FINISHED, WORKER_DIED, WORKER_IDLE):
                self._working.pop(event.worker, None)

    # --- the ticker ---------------------------------------------------------------

    def start(self) -> None:
        self._ticker.start()

    async def stop(self) -> None:
        await self._ticker.stop()

    async def join(self) -> Viewer:
        viewer = Viewer()
        # The first picture is what the page shows until the next tick: read
        # what nobody kept up to date while no page was open (the latest
        # orders; on a shared database the counts and the nodes too), or an
        # empty table, a hidden Nodos section or an hour-old figure flashes.
        try:
            if self._synced_at is None or self._nodes.shared:
                await self._resync()
            await self._refresh_latest()
            if self._nodes.shared:
                await self._nodes.refresh()
        except Exception as exc:
            unreadable.warning("panel could not read the database: %s", exc, key=type(exc))
        self.viewers.add(viewer)
        viewer.offer(self.picture(full=True))
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stats = self._source.stats
        last = (stats.received, sum(stats.finished.values()))
        next_at = loop.time()
        resync_s = 1 if self._nodes.shared else RESYNC_S
        for tick in itertools.count(1):
            next_at += TICK_S
            delay = next_at - loop.time()
            if delay < -1.0:  # fell far behind (a suspended machine): start afresh
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(max(0.0, delay))
            second = tick % TICKS_PER_SECOND == 0
            if second:
                now = (stats.received, sum(stats.finished.values()))
                self.series.append((int(time.time()), now[0] - last[0], now[1] - last[1]))
                last = now
            if not self.viewers:
                continue
            try:
                # On whole seconds only: a read that fails is not tried again every tick.
                due = second and (self._resync_due(resync_s) or self._settled_due())
                if self._synced_at is None or due:
                    await self._resync()
                if self._nodes.shared and (second or not self._nodes.fetched):
                    await self._nodes.refresh()
                    self._dirty = True  # other nodes' orders: no event of theirs reaches this bus
                if self._dirty:
                    self._dirty = False  # before the read: what happens during it marks it again
                    await self._refresh_latest()
                elif not second:
                    continue
            except Exception as exc:  # the database is busy or gone: show what we have
                unreadable.warning("panel could not read the database: %s", exc, key=type(exc))
            payload = self.picture(full=False)
            for viewer in self.viewers:
                viewer.offer(payload)

    async def _resync(self) -> None:
        """Read the counts. The ticker's read, a scrape's and a page's may come
        at once: one that comes during a read waits for it and takes its
        result. Two in flight would count the table twice, and the later to
        end would set `_synced_at` back over a bring-forward asked after the
        other (with `_next_early` left set, which blocks the next one)."""
        if self._reading.locked():
            async with self._reading:  # the read under way will do
                return
        async with self._reading:
            await self._read_counts()

    async def _read_counts(self) -> None:
        early, self._next_early = self._next_early, False
        self._late_until = 0.0  # what comes during the read is seen below
        moved_before = dict(self._moved)
        started = time.monotonic()  # a schedule of reads from their starts does not slip
        counts = await self._source.counts()
        self._base = {estado: counts.get(estado, 0) for estado in ESTADOS}
        self._moved_at_base = moved_before
        self._synced_at = started
        self._early = early
        self._late_until = time.monotonic() + LATE_S
        self._unsure = self._moved != moved_before
        if self._unsure:
            self._bring_forward()

    def _bring_forward(self) -> None:
        """What an event moved may be in the last read too, or not: which, no
        one knows (301 `listo` of 300 orders after a burst, for 5 s). Read again
        soon: once the events pause, the figures are exact. Once only: under
        steady load every read overlaps, and a read a second is what RESYNC_S
        spares a busy server."""
        self._late_until = 0.0
        if self._early or self._next_early or self._synced_at is None:
            return
        self._next_early = True
        self._synced_at -= RESYNC_S - RESYNC_AGAIN_S

    def _resync_due(self, period: float) -> bool:
        # Half a tick early is on time: the ticker looks on whole ticks.
        return self._synced_at is None or time.monotonic() - self._synced_at >= period - TICK_S / 2

    def _settled_due(self) -> bool:
        """The events have paused for RESYNC_AGAIN_S since one that came after
        the last read. That event may have been one of the read's own changes,
        however late it came (past LATE_S on a busy machine), or after a read
        that _bring_forward's once-only rule leaves be: without this read it
        is counted twice until RESYNC_S, though the server went quiet. Under
        steady load the events never pause, so this costs a read per burst,
        not a read a second (and a count off by one can last until RESYNC_S
        while the load lasts: 4.7 s seen under two CPU hogs). A shared database
        is read every second anyway, and shown as read."""
        if not self._unsure or self._synced_at is None or self._nodes.shared:
            return False
        now, settle = time.monotonic(), RESYNC_AGAIN_S - TICK_S / 2
        return now - self._moved_at >= settle and now - self._synced_at >= settle

    async def current_counts(self) -> dict[str, int]:
        """The counts for a scrape of /metrics. Alone on its database, this
        server's own: read from the database at most `RESYNC_S` ago and moved by
        every event since. On a shared database, read now: other nodes' orders
        move them too, and every node must report the same."""
        if self._nodes.shared:
            return await self._source.counts()
        if self._resync_due(RESYNC_S) or self._settled_due():
            await self._resync()
        return self.counts()

    async def _refresh_latest(self) -> None:
        rows = await self._source.latest(LATEST)
        self._latest = [{field: row.get(field) for field in LATEST_FIELDS} for row in rows]

    # --- the picture ----------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        if self._nodes.shared:
            return dict(self._base)
        # Never below zero: a read that holds a change whose event came after
        # it counts the move twice until it is read again.
        return {e: max(0, self._base[e] + self._moved[e] - self._moved_at_base[e]) for e in ESTADOS}

    def picture(self, full: bool) -> bytes:
        """One SSE message with everything the page shows (the whole chart when `full`)."""
        source, stats = self._source, self._source.stats
        figures = source.figures()
        now = time.monotonic()
        workers = []
        for number in range(1, source.workers + 1):
            held = self._working.get(number)
            if held is None:
                workers.append({"worker": number, "pedido": None})
            else:
                first, n, at, since = held
                workers.append(
                    {
                        "worker": number,
                        "pedido": first,
                        "mas": n - 1,
                        "desde": at,
                        "hace_s": round(now - since, 1),
                    }
                )
        skip = 0 if full else max(0, len(self.series) - RECENT_POINTS)
        counts = self.counts()
        doc = {
            "t": time.time(),
            "uptime_s": round(stats.uptime, 1),
            "conexiones": figures.get("conexiones", 0),
            "workers_vivos": figures.get("workers", 0),
            "estados": counts,
            "en_cola": counts[_PENDIENTE],
            "recibidos_total": stats.received,
            "terminados_total": sum(stats.finished.values()),
            "workers": workers,
            "nodos": self._nodes.view(figures),
            "ultimos": self._latest,
            "serie": list(itertools.islice(self.series, skip, None)),
            "completa": full,
        }
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        return b"event: panel\ndata: " + data.encode("utf-8") + b"\n\n"
