"""Properties of the decoder (pedidos.framing) and the validation (pedidos.validation).

For any byte stream cut into any chunks: no exception escapes, the outcome does
not depend on where the cuts fall, every complete valid request comes out
exactly once, and validation accepts exactly what the contract allows (an
oracle written from docs/protocol.md, not from the code).
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pedidos.protocol.framing import Decoder
from pedidos.protocol.replies import RequestError
from pedidos.protocol.telnet import TelnetReply
from pedidos.protocol.validation import (
    ESTADOS,
    MAX_TOKEN_CHARS,
    Command,
    NewOrder,
    careful_order,
    parse_request,
    plain_order,
)
from pedidos.storage.sqlite.rows import products_json

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ERROR_CODES = {
    "json_invalido",
    "mensaje_invalido",
    "pedido_invalido",
    "accion_desconocida",
    "demasiado_grande",
}
LIMIT = 2048  # a small --max-request-bytes, so that streams reach it

# --- generating input -------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def encoded(draw: st.DrawFn, value: Any) -> bytes:
    """`value` as a client might write it: compact, spaced or pretty-printed, \\u-escaped or not."""
    style = draw(st.sampled_from(["compact", "spaced", "pretty", "crlf"]))
    ascii_only = draw(st.booleans())
    if style == "compact":
        text = json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))
    elif style == "spaced":
        text = json.dumps(value, ensure_ascii=ascii_only)
    else:
        text = json.dumps(value, ensure_ascii=ascii_only, indent=draw(st.integers(0, 3)))
        if style == "crlf":
            text = text.replace("\n", "\r\n")
    return text.encode("utf-8")


# A line that cannot be the start of a JSON value: one error, then the rest of the line is dropped.
junk_lines = st.builds(
    lambda first, rest: first + rest + b"\n",
    st.sampled_from([b"}", b"]", b":", b",", b"x", b"#", b"'", b"\x00", b"\xfe", b"\xc0"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\xff", b"")),
)
whitespace = st.text(alphabet=" \t\r\n", max_size=4).map(str.encode)
# Telnet commands that leave a request alone (not IP, AO, BRK, nor IAC IAC):
# no-operation commands, option requests (DO/WILL get a refusal back) and
# subnegotiations, whose data doubles any 0xFF.
telnet_options = st.builds(
    lambda verb, option: bytes((255, verb, option)), st.integers(251, 254), st.integers(0, 255)
)
neutral_telnet = st.one_of(
    st.sampled_from([b"\xff\xf1", b"\xff\xf2", b"\xff\xf6", b"\xff\xf9", b"\xff\xf0"]),
    telnet_options,
    # A subnegotiation a newline reaches before its end is data (telnet.py):
    # this server agrees to no option, so no real one carries a newline here.
    st.binary(max_size=12).map(
        lambda body: b"\xff\xfa" + body.replace(b"\xff", b"\xff\xff").replace(b"\n", b"") + b"\xff\xf0"
    ),
)
telnet_commands = st.one_of(
    neutral_telnet, st.sampled_from([b"\xff\xf4", b"\xff\xf5", b"\xff\xf3", b"\xff\xff"])
)
interesting_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.one_of(
            json_values.flatmap(encoded),
            junk_lines,
            whitespace,
            telnet_commands,
            st.sampled_from(
                [
                    b"NaN",
                    b"Infinity",
                    b"-",
                    b"01",
                    b"1.",
                    b"1e",
                    b"tru",
                    b'"\\ud800"',
                    b'"\\u12"',
                    b"\xff\xf4\xff\xfd\x06",
                    b"[" * 70,
                    b"9" * 120,
                    b'"' + b"a" * LIMIT,
                    b"\xed\xa0\x80",
                ]
            ),
        ),
        max_size=12,
    ).map(b"".join),
)


def cuts(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """`data` cut at any points (possibly none, possibly empty pieces)."""

    def cut(points: list[int]) -> list[bytes]:
        bounds = [0, *sorted(points), len(data)]
        return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    return st.lists(st.integers(0, len(data)), max_size=12).map(cut)


def outcome(chunks: list[bytes]) -> tuple[list[tuple[str, str]], bool, bool]:
    """Feed `chunks` to a fresh decoder: what came out (comparable), closed, partial."""
    decoder = Decoder(LIMIT)
    items = []
    for chunk in chunks:
        for item in decoder.feed(chunk):
            if isinstance(item, RequestError):
                assert item.code in ("json_invalido", "demasiado_grande"), item.code
                items.append(("error", item.code))
            elif isinstance(item, TelnetReply):
                items.append(("telnet", item.data.hex()))
            else:
                items.append(("value", json.dumps(item)))
    return items, decoder.closed, decoder.partial


# --- the decoder --------------------------------------------------------------------------------


@SETTINGS
@given(st.data(), interesting_bytes)
def test_any_stream_any_cut_same_outcome_and_no_exception(data, stream):
    whole = outcome([stream])
    chunks = data.draw(cuts(stream))
    assert outcome(chunks) == whole
    assert outcome([bytes([b]) for b in stream]) == whole


@SETTINGS
@given(
    st.data(),
    st.lists(
        st.one_of(json_values.map(lambda v: ("value", v)), junk_lines.map(lambda j: ("junk", j))),
        max_size=10,
    ),
)
def test_every_complete_request_comes_out_exactly_once(data, parts):
    stream = b""
    expected = []
    for kind, part in parts:
        if kind == "junk":
            stream += part
            expected.append(("error", "json_invalido"))
            continue
        text = data.draw(encoded(part))
        if len(text) > LIMIT:
            continue
        # A number only ends where something else begins: a value is
        # complete at its last byte, plus white space after a bare number.
        stream += data.draw(whitespace) + text + (b"\n" if not isinstance(part, (dict, list)) else b"")
        expected.append(("value", json.dumps(part)))
    chunks = data.draw(cuts(stream))
    items, closed, partial = outcome(chunks)
    assert items == expected
    assert not closed


@SETTINGS
@given(st.data(), st.lists(json_values.filter(lambda v: isinstance(v, (dict, list))), min_size=1, max_size=5))
def test_telnet_commands_anywhere_are_taken_out_and_options_refused_once(data, values):
    stream = b"".join(data.draw(encoded(value)) + b"\n" for value in values)
    if len(stream) > LIMIT:
        return
    points = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    commands = [data.draw(neutral_telnet) for _ in points]
    mixed = b""
    for start, end, command in zip([0, *points], points, commands, strict=False):
        mixed += stream[start:end] + command
    mixed += stream[points[-1] if points else 0 :]
    items, closed, partial = outcome(data.draw(cuts(mixed)))
    assert [item for item in items if item[0] != "telnet"] == [("value", json.dumps(v)) for v in values]
    refused = [c[:3] for c in commands if c[1] in (251, 253)]  # WILL or DO
    assert len([item for item in items if item[0] == "telnet"]) == len(refused)
    assert not closed and not partial


@SETTINGS
@given(st.data(), json_values.filter(lambda v: isinstance(v, (dict, list))))
def test_a_request_is_answered_at_its_last_byte(data, value):
    text = data.draw(encoded(value))
    decoder = Decoder(max(LIMIT, len(text)))
    for i in range(len(text) - 1):
        assert decoder.feed(text[i : i + 1]) == []
    (item,) = decoder.feed(text[-1:])
    assert json.dumps(item) == json.dumps(value)


@SETTINGS
@given(st.data(), st.integers(LIMIT + 1, 4 * LIMIT))
def test_input_still_incomplete_at_the_limit_is_too_large_and_closes(data, size):
    stream = b'{"cliente": "' + b"a" * size
    items, closed, _ = outcome(data.draw(cuts(stream)))
    assert items == [("error", "demasiado_grande")] and closed


# --- validation against an oracle written from the contract -----------------------------------

MAX_ID = 2**63 - 1


def _text_ok(value: Any, limit: int) -> bool:
    # NUL: PostgreSQL's text cannot hold it, so no stored text may carry it.
    return isinstance(value, str) and 1 <= len(value.strip()) <= limit and "\x00" not in value


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def order_ok(value: dict) -> bool:
    if set(value) - {"cliente", "productos", "direccion", "referencia"}:
        return False
    productos = value.get("productos")
    return (
        _text_ok(value.get("cliente"), 200)
        and _text_ok(value.get("direccion"), 500)
        and (value.get("referencia") is None or _text_ok(value["referencia"], 100))
        and isinstance(productos, list)
        and 1 <= len(productos) <= 100
        and all(_text_ok(p, 200) for p in productos)
    )


FIELD_RULES = {
    "id": lambda v: _int(v) and 1 <= v <= MAX_ID,
    "timeout": lambda v: (_int(v) or isinstance(v, float)) and 0 <= v <= 3600,
    "estado": lambda v: isinstance(v, str) and v in ESTADOS,
    # Any `cliente` an order may carry: 1 to 200 characters after trimming.
    "cliente": lambda v: _text_ok(v, 200),
    "desde_id": lambda v: _int(v) and 0 <= v <= MAX_ID,
    "limite": lambda v: _int(v) and 1 <= v <= 1000,
    "token": lambda v: isinstance(v, str) and 1 <= len(v) <= MAX_TOKEN_CHARS,
}
COMMAND_FIELDS = {
    "consultar": ({"id"}, set()),
    "esperar": ({"id"}, {"timeout"}),
    "listar": (set(), {"estado", "cliente", "desde_id", "limite"}),
    "cancelar": ({"id"}, set()),
    "estadisticas": (set(), set()),
    "autenticar": ({"token"}, set()),
}


def command_outcome(value: dict) -> str | None:
    """The error code the contract asks for, or None if the command is valid."""
    accion = value["accion"]
    if not isinstance(accion, str):
        return "mensaje_invalido"
    if accion not in COMMAND_FIELDS:
        return "accion_desconocida"
    required, optional = COMMAND_FIELDS[accion]
    if set(value) - {"accion"} - required - optional:
        return "mensaje_invalido"
    for name in required | optional:
        raw = value.get(name)
        if raw is None:
            if name in required:
                return "mensaje_invalido"
        elif not FIELD_RULES[name](raw):
            return "mensaje_invalido"
    return None


def expected_outcome(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "mensaje_invalido"
    if "accion" in value:
        return command_outcome(value)
    return None if order_ok(value) else "pedido_invalido"


def padded_text(limit: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda pad_left, body, pad_right: pad_left + body + pad_right,
        st.sampled_from(["", " ", "\t", "  \n"]),
        st.one_of(
            st.text(max_size=5),
            st.integers(limit - 2, limit + 2).map(lambda n: "ñ" * max(n, 0)),
        ),
        st.sampled_from(["", " ", "\r\n"]),
    )


edge_numbers = st.sampled_from(
    [0, 1, -1, 2, 17, 999, 1000, 1001, 3600, 3601, MAX_ID, MAX_ID + 1, 0.0, 0.5, 1.0, 3600.0, 3600.5, -0.5]
)
any_value = st.one_of(json_values, edge_numbers, padded_text(200), st.lists(padded_text(200), max_size=3))


def field_value(name: str) -> st.SearchStrategy[Any]:
    specific = {
        "cliente": padded_text(200),
        "direccion": padded_text(500),
        "referencia": st.one_of(st.none(), padded_text(100)),
        "productos": st.one_of(
            st.lists(padded_text(200), max_size=4),
            st.integers(99, 101).map(lambda n: ["p"] * n),
        ),
        "accion": st.one_of(st.sampled_from([*COMMAND_FIELDS, "borrar", "", "CONSULTAR"]), any_value),
        "estado": st.sampled_from([*ESTADOS, "otro", "LISTO"]),
        "id": edge_numbers,
        "timeout": edge_numbers,
        "desde_id": edge_numbers,
        "limite": edge_numbers,
    }.get(name)
    return st.one_of(specific, any_value) if specific is not None else any_value


FIELD_NAMES = ["cliente", "productos", "direccion", "referencia", "accion", "id", "timeout"]
FIELD_NAMES += ["estado", "desde_id", "limite", "token", "dirección", "extra"]


@st.composite
def requests(draw: st.DrawFn) -> Any:
    """Requests near the edge of validity: real field names, values of every type."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    names = draw(st.lists(st.sampled_from(FIELD_NAMES), unique=True, max_size=6))
    if draw(st.booleans()):
        names = ["cliente", "productos", "direccion", *names]
    return {name: draw(field_value(name)) for name in names}


def check_accepted(request: NewOrder | Command) -> None:
    """What validation lets through is trimmed and within the contract's limits."""
    if isinstance(request, NewOrder):
        for text, limit in (
            (request.cliente, 200),
            (request.direccion, 500),
            *((p, 200) for p in request.productos),
        ):
            assert text == text.strip() and 1 <= len(text) <= limit
        assert 1 <= len(request.productos) <= 100
        assert request.referencia is None or (
            request.referencia == request.referencia.strip() and 1 <= len(request.referencia) <= 100
        )
    else:
        args = request.args
        assert request.accion in COMMAND_FIELDS
        if "timeout" in args:
            assert isinstance(args["timeout"], float) and 0 <= args["timeout"] <= 3600
            assert not math.isnan(args["timeout"])
        if "limite" in args:
            assert 1 <= args["limite"] <= 1000


@SETTINGS
@given(requests())
def test_validation_accepts_exactly_what_the_contract_allows(value):
    expected = expected_outcome(value)
    try:
        request = parse_request(value)
    except RequestError as refused:
        assert refused.code == expected, (value, refused.mensaje)
        assert refused.code in ERROR_CODES and refused.mensaje
        return
    assert expected is None, (value, request)
    check_accepted(request)


@SETTINGS
@given(requests().filter(lambda value: isinstance(value, dict)))
def test_the_quick_order_check_agrees_with_the_careful_one(value):
    # Orders take the quick check first; the careful one only explains refusals.
    quick = plain_order(value)
    try:
        careful = careful_order(value)
    except RequestError:
        assert quick is None, (value, quick)
    else:
        assert quick == careful, (value, quick, careful)


@SETTINGS
@given(st.data(), st.lists(requests(), max_size=6))
def test_nothing_invalid_passes_from_bytes_to_a_request(data, values):
    stream = b"".join(json.dumps(v, ensure_ascii=data.draw(st.booleans())).encode() + b"\n" for v in values)
    decoder = Decoder(1 << 20)
    results = []
    for chunk in data.draw(cuts(stream)):
        results += decoder.feed(chunk)
    assert len(results) == len(values)
    for value, item in zip(values, results, strict=True):
        assert not isinstance(item, RequestError), item
        try:
            request = parse_request(item)
        except RequestError as refused:
            assert refused.code == expected_outcome(value)
        else:
            assert expected_outcome(value) is None
            check_accepted(request)


@SETTINGS
@given(
    st.lists(
        st.one_of(st.text(), st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\u2028", "ñ"])), max_size=4
    )
)
def test_products_are_stored_as_json_dumps_writes_them(productos):
    # The store writes the common case without the json module's encoder.
    assert products_json(tuple(productos)) == json.dumps(productos, ensure_ascii=False)
