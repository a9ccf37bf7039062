"""What happens to an order once a worker may take it: claim, finish, fail,
hand back, retry. A mixin of `Store` (store.py), which brings the connection
and `transaction()`; every statement that moves an order between states is here.

A claim is a token, (worker, fecha_inicio): `finish` and `fail` change only
the orders that still carry it, so a worker that was given up on (killed over
its time limit, or thought dead) cannot overwrite what happened since.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from pedidos.domain import CRASH_ERROR, MAX_ATTEMPTS, Estado
from pedidos.storage.base import Claim, Finished
from pedidos.storage.sqlite.rows import due, now, parts

PENDIENTE, EN_PROCESO, LISTO = Estado.PENDIENTE.value, Estado.EN_PROCESO.value, Estado.LISTO.value
FALLIDO = Estado.FALLIDO.value
HELD = "estado = ? AND worker = ? AND fecha_inicio = ?"  # the claim still holds the row


class Attempts:
    _conn: sqlite3.Connection
    transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _get: Callable[..., dict[str, Any] | None]

    def claim(self, ids: Sequence[int], worker: int) -> Claim:
        """Take the still-pending orders among `ids` for `worker`, leaving
        those whose retry is not due yet."""
        started = now()
        taken: list[int] = []
        with self.transaction() as db:
            for part in parts(ids):
                marks = ",".join("?" * len(part))
                taken += [
                    row[0]
                    for row in db.execute(
                        "UPDATE pedidos SET estado = ?, fecha_inicio = ?, worker = ?, "
                        f"reintentar_despues = NULL WHERE estado = ? AND {due()} AND id IN ({marks}) "
                        "RETURNING id",
                        (EN_PROCESO, started, worker, PENDIENTE, started, *part),
                    )
                ]
        return Claim(worker, started, tuple(sorted(taken)))

    def finish(self, claim: Claim, resultados: Mapping[int, str] | None = None) -> Finished:
        """Mark `listo`, with `fecha_fin` (and each order's `resultado`, JSON
        text, when given), the orders that `claim` still holds."""
        finished = now()
        done: list[int] = []
        held = (EN_PROCESO, claim.worker, claim.at)
        with self.transaction() as db:
            if resultados is None:
                for part in parts(claim.ids):
                    marks = ",".join("?" * len(part))
                    done += [
                        row[0]
                        for row in db.execute(
                            "UPDATE pedidos SET estado = ?, fecha_fin = ?, reintentar_despues = NULL "
                            f"WHERE {HELD} AND id IN ({marks}) RETURNING id",
                            (LISTO, finished, *held, *part),
                        )
                    ]
            else:
                for order_id in claim.ids:
                    if db.execute(
                        "UPDATE pedidos SET estado = ?, fecha_fin = ?, resultado = ?, "
                        f"reintentar_despues = NULL WHERE {HELD} AND id = ? RETURNING id",
                        (LISTO, finished, resultados.get(order_id), *held, order_id),
                    ).fetchone():
                        done.append(order_id)
        return Finished(finished, tuple(sorted(done)))

    def fail(self, claim: Claim, error: str, retry_at: str | None) -> list[tuple[int, Estado]]:
        """A failed attempt of the orders `claim` still holds: `intentos` and
        `fallos` + 1, `error` recorded; back to `pendiente` until `retry_at`,
        or `fallido` when `retry_at` is None. Returns (id, new estado)."""
        estado = FALLIDO if retry_at is None else PENDIENTE
        changed: list[tuple[int, Estado]] = []
        with self.transaction() as db:
            for part in parts(claim.ids):
                marks = ",".join("?" * len(part))
                # A `fallido` order keeps who had it and since when, as after crashes.
                rows = db.execute(
                    "UPDATE pedidos SET estado = ?, intentos = intentos + 1, fallos = fallos + 1, "
                    "error = ?, reintentar_despues = ?, "
                    "fecha_inicio = CASE WHEN ? THEN fecha_inicio END, "
                    "worker = CASE WHEN ? THEN worker END "
                    f"WHERE {HELD} AND id IN ({marks}) RETURNING id",
                    (estado, error, retry_at, retry_at is None, retry_at is None)
                    + (EN_PROCESO, claim.worker, claim.at, *part),
                )
                changed += [(row[0], Estado(estado)) for row in rows]
        return sorted(changed)

    def release(self, worker: int | None, count_attempt: bool) -> list[tuple[int, Estado]]:
        """Hand back the orders in process by `worker` (None: by anyone).

        An attempt ended by a crash counts in `intentos`, and the third such
        attempt (failures of the task apart: `intentos - fallos`) makes the
        order `fallido`; one handed back at a graceful shutdown does not
        count. Returns (id, new estado) for each."""
        where, params = "estado = ?", [EN_PROCESO]
        if worker is not None:
            where += " AND worker = ?"
            params.append(worker)
        changed = []
        with self.transaction() as db:
            rows = db.execute(f"SELECT id, intentos, fallos FROM pedidos WHERE {where}", params).fetchall()
            for order_id, intentos, fallos in rows:
                intentos += 1 if count_attempt else 0
                if intentos - fallos >= MAX_ATTEMPTS:
                    db.execute(
                        "UPDATE pedidos SET estado = ?, intentos = ?, error = ? WHERE id = ?",
                        (FALLIDO, intentos, CRASH_ERROR, order_id),
                    )
                    changed.append((order_id, Estado.FALLIDO))
                else:
                    db.execute(
                        "UPDATE pedidos SET estado = ?, intentos = ?, "
                        "fecha_inicio = NULL, worker = NULL WHERE id = ?",
                        (PENDIENTE, intentos, order_id),
                    )
                    changed.append((order_id, Estado.PENDIENTE))
        return changed

    def retry(self, order_id: int, owner: str | None = None) -> tuple[dict[str, Any] | None, bool]:
        """Put a `fallido` order back to `pendiente` with a fresh set of
        attempts: (the order as it now stands or None, whether it was put back).
        Its last `error` stays until an attempt replaces it."""
        with self.transaction() as db:
            order = self._get(db, order_id, owner)
            if order is None or order["estado"] != FALLIDO:
                return order, False
            db.execute(
                "UPDATE pedidos SET estado = ?, intentos = 0, fallos = 0, reintentar_despues = NULL, "
                "fecha_inicio = NULL, fecha_fin = NULL, worker = NULL, resultado = NULL WHERE id = ?",
                (PENDIENTE, order_id),
            )
            return self._get(db, order_id, owner), True
