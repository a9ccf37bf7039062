"""`cliente.py --archivo` cut short: what is known to be stored, and how to go on.

Orders go pipelined, so at a Ctrl-C (or a lost connection) some were sent and
not yet answered: the server may have stored them or not, and the client
cannot tell. Only a `referencia` makes sending them again safe, and
`--referencias-auto` gives one to each order of a file that has none.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from pedidos.client.cli.bulk import Outcome
from pedidos.client.cli.entries import Entry
from pedidos.client.cli.invocation import Typed
from pedidos.client.cli.show import count, plural

DIGEST_CHARS = 16  # 64 bits of the file's SHA-256: two different files never meet


def auto_referencias(entries: Sequence[Entry], data: bytes) -> list[Entry]:
    """Each order without a `referencia` gets one made of the file's content and
    the order's line: `auto-<digest>-<line>`.

    The content, not the name or path: sending the same bytes again (after an
    interruption, from another folder, renamed, through stdin) gives the same
    keys, so nothing is stored twice; a different file (tomorrow's
    `pedidos.jsonl`, at the same path) gives other keys, so none of its orders
    is taken for an old one. An edited file is a different file."""
    digest = hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]
    on_line = Counter(e.line for e in entries)
    seen: Counter[int] = Counter()
    keyed = []
    for entry in entries:
        seen[entry.line] += 1
        order = entry.order
        if entry.problem is None and isinstance(order, dict) and order.get("referencia") is None:
            # Several orders on one line (a JSON array written on one line) count apart.
            part = f".{seen[entry.line]}" if on_line[entry.line] > 1 else ""
            entry = replace(entry, order={**order, "referencia": f"auto-{digest}-{entry.line}{part}"})
        keyed.append(entry)
    return keyed


def all_keyed(entries: Sequence[Entry]) -> bool:
    """True if sending these entries again can duplicate nothing."""
    return all(
        e.problem is not None or not isinstance(e.order, dict) or e.order.get("referencia") is not None
        for e in entries
    )


def interruption_lines(
    outcome: Outcome, entries: Sequence[Entry], source: str, again: Typed, note: str = ""
) -> list[str]:
    """What a cut-short run stored, what it may have stored, and how to finish.
    `again` is the command that sends the same file again; `note` follows it."""
    # Replies come in order: the first orders not answered are the ones in flight.
    pending = [e for e in entries[outcome.done :] if e.problem is None]
    unsure, unsent = pending[: outcome.unconfirmed], pending[outcome.unconfirmed :]
    lines = [
        f"Interrumpido tras enviar {count(outcome.sent)} de {plural(outcome.total, 'pedido', 'pedidos')}"
        f" de {source}",
        f"  guardados (confirmados por el servidor): {count(outcome.accepted)}"
        + _already(outcome.duplicates),
        f"  rechazados: {count(len(outcome.refused))}",
    ]
    if unsure:
        lines.append(
            f"  sin confirmar: {count(len(unsure))} ({_lines(unsure)}): pueden haberse guardado o no"
        )
    if unsent:
        lines.append(f"  sin enviar: {count(len(unsent))} (desde la línea {unsent[0].line})")
    if not unsure and not unsent:
        return lines
    if all_keyed(entries):
        lines.append(f"Para terminar sin duplicar nada, repita la misma orden: {again}{note}")
    else:
        # Without keys, resending what was stored stores it again: say where each part starts.
        lines.append(
            "Reenviar el archivo entero duplicaría los pedidos sin 'referencia' ya guardados: envíe solo "
            + (f"desde la línea {unsent[0].line}" if unsent else "lo que falte")
            + (" y compruebe con --listar los sin confirmar" if unsure else "")
            + ". Con --referencias-auto desde el primer envío, repetir la orden nunca duplica."
        )
        answered_or_unsure = entries[: outcome.done + outcome.unconfirmed]
        if unsent and all(e.line < unsent[0].line for e in answered_or_unsure):
            # (Not when the line is shared with orders sent: a JSON array on one line.)
            lines.append(f"Lo no enviado: {again.with_option('--desde-linea', unsent[0].line)}{note}")
    return lines


def refused_hint(plain: Sequence[Entry], outcome: Outcome) -> str:
    """How to send refused lines once fixed without storing the others again.
    `plain`: the file's entries with their own keys only (not those made by
    --referencias-auto, which change with any edit of the file)."""
    if outcome.accepted == 0 and outcome.unconfirmed == 0:
        # Every order was refused, however the lines held them: nothing to
        # store twice, and no referencia to credit for it either.
        return "Ningún pedido se guardó: corregidas las líneas rechazadas, reenvíe el archivo entero."
    # Only the orders stored matter: those refused changed nothing (a line
    # that holds several orders, a JSON array's, counts as stored).
    per_line = Counter(e.line for e in plain)
    refused = {line for line, _, _ in outcome.refused if per_line[line] == 1}
    kept = [e for e in plain if e.line not in refused]
    if all_keyed(kept):
        return (
            "Corregidas las líneas rechazadas, reenviar el archivo no duplica: "
            "cada pedido lleva su 'referencia'."
        )
    return (
        "Corrija las líneas rechazadas en un archivo aparte y envíe solo ese: reenviar este archivo "
        "corregido guardaría otra vez los pedidos ya aceptados."
    )


def _already(duplicates: int) -> str:
    if not duplicates:
        return ""
    return f" ({count(duplicates)} {'ya estaba' if duplicates == 1 else 'ya estaban'})"


def _lines(entries: Sequence[Entry]) -> str:
    first, last = entries[0].line, entries[-1].line
    return f"línea {first}" if first == last else f"líneas {first} a {last}"
