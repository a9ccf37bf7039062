"""`cliente.py --archivo`'s input: a file read into orders, each with the line it starts on.

A file is JSON Lines (one order a line; an order pretty-printed over several
lines also works) or one JSON array. Each order keeps the line it starts on,
so that a refusal can say where to look. A line that is not JSON is refused
here and the rest still go; an array that is not valid JSON sends nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pedidos.protocol.framing import (
    DEFAULT_MAX_REQUEST_BYTES,
    LONE_SURROGATE,
    SURROGATE_ESCAPE,
    RepeatedKeys,
    note_repeats,
)
from pedidos.protocol.replies import JSON_INVALIDO, MENSAJE_INVALIDO
from pedidos.protocol.scanner import Invalid, Scanner
from pedidos.protocol.validation import repeated_key

# A pretty-printed order is read on until it closes, but no further than the
# server would take in one request (by default).
MAX_ORDER_CHARS = DEFAULT_MAX_REQUEST_BYTES


class BadInput(Exception):
    """The input as a whole cannot be read: nothing is sent."""


_decoder = json.JSONDecoder(object_pairs_hook=note_repeats)


def _unreadable(exc: Exception) -> str:
    """Why JSON that Python gives up on is refused: a `json.JSONDecodeError`
    has a place; the others are a nesting past Python's recursion limit, or an
    integer over its 4300 digits."""
    return "anida demasiados niveles" if isinstance(exc, RecursionError) else "un número demasiado largo"


def _checked(line: int, value: Any, text: str) -> Entry:
    """The entry for a value read from `text`, refused here if it could not be
    sent as it was written: a key given twice, a lone surrogate."""
    if type(value) is RepeatedKeys:  # refused as the server would
        refusal = repeated_key(value)
        return Entry(line, problem=(refusal.code, refusal.mensaje))
    if SURROGATE_ESCAPE.search(text):  # could not be sent; the server refuses it too
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            why = f"JSON inválido: {LONE_SURROGATE}."
            return Entry(line, problem=(JSON_INVALIDO, why))
    return Entry(line, value)


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
                value = _decoder.decode(chunk)
            except (RecursionError, ValueError) as exc:
                if not isinstance(exc, json.JSONDecodeError):
                    i = first + 1  # any lines joined to it get their own chance
                    why = f"no es JSON válido ({_unreadable(exc)})"
                    yield Entry(first + 1, problem=(JSON_INVALIDO, why))
                    break
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
            yield _checked(first + 1, value, chunk)
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
    return f"columna {exc.colno}: {_reason(exc.doc)}"


def _reason(text: str) -> str:
    """Why `text` is no JSON, in the server's own words (its scanner's)."""
    scanner = Scanner()
    data = bytearray(text.encode("utf-8", "surrogatepass"))
    try:
        end = scanner.scan(data)
    except Invalid as bad:
        return bad.mensaje
    if end is not None and data[end:].strip():
        return "hay más texto después del pedido: ¿una coma al final de la línea?"
    return "no es JSON válido"


def _array_entries(text: str, start: int) -> list[Entry]:
    decoder = _decoder
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
            begun = pos
            try:
                value, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise fail(exc.pos, "se esperaba un valor") from None
            except (RecursionError, ValueError) as exc:
                raise fail(pos, _unreadable(exc)) from None
            entries.append(_checked(line, value, text[begun:pos]))
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
