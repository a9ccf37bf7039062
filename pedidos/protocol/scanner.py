"""An incremental check of JSON syntax, for requests that arrive in pieces.

`Scanner` looks at each byte of a buffered request once, however the input is
cut: it tells a value that is still a valid beginning from one that can never
be JSON, and it knows the byte where the value ends. `framing.Decoder` uses it
only when the C decoder cannot finish a request in one go.
"""

from __future__ import annotations

import codecs
import re

MAX_DEPTH = 64
MAX_NUMBER_CHARS = 100
_WS_BYTES = re.compile(rb"[ \t\r\n]*")
_STRING_BODY = re.compile(rb'[^"\\\x00-\x1f]*')
_NUMBER_CHARS = re.compile(rb"[-+.eE0-9]*")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# A beginning that more digits can still make a number: "-", "1.", "1e", "1.5e-".
_NUMBER_PREFIX = re.compile(rb"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*|(?:\.[0-9]+)?[eE][+-]?[0-9]*)?)?")
_HEX = re.compile(rb"[0-9a-fA-F]*")
_LITERALS = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}
_ESCAPES = frozenset(b'"\\/bfnrt')
_LINE_BREAKS = frozenset(b"\r\n")
# A terminal keeps about 4096 characters of a line being typed and drops the
# rest: a long order pasted on one line into telnet arrives cut, its line
# break inside a text. The way out is to paste it pretty-printed.
LINE_BREAK_IN_STRING = (
    "salto de línea dentro de un texto (¿pegó un pedido largo en una sola línea? El terminal "
    "corta las líneas de más de 4096 caracteres: péguelo con sangría, en varias líneas)"
)

# Some editors start a UTF-8 file with U+FEFF, and JSON sent over a network must
# not (RFC 8259, 8.1): say what it is rather than "se esperaba un valor".
_BOM = "\ufeff".encode()
BOM_BEFORE_VALUE = "marca de orden de bytes (BOM, U+FEFF) antes del valor: envíe UTF-8 sin BOM"


class Invalid(Exception):
    def __init__(self, index: int, mensaje: str) -> None:
        self.index = index
        self.mensaje = mensaje


# What the scanner expects next, outside a string.
VALUE, VALUE_OR_CLOSE, KEY, KEY_OR_CLOSE, COLON, COMMA_OR_CLOSE = range(6)


class Scanner:
    """Incremental JSON syntax check of one request at the start of a buffer."""

    def __init__(self) -> None:
        self.pos = 0
        self.stack: list[int] = []
        self.expect = VALUE
        self.in_string = False
        self.utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self.utf8_pos = 0
        self.bad_utf8: int | None = None

    def scan(self, buf: bytearray) -> int | None:
        """The end of the complete value, None if more input is needed; raises Invalid."""
        n = self._utf8_limit(buf)
        # The scan never passes a cut character's first byte (_utf8_limit); the
        # check keeps a bad one from ending a value should that ever change.
        end = self._scan(buf, n) if n >= self.pos else None
        if end is None and self.bad_utf8 is not None:
            raise Invalid(self.bad_utf8, "bytes que no son UTF-8")
        return end

    def _scan(self, buf: bytearray, n: int) -> int | None:
        while True:
            if self.in_string:
                if not self._string(buf, n):
                    return None
                if self.expect in (KEY, KEY_OR_CLOSE):
                    self.expect = COLON
                elif self._value_done():
                    return self.pos
                continue
            self.pos = _WS_BYTES.match(buf, self.pos, n).end()
            if self.pos >= n:
                return None
            c = buf[self.pos]
            if self.expect in (VALUE, VALUE_OR_CLOSE):
                if c == ord("]") and self.expect == VALUE_OR_CLOSE:
                    self.pos += 1
                    self.stack.pop()
                    if self._value_done():
                        return self.pos
                elif c in (ord("{"), ord("[")):
                    if len(self.stack) >= MAX_DEPTH:
                        raise Invalid(self.pos, f"anidamiento de más de {MAX_DEPTH} niveles")
                    self.stack.append(c)
                    self.pos += 1
                    self.expect = KEY_OR_CLOSE if c == ord("{") else VALUE_OR_CLOSE
                elif c == ord('"'):
                    self.in_string = True
                    self.pos += 1
                elif c == ord("-") or 48 <= c <= 57:
                    if not self._number(buf, n):
                        return None
                    if self._value_done():
                        return self.pos
                elif c in _LITERALS:
                    word = _LITERALS[c]
                    got = bytes(buf[self.pos : min(n, self.pos + len(word))])
                    if got != word:
                        if word.startswith(got) and self.pos + len(got) == n:
                            return None
                        raise Invalid(self.pos, "valor desconocido")
                    self.pos += len(word)
                    if self._value_done():
                        return self.pos
                elif buf.startswith(_BOM, self.pos):  # whole: the scan stops before a cut character
                    raise Invalid(self.pos, BOM_BEFORE_VALUE)
                else:
                    raise Invalid(self.pos, "se esperaba un valor")
            elif self.expect in (KEY, KEY_OR_CLOSE):
                if c == ord("}") and self.expect == KEY_OR_CLOSE:
                    self.pos += 1
                    self.stack.pop()
                    if self._value_done():
                        return self.pos
                elif c == ord('"'):
                    self.in_string = True
                    self.pos += 1
                else:
                    raise Invalid(self.pos, "se esperaba un nombre de campo entre comillas")
            elif self.expect == COLON:
                if c != ord(":"):
                    raise Invalid(self.pos, "se esperaba ':'")
                self.pos += 1
                self.expect = VALUE
            else:  # COMMA_OR_CLOSE
                top = self.stack[-1]
                if c == ord(","):
                    self.pos += 1
                    self.expect = KEY if top == ord("{") else VALUE
                elif c == top + 2:  # '{' + 2 == '}', '[' + 2 == ']'
                    self.pos += 1
                    self.stack.pop()
                    if self._value_done():
                        return self.pos
                else:
                    raise Invalid(self.pos, "se esperaba ',' o el cierre")

    def _utf8_limit(self, buf: bytearray) -> int:
        """How far the bytes are known to be valid UTF-8: the scan stops at the
        first bad byte, and before a character cut by the end of the input."""
        if self.bad_utf8 is None and self.utf8_pos < len(buf):
            # The decoder holds back the bytes of a character cut by the end of
            # the last chunk; an error's position counts from the first of them.
            held = len(self.utf8.getstate()[0])
            try:
                self.utf8.decode(bytes(buf[self.utf8_pos :]))
                self.utf8_pos = len(buf)
            except UnicodeDecodeError as exc:
                self.bad_utf8 = self.utf8_pos - held + exc.start
        if self.bad_utf8 is not None:
            return self.bad_utf8
        # Not past a cut character's first bytes: the scanner would judge a lead
        # byte as syntax ("se esperaba un valor") where the whole input, once
        # the character turns out bad, says "bytes que no son UTF-8".
        return len(buf) - len(self.utf8.getstate()[0])

    def _value_done(self) -> bool:
        """After a value: True if it completed the request."""
        if not self.stack:
            return True
        self.expect = COMMA_OR_CLOSE
        return False

    def _string(self, buf: bytearray, n: int) -> bool:
        """Consume string content; False if the buffer ends inside the string."""
        while True:
            self.pos = _STRING_BODY.match(buf, self.pos, n).end()
            if self.pos >= n:
                return False
            c = buf[self.pos]
            if c == ord('"'):
                self.pos += 1
                self.in_string = False
                return True
            if c in _LINE_BREAKS:
                raise Invalid(self.pos, LINE_BREAK_IN_STRING)
            if c != ord("\\"):
                raise Invalid(self.pos, "carácter de control dentro de un texto")
            if self.pos + 1 >= n:
                return False
            esc = buf[self.pos + 1]
            if esc in _ESCAPES:
                self.pos += 2
            elif esc == ord("u"):
                digits = _HEX.match(buf, self.pos + 2, min(n, self.pos + 6)).end() - self.pos - 2
                if digits == 4:
                    self.pos += 6
                elif self.pos + 2 + digits >= n:
                    return False
                else:
                    raise Invalid(self.pos, "escape \\u incompleto")
            else:
                raise Invalid(self.pos, "escape desconocido")

    def _number(self, buf: bytearray, n: int) -> bool:
        end = _NUMBER_CHARS.match(buf, self.pos, n).end()
        if end - self.pos > MAX_NUMBER_CHARS:
            raise Invalid(self.pos, f"número de más de {MAX_NUMBER_CHARS} caracteres")
        if end >= len(buf):  # the number may go on in the next chunk
            if _NUMBER_PREFIX.fullmatch(buf, self.pos, end):
                return False
            raise Invalid(self.pos, "número mal escrito")
        if not _NUMBER.fullmatch(buf, self.pos, end):
            raise Invalid(self.pos, "número mal escrito")
        self.pos = end
        return True
