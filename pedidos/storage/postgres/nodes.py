"""Node liveness: a lease per node in the `nodos` table.

Each node renews its lease every second (more often for a lease under 4 s). Any live node that finds another's
lease run out declares it dead and hands its `en proceso` orders back (one
statement, `sql.REAP`, safe when two nodes run it at once). A node reaps only
once its own connection has been up, and its own renewals on time, for a
whole lease, and a reap that waited on a lock decides nothing: after
PostgreSQL itself was down, or something held every node's renewals up (a
lock on `nodos`), every lease has run out, and the first node to go on must
not declare the others dead before they have had a chance to renew.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from pedidos.background import Background
from pedidos.domain import CRASH_ERROR, MAX_ATTEMPTS, Estado
from pedidos.logsetup import Repeating
from pedidos.storage import lease as shared_lease
from pedidos.storage.lease import NodeLease
from pedidos.storage.postgres import agreement, sql
from pedidos.storage.postgres.link import DatabaseUnavailable, Health, Link, one_line
from pedidos.wording import count

logger = logging.getLogger(__name__)
# A database that answers every renewal or reap with the same error (read-only,
# a statement cancelled behind a lock): once, then at most every 10 s per kind.
upkeep_failed = Repeating(logger)

# The parameters of handing back, besides whose orders (sql._HAND_BACK_SET).
_HAND_BACK = {"max": MAX_ATTEMPTS, "crash": CRASH_ERROR}

RENEW_S = 1.0
# A lease is renewed at least this many times while it holds: renewing once
# per lease lost a 1 s lease whenever a renewal came a few milliseconds late,
# and the node was declared dead while it worked (its orders handed back, an
# attempt counted, each processed twice).
RENEWALS_PER_LEASE = 3
# Leases are checked four times as often as they are renewed: a dead node's
# orders move at most a quarter of a renewal after its lease runs out, which
# keeps failover (lease + this + one order's work) well inside lease + 2 s even
# on a busy machine. The check is one statement that finds nothing when every
# node is alive: cheap enough to run four times a second on every node.
CHECKS_PER_RENEWAL = 4


def renewal_interval(lease: float) -> float:
    """Seconds between two renewals of a `lease`-second lease: counted within
    what the workers are given of it (lease.py), so that they too stop only
    after several renewals in a row failed."""
    return min(RENEW_S, (lease - shared_lease.margin(lease)) / RENEWALS_PER_LEASE)


def _per_lease(lease: float) -> float:
    """Three renewals per lease, once a second at most: the pace of the
    checks and of `fresh` (as before renewals were fitted to the workers' part)."""
    return min(RENEW_S, lease / RENEWALS_PER_LEASE)


def check_interval(lease: float) -> float:
    """Seconds between two looks at the other nodes' leases."""
    return _per_lease(lease) / CHECKS_PER_RENEWAL


class CannotJoin(Exception):
    """This node may not join the live ones; the message says why."""


class NameTaken(CannotJoin):
    """Another live node has this name."""


class Nodes:
    def __init__(
        self,
        link: Link,
        lease_link: Link,
        health: Health,
        nodo: str,
        lease: float,
        figures: Callable[[], tuple[int, int]],
        on_handed_back: Callable[[list[tuple[int, str]]], None],
        ajustes: dict[str, Any] | None = None,
    ) -> None:
        """`lease_link`: for the renewals alone (see backend.py); `figures()`:
        (workers alive, connections) of this node, published with each renewal;
        `on_handed_back`: orders taken from dead nodes; `ajustes`: this node's
        processing options ({option: value as typed, None when not given, True
        for a flag}), which every live node's must equal (None: not compared)."""
        self.nodo = nodo
        self.ajustes = ajustes
        self.lease = lease
        self.token = secrets.token_hex(16)
        self.host = socket.gethostname()
        self._link = link
        self._lease_link = lease_link
        self._health = health
        self._figures = figures
        self._on_handed_back = on_handed_back
        # Two loops: a reap waiting on `pedidos` must not hold up the renewals.
        self._renewal = Background(self._renew_forever)
        self._reaping = Background(self._reap_forever)
        self._registered = True
        self._joined = False  # whether this node ever took its name (a row of its own in `nodos`)
        self._renewed_at: float | None = None  # time.monotonic() of the last renewal
        self._on_time_since: float | None = None
        self._renewing_since: float | None = None  # a renewal under way since
        self.shared = NodeLease(lease)  # until when this node's workers may work (lease.py)

    async def register(self) -> None:
        """Take this node's name and check that the live nodes process orders as
        this one would, or raise `CannotJoin` (holding no name). A row of a dead
        process of this very host (a node killed and started again within its
        lease) is taken over at once rather than after the lease.

        One transaction, under an advisory lock, one starting node at a time: a
        node that refuses is never seen by another (its row is rolled back; a
        row committed, then deleted, once refused a node starting meanwhile with
        the live nodes' own options), and of two started at once with other
        options the second sees the first's row and refuses."""
        async with self._link.use() as conn, conn.transaction():
            await conn.execute(sql.JOIN_IDLE)
            await conn.execute(sql.JOIN_LOCK)
            sent = await self._take_name(conn)
            await self._check_settings(conn)
        self._joined = True
        self.shared.renewed(sent)

    async def _check_settings(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self.ajustes is None:
            return
        others = await (await conn.execute(sql.OTHERS_AJUSTES, (self.nodo,))).fetchall()
        try:
            warnings = agreement.compare(self.ajustes, others)
        except agreement.SettingsDiffer as exc:
            raise CannotJoin(str(exc)) from None
        for warning in warnings:
            logger.warning("%s", warning)

    async def _take_name(self, conn: psycopg.AsyncConnection[Any]) -> float:
        """The name, or `NameTaken`; when the registration was sent (shared_lease.now())."""
        sent = await self._try_register(conn, -1)
        if sent is not None:
            return sent
        row = await (await conn.execute(sql.HOLDER, (self.nodo,))).fetchone()
        if row is not None:
            host, pid, live = row
            stale = host == self.host and pid != os.getpid() and not _running(pid)
            if stale and (sent := await self._try_register(conn, pid)) is not None:
                return sent
            if live:
                raise NameTaken(f"the node name {self.nodo!r} is taken by a live node ({host}, pid {pid})")
        sent = await self._try_register(conn, -1)
        if sent is None:
            raise NameTaken(f"the node name {self.nodo!r} is taken by a live node")
        return sent

    async def _try_register(self, conn: psycopg.AsyncConnection[Any], stale_pid: int) -> float | None:
        params = {
            "nodo": self.nodo,
            "host": self.host,
            "pid": os.getpid(),
            "token": self.token,
            "lease": self.lease,
            "stale_pid": stale_pid,
            "ajustes": agreement.published(self.ajustes),
        }
        sent = shared_lease.now()
        taken = await (await conn.execute(sql.REGISTER, params)).fetchone() is not None
        return sent if taken else None

    async def hand_back(self, worker: int | None, crashed: bool) -> list[tuple[int, str]]:
        """This node's orders in process (of `worker`, or all) back to `pendiente`;
        a crash counts an attempt, the last one makes the order `fallido`."""
        params = {**_HAND_BACK, "nodo": self.nodo, "worker": worker, "cuenta": int(crashed)}
        async with self._link.use() as conn:
            return sorted(await (await conn.execute(sql.HAND_BACK, params)).fetchall())

    def start(self) -> None:
        self._renewal.start()
        self._reaping.start()

    async def stop(self, failed_start: bool = False) -> None:
        """Stop renewing and give the name up (after the orders were handed back).
        `failed_start`: the start failed and says why itself; a refusal here
        (the same missing right, most often) would be a second ERROR line
        ahead of the cause, so it goes to the debug log."""
        await self._reaping.stop()
        await self._renewal.stop()
        if not self._joined:
            return  # no name taken, none to give up (nor perhaps a `nodos` to delete from)
        try:
            async with self._link.use() as conn:
                await conn.execute(sql.LEAVE, (self.nodo, self.token))
        except DatabaseUnavailable:
            pass
        except Exception as exc:  # a database that refuses writes (read-only), say
            # The stop goes on: its lease runs out and another node reaps, as
            # after a crash.
            level = logging.DEBUG if failed_start else logging.ERROR
            logger.log(level, "node %s could not give up its name: %s", self.nodo, one_line(exc))

    async def _renew_forever(self) -> None:
        await self._forever(renewal_interval(self.lease), self.renew)

    async def _reap_forever(self) -> None:
        await self._forever(check_interval(self.lease), self.reap)

    @staticmethod
    async def _forever(every: float, step: Callable[[], Awaitable[None]]) -> None:
        """`step()` every `every` seconds, from one start to the next (a late
        one is not followed by a burst)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due = max(due + every, loop.time())
            await asyncio.sleep(due - loop.time())
            try:
                await step()
            except DatabaseUnavailable:
                pass  # the link logs it and reconnects
            except psycopg.Error as exc:
                upkeep_failed.error("node lease upkeep failed: %s", one_line(exc), key=type(exc))
            except Exception:
                logger.exception("node lease upkeep failed")  # a bug: its traceback

    async def tick(self) -> None:
        """Renew this node's lease, then reap the nodes whose lease ran out."""
        await self.renew()
        await self.reap()

    def _params(self) -> dict[str, Any]:
        workers, conexiones = self._figures()
        return {
            "nodo": self.nodo,
            "token": self.token,
            "lease": self.lease,
            "workers": workers,
            "conexiones": conexiones,
        }

    async def renew(self) -> None:
        self._renewing_since = time.monotonic()
        sent = shared_lease.now()
        try:
            async with self._lease_link.use() as conn:
                renewed = await (await conn.execute(sql.RENEW, self._params())).fetchone()
        finally:
            self._renewing_since = None
        now = time.monotonic()
        if renewed is not None:
            self.shared.renewed(sent)
        else:
            self.shared.lost()  # before a new registration moves the deadline on
            await self._rejoin()
        if renewed is None or self._renewed_at is None or now - self._renewed_at > self.lease / 2:
            # Held up: what held this node's renewals up (a lock, a pause of
            # the database) may have held every node's, and their leases ran
            # out too. It reaps again once it has renewed on time for a lease.
            self._on_time_since = now
        self._renewed_at = now

    async def reap(self) -> None:
        """Declare dead the nodes whose lease ran out; hand back what they held.
        Only once the database has been back, and this node's own renewals on
        time, for a whole lease: the others had as long to renew."""
        if self._health.up_for() < self.lease:
            return
        now = time.monotonic()
        if self._renewing_since is not None and now - self._renewing_since > self.lease / 2:
            # A renewal held up right now counts as late already: the lock
            # holding it may be gone this instant, with the others' renewals
            # still on their way behind it.
            self._on_time_since = now
        if self._on_time_since is None or now - self._on_time_since < self.lease:
            return
        async with self._link.use() as conn:
            if self._health.up_for() < self.lease:
                # Again, with the connection in hand: one found closed (the
                # database just restarted, unseen by the check above) counts as
                # back just now, and the nodes whose leases ran out meanwhile may
                # have renewals on their way (a reap sent then declared a live
                # node dead).
                return
            fresh = _per_lease(self.lease) / 2
            reap = {**self._params(), **_HAND_BACK, "cuenta": 1, "fresh": fresh}
            rows = await (await conn.execute(sql.REAP, reap)).fetchall()
        dead = [nodo for nodo, order_id, _ in rows if order_id is None]
        moved = [(order_id, estado) for _, order_id, estado in rows if order_id is not None]
        for nodo in dead:
            held = Counter(estado for held_by, i, estado in rows if i is not None and held_by == nodo)
            logger.warning(
                # Its own lease, not this node's: each node has the --lease it was started with.
                "node %s missed its lease: declared dead; %s handed back, %d failed",
                nodo,
                count(held[Estado.PENDIENTE.value], "order"),
                held[Estado.FALLIDO.value],
            )
        if moved:
            self._on_handed_back(moved)

    async def _rejoin(self) -> None:
        """Our lease was taken away (we were paused or cut off, and declared
        dead): our orders were handed back already; take the name again."""
        try:
            await self.register()
        except CannotJoin as exc:
            if self._registered:
                logger.error("this node was declared dead and %s; it takes no new work", exc)
            self._registered = False
            return
        logger.warning("this node's lease had run out (declared dead); registered again as %s", self.nodo)
        self._registered = True


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A node killed a moment ago may linger as a zombie until its parent
    # reaps it: signal 0 still reaches it, yet it runs nothing.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc here: trust the signal
