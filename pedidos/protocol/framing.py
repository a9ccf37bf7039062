"""Splitting a byte stream into JSON requests.

Requests are JSON values one after another, with any white space between and
inside them, arriving in chunks of any size. `Decoder.feed` takes each chunk
and returns what it completed: parsed values, or `RequestError`s for input that
cannot become JSON.

Two paths do the work. The fast one hands whole chunks to the C decoder
(`raw_decode`), which is what one order in one packet meets. When a chunk ends
inside a value, or holds something the C decoder refuses, the request moves to
`scanner.Scanner`, which checks the syntax incrementally: each byte is looked at once
however the input is cut, it tells a value that is still a valid beginning from
one that can never be JSON, and it knows the byte where the value ends.

Telnet commands are taken out first (`telnet.Telnet`): they are never JSON,
Ctrl-C at a telnet prompt drops the partial request, and an option request
gets its refusal back as a `TelnetReply` among the results; telnet's CR NUL
is a CR.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pedidos.protocol.replies import DEMASIADO_GRANDE, JSON_INVALIDO, RequestError
from pedidos.protocol.scanner import MAX_DEPTH, MAX_NUMBER_CHARS, Invalid, Scanner
from pedidos.protocol.telnet import ABANDON, Telnet

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024

_WS = re.compile(r"[ \t\r\n]*")
_NUMBER_CHAR = frozenset("-+.eE0123456789")
# A lone UTF-16 surrogate can only come as an escape ("\\ud800"): JSON Python
# reads, but no UTF-8 text, so no request (and no reply) can carry it.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
LONE_SURROGATE = "texto con un sustituto UTF-16 suelto"
# A TLS client's first byte (a handshake record, 0x16) is the first byte of
# the connection: a client that speaks TLS to this plain server, whose own
# error ("se esperaba un valor") would say nothing about why.
TLS_RECORD = 0x16
TLS_HELLO = "esto parece el comienzo de una conexión TLS, y este servidor no usa TLS: conéctese sin TLS"


class TlsHello(RequestError):
    """The `json_invalido` of a connection that began as TLS does (the server logs it)."""


def _checked_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError("number too long")
    return int(text)


def _checked_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError("number too long")
    return float(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_json = json.JSONDecoder(parse_int=_checked_int, parse_float=_checked_float, parse_constant=_refuse_constant)
_decode = _json.raw_decode


class RepeatedKeys(dict):
    """An object in which a key came more than once. JSON keeps the last and
    drops the others without a word: `{"accion": "consultar", "id": 1,
    "accion": "cancelar"}` would cancel, though a person (or a proxy) reading
    the first key sees a question. Validation refuses it, naming the key."""

    repeated = ""


def note_repeats(pairs: list[tuple[str, Any]]) -> dict:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    seen: set[str] = set()
    marked = RepeatedKeys(value)
    for key, _ in pairs:
        if key in seen:
            marked.repeated = key
            break
        seen.add(key)
    return marked


_json_pairs = json.JSONDecoder(
    parse_int=_checked_int,
    parse_float=_checked_float,
    parse_constant=_refuse_constant,
    object_pairs_hook=note_repeats,
)


def _checked_keys(value: Any, text: str, pos: int, end: int) -> Any:
    """`value`, marked `RepeatedKeys` if a key of it came twice. Every key has
    its colon, so an object with as many colons as keys has none twice: only
    the others (a colon inside a text, an object inside) are decoded again,
    with a hook that sees every key; the common order costs one count."""
    if type(value) is dict and text.count(":", pos, end) != len(value):
        return _json_pairs.raw_decode(text, pos)[0]
    return value


class Decoder:
    """Turns the bytes of one connection into requests, in order."""

    def __init__(self, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        self.max_request_bytes = max_request_bytes
        self.closed = False  # after `demasiado_grande`: the connection must close
        self._buf = bytearray()  # a partial request, from its first byte
        self._scanner = Scanner()
        # After an error the rest of its line is discarded: the state is kept
        # across chunks, so the outcome never depends on how the input was cut.
        self._skipping = False
        self._telnet = Telnet()
        self._after_cr = False  # the last chunk ended with CR: a NUL first in the next goes
        self._first = True  # no byte of data yet: a TLS record here is a TLS client (TLS_RECORD)

    @property
    def partial(self) -> bool:
        """True while part of a request is buffered."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[Any]:
        """Requests completed by `data`: JSON values, or RequestError for bad
        input; and a TelnetReply for each telnet option request, to send back."""
        out: list[Any] = []
        if self.closed or not data:
            return out
        # Telnet sends a CR not followed by LF as CR NUL (RFC 854): a line of
        # text with CRLF ends, from `telnet`, in CR NUL LF. The NUL is no data.
        if self._after_cr and data[0] == 0:
            data = data[1:]
        self._after_cr = data[-1] == 13 if data else False  # 13: CR
        if b"\r\x00" in data:
            data = data.replace(b"\r\x00", b"\r")
        if self._telnet.idle and b"\xff" not in data:  # no telnet command: all of it is data
            self._feed_data(data, out)
            return out
        for piece in self._telnet.feed(data):
            if self.closed:
                break
            if type(piece) is bytes:
                self._feed_data(piece, out)
            elif piece is ABANDON:  # Ctrl-C: what was typed so far is dropped
                self._start(b"")
                self._skipping = False
            else:
                out.append(piece)
        return out

    def finish(self) -> list[Any]:
        """At the end of the input: what `feed` kept waiting for more. A request
        cut short gets its error, so that the client learns why nothing came."""
        out: list[Any] = []
        stray = self._telnet.flush()  # a subnegotiation never ended: it was data
        if stray and not self.closed:
            self._feed_data(stray, out)
        if self.closed or not self._buf:
            return out
        rest = bytes(self._buf)
        self._start(b"")
        try:
            # Complete only if it is a number that ended with the input ("7"):
            # anything else complete was taken as soon as it closed.
            return [*out, _json.decode(rest.decode("utf-8"))]
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return [*out, _invalid("la entrada terminó a mitad de una petición")]

    def _feed_data(self, data: bytes, out: list[Any]) -> None:
        if self._first and data:
            self._first = False
            if data[0] == TLS_RECORD:
                # What the scanner does with that byte (an error, then the
                # rest of its line dropped), in words that say why.
                out.append(TlsHello(JSON_INVALIDO, f"JSON inválido: {TLS_HELLO}."))
                self._skipping = True
                data = data[1:]
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return
            self._skipping = False
            data = data[newline + 1 :]
        if self._buf:
            self._buf += data
        else:
            self._start(self._fast(data, out))
        while self._buf and not self.closed:
            rest = self._slow(out)
            if rest is None:
                break
            self._start(self._fast(rest, out))

    def _start(self, rest: bytes) -> None:
        self._buf = bytearray(rest)
        if rest:  # a scanner costs a UTF-8 decoder: only for a partial request
            self._scanner = Scanner()

    def _fast(self, data: bytes, out: list[Any]) -> bytes:
        """Decode the complete values at the start of `data`; return the rest."""
        try:
            text, tail = data.decode("utf-8"), b""
        except UnicodeDecodeError as exc:
            text, tail = data[: exc.start].decode("utf-8"), data[exc.start :]
        pos, n = 0, len(text)
        max_chars = self.max_request_bytes // 4
        # Searched once per chunk: most chunks have no escaped surrogate at all.
        surrogates = SURROGATE_ESCAPE.search(text) is not None
        while True:
            pos = _WS.match(text, pos).end()
            if pos >= n:
                return tail
            try:
                value, end = _decode(text, pos)
            except (ValueError, RecursionError):
                break
            if type(value) is not dict and (
                isinstance(value, (int, float)) and (end == n or text[end] in _NUMBER_CHAR)
            ):
                # A number at the very end may go on in the next chunk, and one
                # run straight into more number characters ("01", "1.5.3") is
                # one malformed number, not two: the careful path decides.
                break
            if (
                end - pos > max_chars
                or text.count("[", pos, end) + text.count("{", pos, end) > MAX_DEPTH
                or (surrogates and SURROGATE_ESCAPE.search(text, pos, end) is not None)
            ):
                # Maybe too large or too deep, or a lone surrogate: the careful path decides.
                break
            # `_checked_keys`, inlined: the one count is all the common order pays.
            if type(value) is dict and text.count(":", pos, end) != len(value):
                value = _json_pairs.raw_decode(text, pos)[0]
            out.append(value)
            pos = end
        return text[pos:].encode("utf-8") + tail

    def _slow(self, out: list[Any]) -> bytes | None:
        """Advance the buffered request; return the input after it once it is
        complete or refused, None while it waits for more."""
        buf = self._buf
        limit = self.max_request_bytes
        # The first `limit` bytes decide: a request complete within them, or
        # an error within them, or else `demasiado_grande`; the same however
        # the bytes after them arrived.
        try:
            end = self._scanner.scan(buf if len(buf) <= limit else buf[:limit])
        except Invalid as bad:
            out.append(_invalid(bad.mensaje, _where(buf, bad.index)))
            return self._drop_line(bad.index)
        if end is None:
            if len(buf) > limit:
                self._too_large(out)
            return None
        if end > limit:
            self._too_large(out)
            return None
        try:
            text = buf[:end].decode("utf-8")
            value = _json.decode(text)
            if SURROGATE_ESCAPE.search(text):
                _encoder_check.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            out.append(_invalid(LONE_SURROGATE))
            return self._drop_line(end - 1)
        except ValueError:
            out.append(_invalid("valor que no es JSON estándar"))
            return self._drop_line(end - 1)
        out.append(_checked_keys(value, text, 0, len(text)))
        return bytes(buf[end:])

    def _drop_line(self, index: int) -> bytes | None:
        """After an error at `index`: discard to the end of its line; the input
        after that, or None if none arrived yet."""
        buf = bytes(self._buf)
        self._start(b"")
        newline = buf.find(b"\n", index)
        if newline < 0:
            self._skipping = True
            return None
        return buf[newline + 1 :]

    def _too_large(self, out: list[Any]) -> None:
        out.append(
            RequestError(
                DEMASIADO_GRANDE,
                f"La petición supera el límite de {self.max_request_bytes} bytes; se cierra la conexión.",
            )
        )
        self.closed = True
        self._start(b"")


_encoder_check = json.JSONEncoder(ensure_ascii=False)


def _invalid(why: str, where: str = "") -> RequestError:
    after = f" {_AFTER}" if where else ""
    return RequestError(JSON_INVALIDO, f"JSON inválido{where}: {why}.{after}")


# Said after an error in a request of several lines (a pretty-printed order
# pasted at telnet): the rest of the line with the error is dropped and its
# next lines come as requests of their own, each with its own error, which
# would otherwise seem to have nothing to do with the typo.
_AFTER = "Lo que sigue a esa línea se lee como peticiones nuevas: sus errores vienen de este."


def _where(buf: bytearray, index: int) -> str:
    """Where the error at byte `index` of a request lies, for a request of
    several lines: its line and column (in characters), from the request's
    first line. Empty for an error in the first line."""
    line = buf.count(b"\n", 0, index)
    if line == 0:
        return ""
    start = buf.rfind(b"\n", 0, index) + 1
    column = len(bytes(buf[start:index]).decode("utf-8", "replace")) + 1
    return f" en la línea {line + 1} de la petición, columna {column}"
