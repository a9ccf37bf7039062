"""`cliente.py --archivo`: every order of a file sent pipelined, with progress and a summary.

The file is read into entries by entries.py; this sends them, counts each
reply against the line it came from, and sums the run up.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from pedidos.client.blocking import Client
from pedidos.client.cli.entries import Entry
from pedidos.client.cli.show import count, plain, plural, seconds
from pedidos.protocol.replies import DEMASIADO_GRANDE, error_reply

SHOWN_REFUSALS = 20


class Progress:
    """A one-line bar on a terminal: count, percentage, rate and time left."""

    def __init__(self, total: int, stream: TextIO, every: float = 0.1) -> None:
        self.total = total
        self.stream = stream
        self.enabled = total > 0 and stream.isatty()
        self.started = time.monotonic()
        self._every = every
        self._last = 0.0
        self._shown = False

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        # The first moments (connecting, filling the pipeline) say nothing of the rate.
        if not force and (now - self._last < self._every or now - self.started < 3 * self._every):
            return
        self._last = now
        rate = done / max(now - self.started, 1e-6)
        left = seconds((self.total - done) / rate) if rate > 0 else "?"
        figures = f"{count(done)}/{count(self.total)} {100 * done / self.total:3.0f}%"
        text = f"{figures}  {count(round(rate))} pedidos/s  faltan {left}"
        columns = shutil.get_terminal_size().columns
        bar = max(10, min(40, columns - len(text) - 4))
        filled = bar * done // self.total
        line = f"[{'#' * filled}{'.' * (bar - filled)}] {text}"
        # \r goes back to the start of the line, \x1b[K clears what is left of it.
        self.stream.write("\r" + line[: columns - 1] + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


@dataclass
class Outcome:
    total: int
    done: int = 0  # entries answered (by the server, or refused here), always the first ones
    sent: int = 0  # orders handed to the connection, answered or not
    answered: int = 0  # replies from the server
    accepted: int = 0
    duplicates: int = 0
    refused: list[tuple[int, str, str]] = field(default_factory=list)  # (line, code, sentence)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    def take(self, line: int, reply: dict[str, Any], from_server: bool = True) -> None:
        self.done += 1
        if reply.get("ok"):
            self.accepted += 1
            self.duplicates += bool(reply.get("duplicado"))
        else:
            self.refused.append((line, str(reply.get("error")), str(reply.get("mensaje"))))
        # Counted last: a Ctrl-C between the two counts must leave the order
        # unconfirmed (said maybe stored), never answered but not accepted
        # (stored, yet reported as neither).
        self.answered += from_server

    @property
    def unconfirmed(self) -> int:
        """Orders sent that got no reply: stored or not, nobody can tell."""
        return self.sent - self.answered

    def so_far(self) -> str:
        stored = plural(self.accepted, "pedido guardado", "pedidos guardados")
        if not self.unconfirmed:
            return stored
        return f"{stored}, {count(self.unconfirmed)} sin confirmar (detalles arriba)"


def send_entries(
    client: Client,
    entries: list[Entry],
    outcome: Outcome,
    progress: Progress,
    emit: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Send every order, pipelined; record each reply (or local refusal) in
    `outcome`, in the order of the input."""
    start: int | None = 0
    while start is not None:
        start = _send_from(client, entries, start, outcome, progress, emit)
    outcome.elapsed = time.monotonic() - outcome.started
    progress.update(outcome.done, force=True)


def _send_from(
    client: Client,
    entries: list[Entry],
    start: int,
    outcome: Outcome,
    progress: Progress,
    emit: Callable[[dict[str, Any]], None] | None,
) -> int | None:
    """Send `entries[start:]` on one connection. Returns where to go on from
    after an order the server refused as too large, None once all are done:
    the server closes the connection after `demasiado_grande`, having read
    nothing behind it, so the orders sent after it are sent again on a new one."""
    sent = 0

    def orders() -> Iterator[Any]:
        nonlocal sent
        for entry in entries[start:]:
            if entry.problem is None:
                outcome.sent += 1  # counted as it leaves: a Ctrl-C may come before its reply
                sent += 1
                yield entry.order

    answered = 0
    replies = client.pipeline(orders())
    with contextlib.closing(replies):
        for index in range(start, len(entries)):
            entry = entries[index]
            local = entry.problem is not None
            reply = error_reply(*entry.problem) if entry.problem else next(replies)
            answered += not local
            outcome.take(entry.line, reply, from_server=not local)
            if emit is not None:
                emit(reply)
            progress.update(outcome.done)
            if not local and reply.get("error") == DEMASIADO_GRANDE:
                outcome.sent -= sent - answered  # never read by the server: not sent after all
                return index + 1 if index + 1 < len(entries) else None
    return None


def summary_lines(outcome: Outcome, source: str) -> list[str]:
    rate = outcome.done / outcome.elapsed if outcome.elapsed > 0 else 0.0
    duplicates = ""
    if outcome.duplicates:
        were = "ya estaba: no se duplicó" if outcome.duplicates == 1 else "ya estaban: no se duplicaron"
        duplicates = f" ({count(outcome.duplicates)} {were})"
    lines = [
        f"{plural(outcome.total, 'pedido', 'pedidos')} de {source} en {seconds(outcome.elapsed)}"
        f" ({count(round(rate))} pedidos/s)",
        f"  aceptados:  {count(outcome.accepted)}{duplicates}",
        f"  rechazados: {count(len(outcome.refused))}",
    ]
    lines += [
        f"    línea {line}: {plain(f'{code}: {why}')}" for line, code, why in outcome.refused[:SHOWN_REFUSALS]
    ]
    hidden = len(outcome.refused) - SHOWN_REFUSALS
    if hidden > 0:
        lines.append(f"    ... y {count(hidden)} más (--json da la respuesta a cada pedido)")
    return lines
