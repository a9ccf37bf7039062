"""`cliente.py --archivo`: every order of a file sent pipelined, with progress and a summary.

A file is JSON Lines (one order a line; an order pretty-printed over several
lines also works) or one JSON array. Each order keeps the line it starts on,
so that a refusal can say where to look. A line that is not JSON is refused
here and the rest still go; an array that is not valid JSON sends nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from pedidos.client.blocking import Client
from pedidos.client.cli.show import count, plural, seconds
from pedidos.protocol.replies import DEMASIADO_GRANDE, JSON_INVALIDO, MENSAJE_INVALIDO, error_reply

# A pretty-printed order is read on until it closes, but no further than the
# server would take in one request.
MAX_ORDER_CHARS = 64 * 1024
SHOWN_REFUSALS = 20


class BadInput(Exception):
    """The input as a whole cannot be read: nothing is sent."""


@dataclass(frozen=True)
class Entry:
    line: int
    order: Any = None
    problem: tuple[str, str] | None = None  # (code, sentence): refused before sending


def read_entries(data: bytes) -> list[Entry]:
    text, not_utf8 = _decode(data)
    start = re.match(r"\s*", text)
    assert start is not None
    if text.startswith("[", start.end()):
        entries = _array_entries(text, start.end())
    else:
        entries = list(_line_entries(text))
    if not_utf8:
        entries += [Entry(n, problem=(JSON_INVALIDO, "la línea no es texto UTF-8")) for n in not_utf8]
        entries.sort(key=lambda e: e.line)
    return [_only_orders(e) for e in entries]


def _decode(data: bytes) -> tuple[str, list[int]]:
    """The text, and the numbers of the lines that are not UTF-8 (blanked)."""
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        pass
    lines, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            lines.append(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError:
            lines.append("")
            bad.append(number)
    return "\n".join(lines), bad


def _line_entries(text: str) -> Iterator[Entry]:
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        first, chunk = i, lines[i]
        i += 1
        if not chunk.strip():
            continue
        while True:
            try:
                yield Entry(first + 1, json.loads(chunk))
                break
            except json.JSONDecodeError as exc:
                incomplete = exc.pos >= len(chunk.rstrip())
                if incomplete and i < len(lines) and len(chunk) < MAX_ORDER_CHARS:
                    chunk += "\n" + lines[i]
                    i += 1
                    continue
                if chunk.count("\n"):
                    # Lines joined in the hope of one order were not one: each
                    # of the following lines gets its own chance.
                    exc = _first_line_error(lines[first])
                    i = first + 1
                yield Entry(first + 1, problem=(JSON_INVALIDO, f"no es JSON válido ({_where(exc)})"))
                break


def _first_line_error(line: str) -> json.JSONDecodeError:
    try:
        json.loads(line)
    except json.JSONDecodeError as exc:
        return exc
    raise AssertionError("a line that parses alone was not joined")  # pragma: no cover


def _where(exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(exc.doc.rstrip()):
        return "el pedido no termina"
    return f"columna {exc.colno}"


def _array_entries(text: str, start: int) -> list[Entry]:
    decoder = json.JSONDecoder()
    space = re.compile(r"\s*")

    def skip(pos: int) -> int:
        found = space.match(text, pos)
        assert found is not None
        return found.end()

    def fail(pos: int, what: str) -> BadInput:
        line = text.count("\n", 0, pos) + 1
        column = pos - text.rfind("\n", 0, pos)
        return BadInput(f"la lista JSON no es válida: {what} (línea {line}, columna {column})")

    entries: list[Entry] = []
    line, counted = 1, 0
    pos = skip(start + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            line += text.count("\n", counted, pos)
            counted = pos
            try:
                value, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise fail(exc.pos, "se esperaba un valor") from None
            entries.append(Entry(line, value))
            pos = skip(pos)
            if text.startswith(",", pos):
                pos = skip(pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise fail(pos, "se esperaba ',' o ']'" if pos < len(text) else "falta el ']' final")
    if skip(pos) < len(text):
        raise fail(skip(pos), "hay texto después del ']' final")
    return entries


def _only_orders(entry: Entry) -> Entry:
    if isinstance(entry.order, dict) and "accion" in entry.order:
        why = "lleva 'accion': es un comando, y --archivo solo envía pedidos"
        return Entry(entry.line, problem=(MENSAJE_INVALIDO, why))
    return entry


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
    lines += [f"    línea {line}: {code}: {why}" for line, code, why in outcome.refused[:SHOWN_REFUSALS]]
    hidden = len(outcome.refused) - SHOWN_REFUSALS
    if hidden > 0:
        lines.append(f"    ... y {count(hidden)} más (--json da la respuesta a cada pedido)")
    return lines
