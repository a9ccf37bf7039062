"""What each request does, apart from how it arrived.

`OrderService` answers validated requests with reply objects. Writes go to the
writer process (orders share its group commit), reads to a small pool of
reader threads; nothing here touches the disk on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pedidos.events import CANCELLED, FINAL, Event, EventBus
from pedidos.protocol.replies import (
    NO_AUTORIZADO,
    NO_CANCELABLE,
    NO_ENCONTRADO,
    TIEMPO_AGOTADO,
    RequestError,
    error_reply,
)
from pedidos.protocol.validation import FINAL_ESTADOS, Command, NewOrder
from pedidos.server.auth import Principal
from pedidos.storage.sqlite.store import Store
from pedidos.storage.sqlite.writer import Writer

logger = logging.getLogger(__name__)

Reply = dict[str, Any]
ADMIN_ONLY = frozenset({"listar", "estadisticas"})


class Reader:
    """Reads on a few threads, each with its own connection."""

    def __init__(self, db_path: str, threads: int = 2) -> None:
        self._db_path = db_path
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="pedidos-reader")
        self._local = threading.local()
        self._stores: list[Store] = []

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn, args)

    async def open(self) -> None:
        """Open every thread's connection now, while descriptors are plenty: a
        flood of client connections later could leave none for them."""
        barrier = threading.Barrier(self._threads)  # one task per thread
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._pool, self._open, barrier) for _ in range(self._threads))
        )

    def _open(self, barrier: threading.Barrier) -> None:
        self._run(lambda store: None, ())
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store(self._db_path)
            self._stores.append(store)
        return fn(store, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for store in self._stores:
            store.close()


class OrderService:
    def __init__(
        self,
        writer: Writer,
        reader: Reader,
        bus: EventBus,
        live_figures: Callable[[], dict[str, Any]],
    ) -> None:
        self._writer = writer
        self._read = reader
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
            "estadisticas": self._estadisticas,
        }

    def submit(
        self,
        order: NewOrder,
        principal: Principal | None = None,
        notify: Callable[[], None] | None = None,
    ) -> asyncio.Future[Reply]:
        """Store a new order; the reply is ready once it is committed (see
        Writer.submit for `notify`)."""
        return self._writer.submit(order, _owner(principal), notify)

    async def command(self, command: Command, principal: Principal | None = None) -> Reply:
        """Answer a command; with a `cliente` principal, only about its own orders."""
        if command.accion in ADMIN_ONLY and _owner(principal) is not None:
            raise RequestError(
                NO_AUTORIZADO, f"La acción '{command.accion}' requiere un token de administrador."
            )
        return await self._handlers[command.accion](owner=_owner(principal), **command.args)

    def release_waiters(self) -> None:
        """At shutdown: every `esperar` still waiting gets its answer now, and
        one that starts later does not wait."""
        self._released = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _consultar(self, id: int, owner: str | None) -> Reply:
        return {"ok": True, "pedido": await self._order(id, owner)}

    async def _esperar(self, id: int, timeout: float, owner: str | None) -> Reply:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(id, set()).add(waiter)
        try:
            order = await self._order(id, owner)
            if order["estado"] not in FINAL_ESTADOS and not self._released:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter, timeout)
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
        orders = await self._read(Store.list_orders, estado, cliente, desde_id, limite, contiene, orden)
        return {"ok": True, "pedidos": orders}

    async def _cancelar(self, id: int, owner: str | None) -> Reply:
        order, cancelled = await self._writer.run(Store.cancel, id, owner)
        if order is None:
            raise RequestError(NO_ENCONTRADO, f"No existe el pedido {id}.")
        if not cancelled:
            raise RequestError(
                NO_CANCELABLE,
                f"El pedido {id} está '{order['estado']}'; solo se cancela un pedido pendiente.",
                pedido=order,
            )
        self._bus.publish(Event(CANCELLED, (id,)))
        return {"ok": True, "pedido": order}

    async def _estadisticas(self, owner: str | None) -> Reply:
        counts = await self._read(Store.counts)
        return {
            "ok": True,
            "estados": counts,
            **self._live_figures(),
            "en_cola": counts["pendiente"],
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    async def _order(self, order_id: int, owner: str | None) -> dict[str, Any]:
        order = await self._read(Store.get, order_id, owner)
        if order is None:
            raise RequestError(NO_ENCONTRADO, f"No existe el pedido {order_id}.")
        return order

    def _on_event(self, event: Event) -> None:
        if event.kind not in FINAL or not self._waiters:
            return
        for order_id in event.ids:
            for waiter in self._waiters.get(order_id, ()):
                if not waiter.done():
                    waiter.set_result(None)


def _owner(principal: Principal | None) -> str | None:
    """Whose orders a principal sees: None means every order."""
    return None if principal is None or principal.is_admin else principal.owner
