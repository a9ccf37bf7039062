"""Telnet commands in the byte stream (RFC 854), taken out before the JSON.

A person at a telnet prompt is a client the contract names. telnet sends its
commands in the same stream as the text: each starts with IAC (0xFF), a byte
that UTF-8 never uses, so a command can never be mistaken for part of a
request. Ctrl-C at the prompt sends `IAC IP IAC DO TIMING-MARK` and telnet then
hides everything the server writes until the timing mark is answered (RFC 860);
the answer makes the session show replies again.

What each command does here:

- IP, AO, BRK (interrupt, abort output, break): the person gave up on what
  they were typing, so the partial request is dropped (`ABANDON`).
- DO x: answered WONT x, WILL x answered DONT x: this server takes up no
  option, the refusal RFC 854 prescribes. For DO TIMING-MARK the refusal is
  what telnet waits for (RFC 860 allows WONT TIMING-MARK; telnet stops hiding
  output on either WILL or WONT).
- DONT, WONT, subnegotiation (IAC SB ... IAC SE) and the other commands: read
  and dropped. A subnegotiation longer than `MAX_SUBNEGOTIATION`, or one that
  a newline or the end of the input reaches first, is none: telnet
  subnegotiates only options both sides agreed to, this server agrees to none,
  and telnet's own take a few bytes. It was a stray 0xFF 0xFA in the data, and
  what followed it is data again (left alone, it would swallow the rest of the
  connection, requests and the size limit included).
- IAC IAC is telnet's way to send a data byte 0xFF: it goes on to the JSON
  layer as that byte, which is not UTF-8 (`json_invalido`), as is 0xFF
  followed by a byte that is not a command.

`Telnet.feed` keeps its state across chunks, so a command cut between two
reads means the same as one read whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

IAC = 0xFF
SE, NOP, DM, BRK, IP, AO, AYT, EC, EL, GA, SB = range(240, 251)
WILL, WONT, DO, DONT = range(251, 255)
MAX_SUBNEGOTIATION = 256
ABANDON_COMMANDS = frozenset({IP, AO, BRK})

_IAC_BYTE = b"\xff"
_DATA, _COMMAND, _OPTION, _SUB, _SUB_IAC = range(5)


@dataclass(frozen=True)
class TelnetReply:
    """Bytes to send back at once: a refusal of an option."""

    data: bytes


class Abandon:
    """Marks where the person pressed Ctrl-C (IP, AO or BRK)."""

    def __repr__(self) -> str:
        return "ABANDON"


ABANDON = Abandon()
Piece = Union[bytes, TelnetReply, Abandon]


class Telnet:
    """Splits a stream into data and telnet commands, chunk by chunk."""

    def __init__(self) -> None:
        self._state = _DATA
        self._verb = 0
        self._sub = bytearray()  # a subnegotiation's bytes so far, to give back if it is none
        # True when no command is half read: a chunk with no IAC is then all
        # data. An attribute, not a property: it is read for every chunk.
        self.idle = True

    def feed(self, data: bytes) -> list[Piece]:
        """The data and commands of `data`, in order."""
        out: list[Piece] = []
        pos, n = 0, len(data)
        while pos < n:
            state = self._state
            if state == _DATA:
                iac = data.find(_IAC_BYTE, pos)
                end = n if iac < 0 else iac
                if end > pos:
                    out.append(data[pos:end])
                if iac < 0:
                    break
                self._state, pos = _COMMAND, iac + 1
            elif state == _COMMAND:
                command = data[pos]
                self._state = _DATA
                if command < SE:  # not a command: the 0xFF is a (bad) data byte
                    out.append(_IAC_BYTE)
                    continue
                pos += 1
                if command == IAC:
                    out.append(_IAC_BYTE)
                elif command >= WILL:
                    self._state, self._verb = _OPTION, command
                elif command == SB:
                    self._state = _SUB
                    self._sub[:] = b"\xff\xfa"
                elif command in ABANDON_COMMANDS:
                    out.append(ABANDON)
            elif state == _OPTION:
                option = data[pos]
                pos += 1
                self._state = _DATA
                if self._verb == DO:
                    out.append(TelnetReply(bytes((IAC, WONT, option))))
                elif self._verb == WILL:
                    out.append(TelnetReply(bytes((IAC, DONT, option))))
            elif state == _SUB:
                iac = data.find(_IAC_BYTE, pos)
                end = n if iac < 0 else iac
                newline = data.find(b"\n", pos, end)
                self._sub += data[pos : end if newline < 0 else newline]
                if newline >= 0 or len(self._sub) > MAX_SUBNEGOTIATION:  # none after all: data
                    out.append(self.flush())
                    self._state, pos = _DATA, end if newline < 0 else newline
                elif iac < 0:
                    break
                else:
                    self._state, pos = _SUB_IAC, iac + 1
            else:  # _SUB_IAC: IAC SE ends it; IAC IAC is a 0xFF of its data
                if data[pos] == SE:
                    self._state = _DATA
                    self._sub.clear()
                elif data[pos] == 0x0A:  # a newline: it was data (see MAX_SUBNEGOTIATION)
                    out.append(self.flush())
                    continue
                else:
                    self._state = _SUB
                    self._sub += bytes((IAC, data[pos]))
                pos += 1
        self.idle = self._state == _DATA
        return out

    def flush(self) -> bytes:
        """The bytes of a subnegotiation under way, given back as data (it was
        none), and plain data from here on."""
        data = bytes(self._sub) + (_IAC_BYTE if self._state == _SUB_IAC else b"")
        self._sub.clear()
        if self._state in (_SUB, _SUB_IAC):
            self._state = _DATA
            self.idle = True
        return data
