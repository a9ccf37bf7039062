"""The JSON codec of the hot path: orjson when installed (the `rapido` extra), else the standard library.

Only decoding is accelerated. orjson writes compact JSON (`{"ok":true}`) and has no
option for the standard library's `", "` and `": "` separators, so every reply stays
encoded by `json` (replies.encode_line) and the wire does not change by a byte.

Decoding takes only what orjson is known to read exactly as `json` does: whole lines
(one value each, JSON white space around it) with no run of 19 digits (orjson turns an
integer beyond 64 bits into a float, and a number of more than 100 characters must meet
`scanner.MAX_NUMBER_CHARS`), no escaped UTF-16 surrogate, nothing deeper or longer than
the careful path's limits. Anything else, and anything orjson refuses (NaN, 1e400, bad
UTF-8, a lone surrogate...), goes back, from that line on, to the standard-library path
in `framing`, which decides as it always did: same values, same errors.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pedidos.protocol.scanner import MAX_DEPTH

try:
    import orjson
except ImportError:  # the rapido extra is not installed: the standard library does it all
    orjson = None  # type: ignore[assignment]

STDLIB = "json"
ORJSON = "orjson"

# Where orjson and json could read one text differently, or where the careful path decides.
# A run of digits is found by mapping every digit to "0" and anything else to " " (a
# regular expression costs more than orjson's whole decoding).
_DIGIT_RUNS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_RUN = b"0" * 19
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_JSON_WS = b" \t\r"  # JSON white space within a line (the newline is the separator)

_orjson_loads = orjson.loads if orjson is not None else None
_enabled = orjson is not None


def available() -> bool:
    """True when orjson is installed."""
    return orjson is not None


def use_orjson(enabled: bool) -> None:
    """Switch the accelerated decoding on (when installed) or off (`--sin-rapido`), before serving."""
    global _enabled
    _enabled = enabled and orjson is not None


def name() -> str:
    """The decoder in use, for the server's `ready:` line."""
    return ORJSON if _enabled else STDLIB


_stdlib_encoder = json.JSONEncoder(ensure_ascii=False)


def dumps(value: Any) -> str:
    """JSON text as the wire writes it: `json`'s separators, non-ASCII as is (never orjson: see above)."""
    return _stdlib_encoder.encode(value)


def decode_lines(data: bytes, out: list[Any], max_chars: int) -> int:
    """Decode the complete lines at the start of `data` that orjson reads exactly as
    `json` would, appending their values to `out`. Returns the offset where the
    standard-library path must take over (len(data) if nothing is left)."""
    loads = _orjson_loads
    if not _enabled or loads is None:
        return 0
    last = data.rfind(b"\n")
    if last < 0:
        return 0
    whole = data[: last + 1]
    if _LONG_RUN in whole.translate(_DIGIT_RUNS) or (
        b"\\u" in whole and _SURROGATE_ESCAPE.search(whole) is not None
    ):
        return 0  # rare: the standard-library path for the whole chunk
    lines = whole.split(b"\n")
    lines.pop()  # the empty piece after the last newline
    # Checked per line only when the whole chunk could be too long or too deep.
    careful = len(whole) > max_chars or whole.count(b"[") + whole.count(b"{") > MAX_DEPTH
    pos = 0
    append = out.append
    for line in lines:
        if careful and (len(line) > max_chars or line.count(b"[") + line.count(b"{") > MAX_DEPTH):
            return pos  # too long or too deep maybe: the careful path decides
        try:
            append(loads(line))
        except ValueError:  # orjson.JSONDecodeError is one
            if line.strip(_JSON_WS):
                return pos  # the standard-library path gives the error, or reads what orjson would not
            # else an empty line: white space, nothing to decode
        pos += len(line) + 1
    return pos
