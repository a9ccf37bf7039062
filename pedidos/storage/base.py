"""The storage interface: what the server, the service and the workers may ask of a backend.

Two sides. `Storage` lives in the server process, on the event loop: every
method is a coroutine or returns a future, and none blocks the loop.
`WorkerStore` lives in a worker process, synchronous, opened there by the
picklable `WorkerOpener` that `Storage.worker_opener()` hands out.

A backend keeps the table of the contract (section 7) and its promises: an
order is durable before `submit`'s future resolves, `referencia` is unique,
ids grow and are never reused, and a worker's `finish` or `fail` changes only
the orders its own claim still holds.

Tasks (contract section 11) add four values to each row, beyond section 7:
`resultado` (JSON, or null), `error` (text, or null), `reintentar_despues`
(a timestamp while a retry waits, or null) and `fallos` (integer, default 0:
how many of `intentos` were failures of the task rather than crashes). A
backend stores them (an existing database gains the columns at `start`) and
returns them in every order it reads, after `intentos`, in that order:
`fallos`, `resultado`, `error`, `reintentar_despues`. A `resultado` is read
as `domain.RawJSON`, its JSON text unparsed (valid JSON: text another program
stored there that is not comes back as a JSON string), or None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pedidos.domain import Estado, NewOrder, Receipt
from pedidos.storage.lease import NodeLease

if TYPE_CHECKING:  # the worker and writer processes import this without an event loop
    import asyncio

__all__ = ["Receipt"]  # part of this interface; defined with the domain


class StorageError(Exception):
    """The backend cannot do what was asked (the database is unusable, say).
    The message is one line for the operator."""


class StorageUnavailable(StorageError):
    """The database cannot be reached for now (a shared database restarting,
    say). The server refuses new orders with `servidor_ocupado` and commands
    with `error_interno` until it is back. `maybe_done`: the connection broke
    while the write was on its way, so it may have been committed; otherwise
    nothing was changed."""

    def __init__(self, message: str, maybe_done: bool = False) -> None:
        super().__init__(message)
        self.maybe_done = maybe_done


class StorageBusy(StorageUnavailable):
    """The database answered, but cancelled the statement: it ran past its time
    limit (waiting for a lock, reading millions of rows). Nothing was changed;
    the reply says so rather than that the database does not answer."""


class StorageRefused(StorageUnavailable):
    """The database answered, and refused the write: it is read-only (a
    standby, `default_transaction_read_only`), its disk is full, a table or a
    right is missing. Nothing was changed. The client is told that, not that
    the database does not answer; the log says why."""


class OutcomeUnknown(StorageError):
    """The process doing the write died before it answered: the write may or
    may not be committed. Never an ack; the client is told it cannot know."""


class ServerGone(Exception):
    """Raised in a worker process when its server died: the worker exits."""


class Recovery(NamedTuple):
    """What `start` found left `en proceso` by a server that stopped without handing back."""

    requeued: tuple[int, ...] = ()  # back to `pendiente`
    failed: tuple[int, ...] = ()  # `fallido`: that was their last attempt


class Claim(NamedTuple):
    """Orders a worker took. `at` (the recorded `fecha_inicio`, to the
    microsecond) with `worker` is the claim's token: `finish` matches it, so a
    claim taken away since (handed back, claimed again) is not overwritten."""

    worker: int
    at: str
    ids: tuple[int, ...]


class Finished(NamedTuple):
    at: str | None  # the recorded `fecha_fin`
    ids: tuple[int, ...]  # the claimed orders that are now `listo`


Ack = Callable[[Receipt], Any]


def plain_receipt(receipt: Receipt) -> Receipt:
    """The default `ack`: `submit`'s future resolves to the receipt itself."""
    return receipt


class WorkerStore(Protocol):
    """A worker process's own connection. Methods block; errors other than
    `ServerGone` mean nothing was changed and the call may be retried."""

    # On a database shared by many nodes: until when this node's claims are
    # its own (lease.py); a worker holding orders past it ends. None: a
    # server alone, whose claims hold as long as it lives.
    lease: NodeLease | None

    def claim(self, ids: Sequence[int], worker: int) -> Claim:
        """Take the orders among `ids` that are still `pendiente` and whose
        `reintentar_despues` is null or past: they become `en proceso` with
        `worker` and `fecha_inicio`, and `reintentar_despues` null; the claim
        lists them, oldest first (none: nothing could be taken)."""
        ...

    def finish(self, claim: Claim, resultados: Mapping[int, str] | None = None) -> Finished:
        """Mark `listo`, with `fecha_fin`, the orders that `claim` still holds,
        and clear their `reintentar_despues`. `resultados` (order id -> JSON
        text) stores each order's `resultado`; an id missing from it gets null.
        Their `error` stays: it is the last failure, if any."""
        ...

    def fail(self, claim: Claim, error: str, retry_at: str | None) -> list[tuple[int, Estado]]:
        """A failed attempt (the task raised, or returned what cannot be
        stored) of the orders `claim` still holds: `intentos` + 1, `fallos`
        + 1, `error` recorded. With `retry_at` (a timestamp) they go back to
        `pendiente`, with `reintentar_despues` = `retry_at`, `worker` and
        `fecha_inicio` null; with None they become `fallido` (keeping `worker`
        and `fecha_inicio`, as after a last crash). The caller decides which
        (the retry policy, processing/retry.py). Returns (id, new state) for
        each order changed; none when the claim no longer holds."""
        ...

    def get(self, order_id: int, owner: str | None = None) -> dict[str, Any] | None:
        """The order as `Storage.get` returns it: what a worker hands its task."""
        ...

    def close(self) -> None: ...


class WorkerOpener(Protocol):
    """Picklable: sent to each worker process when it is spawned, and called
    there once. `server_pid` lets a worker blocked on the database notice that
    its server died (it then raises `ServerGone`)."""

    def __call__(self, worker: int, server_pid: int) -> WorkerStore: ...


class Storage(Protocol):
    """The server's side of a backend (see the module docstring)."""

    async def start(self, recover: bool = True) -> Recovery:
        """Open the database, create or migrate the schema (proving it is
        writable), and hand back what a crash left `en proceso` (each such
        attempt counts; the `MAX_ATTEMPTS`-th makes the order `fallido`).
        `recover=False` hands back nothing: for tools and tests that look at
        a database as a stopped server left it. A database is one server's at
        a time (SQLite: a lock file beside it): a second `start` on it fails,
        changing nothing. Raises `StorageError` with a one-line reason that
        says what to do."""
        ...

    async def stop(self, timeout: float = 30.0) -> None:
        """Commit everything already submitted, then close; after `timeout`
        seconds (short after a second stop signal) give up on what is not
        committed yet, which then fails: none is acknowledged without its row."""
        ...

    def submit(
        self, order: NewOrder, owner: str | None, notify: Callable[[], None] | None = None
    ) -> asyncio.Future[Any]:
        """Store a new order for `owner` (None: no owner). The future resolves
        to `ack(receipt)` (the backend's `ack` argument) once the row is
        committed durably, or fails with the error that kept it out. Orders
        submitted together share one commit. `notify` is called once per
        commit for all the orders that named it, after their futures resolve.
        `on_stored(ids)` (the backend's argument) hears of the new ids."""
        ...

    async def get(self, order_id: int, owner: str | None = None) -> dict[str, Any] | None:
        """The order as a contract row (section 7), or None; with `owner`,
        only an order of that owner."""
        ...

    async def get_by_referencia(self, referencia: str, owner: str | None = None) -> dict[str, Any] | None:
        """The order whose `referencia` is exactly `referencia`, or None; with
        `owner`, only an order of that owner."""
        ...

    async def list_orders(
        self,
        estado: str | None,
        cliente: str | None,
        desde_id: int,
        limite: int,
        contiene: str | None = None,
        orden: str = "asc",
    ) -> list[dict[str, Any]]:
        """At most `limite` orders after `desde_id`: ids above it, oldest first
        (`orden` "asc"), or below it, newest first ("desc"; 0 means from the
        newest); filtered by `estado` and `cliente` (exact) when given, and by
        `contiene`, a substring of `cliente` in any case (folded as Python's
        `str.lower`)."""
        ...

    async def cancel(self, order_id: int, owner: str | None = None) -> tuple[dict[str, Any] | None, bool]:
        """Cancel a `pendiente` order: (the order as it now stands or None,
        whether this call cancelled it). With `owner`, only that owner's."""
        ...

    async def retry(self, order_id: int, owner: str | None = None) -> tuple[dict[str, Any] | None, bool]:
        """`reintentar`: put a `fallido` order back to `pendiente` with a fresh
        set of attempts (`intentos` and `fallos` 0; `resultado`,
        `reintentar_despues`, `fecha_inicio`, `fecha_fin`, `worker` null; its
        `error` stays). Returns (the order as it now stands or None, whether
        this call put it back); an order in any other state is not changed.
        With `owner`, only that owner's."""
        ...

    async def counts(self) -> dict[str, int]:
        """How many orders are in each state: every `Estado` word is a key."""
        ...

    async def pending_ids(self, from_id: int, limit: int) -> list[int]:
        """Ids of `pendiente` orders from `from_id` on, oldest first, leaving
        out those whose `reintentar_despues` is still ahead: the dispatcher's
        read of the backlog."""
        ...

    async def hand_back(self, worker: int, crashed: bool) -> list[tuple[int, Estado]]:
        """Put back what `worker` held `en proceso` (it died, or was killed at
        shutdown): `pendiente`, or `fallido` when `crashed` and that was the
        last attempt. Only a crash counts an attempt: `intentos` + 1, and the
        order is `fallido` once `intentos - fallos` reaches `MAX_ATTEMPTS`
        (failures of the task have their own limit). Returns (id, new state)."""
        ...

    async def fail(self, claim: Claim, error: str, retry_at: str | None) -> list[tuple[int, Estado]]:
        """`WorkerStore.fail`, from the server: for a claim whose worker was
        stopped (killed over `--limite-tarea`) and is gone. A backend whose
        workers share a lock frees it if that worker held it."""
        ...

    # How often an `esperar` reads its order again by itself, in seconds: for
    # a database that other servers change too (None: only this server
    # changes it, and its own events say when).
    poll_s: float | None

    # On a database shared by many nodes: this node's lease as its workers
    # see it (lease.py); None for a server alone.
    lease: NodeLease | None

    async def live_nodes(self) -> list[dict[str, Any]] | None:
        """The live servers sharing this database, for `estadisticas`
        (section 9 of the contract); None when this server is alone."""
        ...

    def worker_opener(self) -> WorkerOpener:
        """What a worker process calls to open its own `WorkerStore`. Valid
        after `start`."""
        ...
