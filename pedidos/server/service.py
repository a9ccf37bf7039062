"""What each request does, apart from how it arrived.

`OrderService` answers validated requests with reply objects, through the
storage interface (pedidos/storage/base.py), whose every call leaves the
event loop free; nothing here knows which database is behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from pedidos.domain import FINAL_ESTADOS, Estado, NewOrder
from pedidos.events import CANCELLED, ELSEWHERE, FINAL, RETRIED, Event, EventBus
from pedidos.protocol.replies import (
    ERROR_INTERNO,
    NO_AUTORIZADO,
    NO_CANCELABLE,
    NO_ENCONTRADO,
    NO_REINTENTABLE,
    TIEMPO_AGOTADO,
    RequestError,
    error_reply,
)
from pedidos.protocol.validation import Command
from pedidos.server.auth import Principal
from pedidos.server.failures import BUSY, UNKNOWN_OUTCOME
from pedidos.storage.base import Storage, StorageBusy, StorageUnavailable

logger = logging.getLogger(__name__)

Reply = dict[str, Any]
ADMIN_ONLY = frozenset({"listar", "estadisticas", "reintentar"})
WRITES = frozenset({"cancelar", "reintentar"})  # the commands that change an order


class OrderService:
    def __init__(
        self,
        storage: Storage,
        bus: EventBus,
        live_figures: Callable[[], dict[str, Any]],
    ) -> None:
        self._storage = storage
        self._bus = bus
        self._live_figures = live_figures
        self._started = time.monotonic()
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}
        self._released = False
        bus.subscribe(self._on_event)
        self._handlers = {
            "consultar": self._consultar,
            "esperar": self._esperar,
            "listar": self._listar,
            "cancelar": self._cancelar,
            "reintentar": self._reintentar,
            "estadisticas": self._estadisticas,
        }

    def submit(
        self,
        order: NewOrder,
        principal: Principal | None = None,
        notify: Callable[[], None] | None = None,
    ) -> asyncio.Future[Reply]:
        """Store a new order; the reply is ready once it is committed (see
        Storage.submit for `notify`)."""
        return self._storage.submit(order, _owner(principal), notify)

    async def command(self, command: Command, principal: Principal | None = None) -> Reply:
        """Answer a command; with a `cliente` principal, only about its own orders."""
        if command.accion in ADMIN_ONLY and _owner(principal) is not None:
            raise RequestError(
                NO_AUTORIZADO, f"La acción '{command.accion}' requiere un token de administrador."
            )
        try:
            return await self._handlers[command.accion](owner=_owner(principal), **command.args)
        except StorageBusy:
            raise RequestError(ERROR_INTERNO, f"{BUSY}; la petición no tuvo efecto.") from None
        except StorageUnavailable as exc:
            # Logged once by the backend when the database went away.
            if exc.maybe_done and command.accion in WRITES:
                why = f"La base de datos dejó de responder: {UNKNOWN_OUTCOME}"
                raise RequestError(ERROR_INTERNO, why) from None
            raise RequestError(
                ERROR_INTERNO, "La base de datos no responde ahora; la petición no tuvo efecto."
            ) from None

    def release_waiters(self) -> None:
        """At shutdown: every `esperar` still waiting gets its answer now, and
        one that starts later does not wait."""
        self._released = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _consultar(self, id: int | None, referencia: str | None, owner: str | None) -> Reply:
        if referencia is not None:
            order = await self._storage.get_by_referencia(referencia, owner)
            if order is None:
                raise RequestError(NO_ENCONTRADO, f"No existe un pedido con la referencia {referencia!r}.")
            return {"ok": True, "pedido": order}
        return {"ok": True, "pedido": await self._order(id, owner)}  # type: ignore[arg-type]

    async def _esperar(self, id: int, timeout: float, owner: str | None) -> Reply:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(id, set()).add(waiter)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        poll_s = self._storage.poll_s
        try:
            order = await self._order(id, owner)
            # A wake-up may be only a hint (another node changed *some*
            # orders), and with a shared database a poll catches a lost one.
            while order["estado"] not in FINAL_ESTADOS and not self._released:
                left = deadline - loop.time()
                if left <= 0:
                    break
                wait_s = left if poll_s is None else min(left, poll_s)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), wait_s)
                if waiter.done():
                    self._waiters[id].discard(waiter)
                    waiter = loop.create_future()
                    self._waiters[id].add(waiter)
                order = await self._order(id, owner)
        finally:
            waiters = self._waiters[id]
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[id]
        if order["estado"] in FINAL_ESTADOS:
            return {"ok": True, "pedido": order}
        if self._released:
            return error_reply(
                TIEMPO_AGOTADO,
                f"El servidor se está apagando: el pedido {id} sigue '{order['estado']}'; "
                "consúltelo cuando vuelva a estar en marcha.",
                pedido=order,
                apagando=True,
            )
        return error_reply(
            TIEMPO_AGOTADO,
            f"El pedido {id} sigue '{order['estado']}' después de {timeout:g} s.",
            pedido=order,
        )

    async def _listar(
        self,
        estado: str | None,
        cliente: str | None,
        contiene: str | None,
        desde_id: int,
        limite: int,
        orden: str,
        owner: str | None,
    ) -> Reply:
        orders = await self._storage.list_orders(estado, cliente, desde_id, limite, contiene, orden)
        return {"ok": True, "pedidos": orders}

    async def _cancelar(self, id: int, owner: str | None) -> Reply:
        changed = await self._storage.cancel(id, owner)
        return self._changed(id, changed, NO_CANCELABLE, "solo se cancela un pedido pendiente", CANCELLED)

    async def _reintentar(self, id: int, owner: str | None) -> Reply:
        changed = await self._storage.retry(id, owner)
        return self._changed(id, changed, NO_REINTENTABLE, "solo se reintenta un pedido fallido", RETRIED)

    def _changed(self, id: int, changed: tuple[Any, bool], refused: str, rule: str, kind: str) -> Reply:
        """The reply to a state change the storage made (or refused, by `rule`)."""
        order, done = changed
        if order is None:
            raise RequestError(NO_ENCONTRADO, f"No existe el pedido {id}.")
        if not done:
            raise RequestError(refused, f"El pedido {id} está '{order['estado']}'; {rule}.", pedido=order)
        self._bus.publish(Event(kind, (id,)))
        return {"ok": True, "pedido": order}

    async def _estadisticas(self, owner: str | None) -> Reply:
        counts = await self._storage.counts()
        figures = self._live_figures()
        reply = {
            "ok": True,
            "estados": counts,
            **figures,
            # Requests, not clients: one client may wait on many orders.
            "esperando": sum(len(waiters) for waiters in self._waiters.values()),
            "en_cola": counts[Estado.PENDIENTE.value],
            "uptime_s": round(time.monotonic() - self._started, 3),
        }
        nodes = await self._storage.live_nodes()
        if nodes is not None:
            # The whole service's workers: this node's as of now, the others'
            # as of their last lease renewal.
            for node in nodes:
                if node["nodo"] == figures.get("nodo"):
                    node["workers"], node["conexiones"] = figures["workers"], figures["conexiones"]
            reply["workers"] = sum(node["workers"] for node in nodes)
            reply["nodos"] = nodes
            reply.pop("nodo", None)
        return reply

    async def _order(self, order_id: int, owner: str | None) -> dict[str, Any]:
        order = await self._storage.get(order_id, owner)
        if order is None:
            raise RequestError(NO_ENCONTRADO, f"No existe el pedido {order_id}.")
        return order

    def _on_event(self, event: Event) -> None:
        if (event.kind not in FINAL and event.kind != ELSEWHERE) or not self._waiters:
            return
        for order_id in event.ids or (list(self._waiters) if event.kind == ELSEWHERE else ()):
            for waiter in self._waiters.get(order_id, ()):
                if not waiter.done():
                    waiter.set_result(None)


def _owner(principal: Principal | None) -> str | None:
    """Whose orders a principal sees: None means every order."""
    return None if principal is None or principal.is_admin else principal.owner
