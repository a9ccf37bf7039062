"""`pedidos.framing.Decoder`: bytes of one connection in, requests out (contract §2).

Results are compared in a normal form: a decoded value as is, an error as
("ERROR", code). The decoder must give the same results however the input is
cut into chunks, so most cases are also fed one byte at a time, and
`test_every_split_point_gives_the_same_results` cuts a corpus at every point.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import ORIGINAL_ORDER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pedidos.protocol.framing import DEFAULT_MAX_REQUEST_BYTES, MAX_DEPTH, MAX_NUMBER_CHARS, Decoder
from pedidos.protocol.replies import DEMASIADO_GRANDE, JSON_INVALIDO, RequestError
from pedidos.protocol.scanner import BOM_BEFORE_VALUE
from pedidos.protocol.telnet import TelnetReply

ERR = JSON_INVALIDO
BIG = DEMASIADO_GRANDE
ORDER = {"cliente": "Juan Pérez", "productos": ["pan", "agua"], "direccion": "Av. Siempre Viva 742"}
IAC_IP = b"\xff\xf4"  # what Ctrl-C at a telnet prompt sends
IAC_DO_TIMING_MARK = b"\xff\xfd\x06"
WONT_TIMING_MARK = TelnetReply(b"\xff\xfc\x06")


def norm(items: list[Any], exact: bool = False) -> list[Any]:
    """Errors as ("ERROR", code); `exact`: with their sentence too, which a
    client sees as well, so it must not depend on the cut either."""
    return [
        (("ERROR", item.code, item.mensaje) if exact else ("ERROR", item.code))
        if isinstance(item, RequestError)
        else item
        for item in items
    ]


def whole(data: bytes, limit: int = DEFAULT_MAX_REQUEST_BYTES, exact: bool = False) -> list[Any]:
    return norm(Decoder(limit).feed(data), exact)


def chunked(chunks: list[bytes], limit: int = DEFAULT_MAX_REQUEST_BYTES, exact: bool = False) -> list[Any]:
    decoder = Decoder(limit)
    out: list[Any] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return norm(out, exact)


def bytewise(data: bytes, limit: int = DEFAULT_MAX_REQUEST_BYTES) -> list[Any]:
    return chunked([data[i : i + 1] for i in range(len(data))], limit)


def both_ways(data: bytes, limit: int = DEFAULT_MAX_REQUEST_BYTES) -> list[Any]:
    """The results of `data` fed whole, checked equal to feeding it byte by byte."""
    result = whole(data, limit)
    assert bytewise(data, limit) == result
    return result


def e(code: str = ERR) -> tuple[str, str]:
    return ("ERROR", code)


# --- what a client sends ------------------------------------------------------


def test_pretty_printed_order_as_pasted_into_telnet():
    assert both_ways(ORIGINAL_ORDER.encode()) == [ORDER]


def test_pretty_printed_with_indent_and_crlf():
    data = json.dumps(ORDER, indent=4, ensure_ascii=False).replace("\n", "\r\n").encode() + b"\r\n"
    assert both_ways(data) == [ORDER]


def test_one_object_per_line_with_crlf():
    data = b'{"a": 1}\r\n{"b": 2}\r\n\r\n{"c": 3}\r\n'
    assert both_ways(data) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_request_completes_at_its_closing_brace_without_newline():
    decoder = Decoder()
    assert decoder.feed(json.dumps(ORDER).encode()) == [ORDER]
    assert not decoder.partial
    # and the same when the closing brace arrives alone
    decoder = Decoder()
    data = json.dumps(ORDER).encode()
    assert decoder.feed(data[:-1]) == []
    assert decoder.partial
    assert decoder.feed(b"}") == [ORDER]


def test_fifty_orders_pipelined_in_one_packet():
    orders = [dict(ORDER, cliente=f"c{i}") for i in range(50)]
    data = b"".join(json.dumps(o, ensure_ascii=False).encode() for o in orders)  # no separator at all
    assert whole(data) == orders
    assert whole(b"\n".join(json.dumps(o).encode() for o in orders)) == orders


def test_fifty_orders_one_byte_at_a_time():
    orders = [dict(ORDER, cliente=f"c{i}") for i in range(50)]
    data = b" ".join(json.dumps(o, ensure_ascii=False).encode() for o in orders)
    assert bytewise(data) == orders


def test_non_ascii_split_inside_a_character():
    data = json.dumps({"cliente": "Pérez ñandú 😀"}, ensure_ascii=False).encode()
    cut = data.index("😀".encode()) + 2  # in the middle of the 4-byte character
    assert chunked([data[:cut], data[cut:]]) == [{"cliente": "Pérez ñandú 😀"}]
    assert bytewise(data) == [{"cliente": "Pérez ñandú 😀"}]


def test_all_json_value_kinds_and_escapes():
    data = b'[] {} "s" 1.5e3 -0 true false null {"k": ["\\u00e9\\n\\t\\"\\\\\\/", {"x": -1.25E-2}]}\n'
    assert both_ways(data) == [
        [],
        {},
        "s",
        1500.0,
        0,
        True,
        False,
        None,
        {"k": ['é\n\t"\\/', {"x": -0.0125}]},
    ]


def test_white_space_only_is_nothing():
    decoder = Decoder()
    assert decoder.feed(b" \r\n\t \n") == []
    assert not decoder.partial


# --- values that are still a valid beginning wait ------------------------------


@pytest.mark.parametrize(
    ("start", "rest", "value"),
    [
        (b'{"cliente": "A",', b'"productos": []}', {"cliente": "A", "productos": []}),
        (b"[[[", b"]]]", [[[]]]),
        (b"tru", b"e ", True),
        (b"fals", b"e ", False),
        (b"n", b"ull ", None),
        (b"-", b"5 ", -5),
        (b"1.", b"5 ", 1.5),
        (b"1e", b"3 ", 1000.0),
        (b"1.5E-", b"1 ", 0.15),
        (b"12", b"34\n", 1234),
        (b'"\\u00', b'e9"', "é"),
        (b'"\\', b'n"', "\n"),
        (b'"abc', b'"', "abc"),
        (b'{"a"', b":1}", {"a": 1}),
        (b'{"a":', b"1}", {"a": 1}),
        (b"[1,", b"2]", [1, 2]),
    ],
)
def test_valid_beginning_waits_for_more(start, rest, value):
    decoder = Decoder()
    assert decoder.feed(start) == []
    assert decoder.partial
    assert norm(decoder.feed(rest)) == [value]
    assert not decoder.partial


def test_number_at_end_of_input_waits_for_its_end():
    decoder = Decoder()
    assert decoder.feed(b"12") == []
    assert decoder.feed(b"3") == []
    assert decoder.feed(b"\n") == [123]


CUT = "JSON inválido: la entrada terminó a mitad de una petición."


@pytest.mark.parametrize(
    ("data", "at_end"),
    [
        (b"", []),
        (b"  \r\n ", []),
        (json.dumps(ORDER).encode(), []),  # nothing was left waiting
        (b"12", [12]),  # the end of the input ends the number
        (b'{"a": 1}{"cliente": "A",', [CUT]),
        (b"[[[", [CUT]),
        (b'{"cliente": "Jos\xc3', [CUT]),  # inside a character
        (b'{"cliente": "Jos', [CUT]),  # inside a text: no hint about pasting long lines
        (b'{"cliente": "\\', [CUT]),  # after a backslash
        (b'{"ok": tru', [CUT]),  # inside a word
        (b'{"cliente": "A", \xff\xfd', [CUT]),  # inside a telnet command: one reply, no more
        (b"}\n", []),  # the error came at once; nothing was left
    ],
)
def test_the_end_of_the_input_answers_what_was_left_waiting(data, at_end):
    decoder = Decoder()
    decoder.feed(data)
    finished = decoder.finish()
    assert [item.mensaje if isinstance(item, RequestError) else item for item in finished] == at_end
    assert not decoder.partial and decoder.finish() == []


# --- invalid input ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        b"x",
        b"}",
        b"]",
        b",",
        b":",
        b"'single quotes'",
        b"{a: 1}",
        b"{'a': 1}",
        b'{"a" 1}',
        b'{"a": 1,}',
        b"[1,]",
        b"[1 2]",
        b'{"a": 1 "b": 2}',
        b"01",
        b"-01",
        b"1.5.3",
        b"1-2",
        b"1.e5",
        b"+1",
        b".5",
        b"--1",
        b"tx",
        b"nul1",
        b"True",
        b"None",
        b'"tab\there"',
        b'"\\q"',
        b'"\\u00zz"',
        b'"\\x41"',
        b"\x00",
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark is not JSON white space
        b"\x0c{}",  # form feed is not JSON white space
    ],
)
def test_invalid_input_is_json_invalido(bad):
    assert both_ways(bad + b"\n") == [e()]
    # and then the next line is read normally
    assert both_ways(bad + b'\n{"ok": 1}\n') == [e(), {"ok": 1}]


def test_error_drops_to_end_of_line_and_reading_goes_on():
    data = b'{"a": 1} oops {"dropped": true}\n{"b": 2}\n'
    assert both_ways(data) == [{"a": 1}, e(), {"b": 2}]


def test_error_in_a_pretty_printed_request_drops_only_its_line():
    data = b'{\n  "cliente": "A",\n  oops\n}\n{"b": 2}'
    # "oops" line dropped; the lone "}" on the next line is an error of its own
    assert both_ways(data) == [e(), e(), {"b": 2}]


def test_an_error_in_a_request_of_several_lines_says_where_and_why_more_errors_follow():
    # A typo in a pretty-printed order pasted at telnet: the errors of the
    # lines after it seemed to have nothing to do with it, and none said where.
    data = '{\n  "cliente": "Peña",\n  "productos": ["pan" "agua"],\n  "direccion": "C"\n}\n'.encode()
    first = whole(data, exact=True)[0]
    assert first[1] == ERR and "en la línea 3 de la petición, columna 23:" in first[2], first
    assert "peticiones nuevas" in first[2], first
    assert chunked([data[:1], data[1:9], data[9:30], data[30:]], exact=True) == whole(data, exact=True)
    # The same sentence byte by byte: the position counts from the request, not the chunk.
    assert chunked([data[i : i + 1] for i in range(len(data))], exact=True) == whole(data, exact=True)
    one_line = whole(b'{"cliente": "A" "productos": []}\n', exact=True)[0]
    assert one_line[2] == "JSON inválido: se esperaba ',' o el cierre.", one_line  # as before


def test_error_without_newline_drops_what_arrives_until_the_newline():
    decoder = Decoder()
    assert norm(decoder.feed(b"garbage ")) == [e()]
    assert decoder.feed(b'{"still": "dropped"} ') == []
    assert decoder.feed(b"more garbage") == []
    assert decoder.feed(b'\n{"c": 3}') == [{"c": 3}]


def test_one_error_per_bad_line():
    data = b"bad one\nbad two\n\nbad three\n"
    assert both_ways(data) == [e(), e(), e()]


def test_number_that_cannot_continue_is_refused_at_once():
    decoder = Decoder()
    assert norm(decoder.feed(b"1.e")) == [e()]  # no digits can make "1.e..." a number
    decoder = Decoder()
    assert norm(decoder.feed(b"01")) == [e()]


@pytest.mark.parametrize(
    "bad",
    [
        b'{"cliente": "\xff"}',
        b'{"cliente": "\xc3("}',  # a lead byte without its continuation
        b'{"cliente": "\xc0\xaf"}',  # an overlong encoding of "/"
        b'{"cliente": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
        b'{"cliente": "\xf4\x90\x80\x80"}',  # beyond U+10FFFF
        b'"\x80"',
        b"\xfe",
        b"[1, \xe9]",  # Latin-1, not UTF-8
    ],
)
def test_bytes_that_are_not_utf8_are_json_invalido(bad):
    assert both_ways(bad + b'\n{"next": 1}\n') == [e(), {"next": 1}]


def test_a_byte_order_mark_before_a_request_is_named():
    # What an editor saving "UTF-8 with BOM" puts first; "se esperaba un valor"
    # did not say what was wrong with a request that looked right.
    data = '\ufeff{"accion": "estadisticas"}\n{"b": 2}\n'.encode()
    refused = ("ERROR", JSON_INVALIDO, f"JSON inválido: {BOM_BEFORE_VALUE}.")
    assert whole(data, exact=True) == [refused, {"b": 2}]
    assert "BOM" in BOM_BEFORE_VALUE
    assert both_ways(b"[1, \xef\xbb\xbf2]\n") == [e()]  # inside a value: the same error


def test_bytes_that_are_not_utf8_after_a_complete_value():
    assert both_ways(b'{"a": 1}\xff\n{"b": 2}\n') == [{"a": 1}, e(), {"b": 2}]
    assert both_ways(b"12\xf0\n") == [12, e()]


@pytest.mark.parametrize(
    "text",
    [
        '"\\ud800"',
        '"\\udc00"',
        '"\\uD83D"',
        '"x\\ud800y"',
        '"\\ud800\\u0041"',
        '"\\udc00\\ud800"',  # a pair in the wrong order
        '{"\\ud800": 1}',  # in a key
        '{"cliente": "A", "productos": ["\\ud83d"]}',
    ],
)
def test_lone_surrogate_escapes_are_json_invalido(text):
    assert both_ways(text.encode() + b'\n{"next": 1}\n') == [e(), {"next": 1}]


def test_surrogate_pair_escape_is_one_character():
    assert both_ways(b'"\\ud83d\\ude00" "\\uD83D\\uDE00"\n') == ["😀", "😀"]
    # an escaped backslash followed by "ud800" is plain text, not an escape
    assert both_ways(b'"\\\\ud800"\n') == ["\\ud800"]


@pytest.mark.parametrize(
    "bad", [b"NaN", b"Infinity", b"-Infinity", b"[NaN]", b'{"timeout": Infinity}', b"nan", b"inf"]
)
def test_nan_and_infinity_are_json_invalido(bad):
    assert both_ways(bad + b"\n") == [e()]


def test_thousand_digit_integer_is_json_invalido():
    digits = b"9" * 1000
    assert both_ways(digits + b"\n") == [e()]
    assert both_ways(b'{"accion": "consultar", "id": ' + digits + b"}\n") == [e()]
    assert both_ways(b"[" + digits + b"]\n") == [e()]


def test_number_length_boundary():
    assert both_ways(b"9" * MAX_NUMBER_CHARS + b"\n") == [int("9" * MAX_NUMBER_CHARS)]
    assert both_ways(b"9" * (MAX_NUMBER_CHARS + 1) + b"\n") == [e()]
    long_float = b"1." + b"0" * (MAX_NUMBER_CHARS - 2)
    assert both_ways(long_float + b"\n") == [1.0]
    assert both_ways(long_float + b"0\n") == [e()]


def test_nesting_boundary():
    deepest = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert both_ways(deepest + b"\n") != [e()]
    assert both_ways(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"\n") == [e()]
    objects = b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1)
    assert both_ways(objects + b"\n") == [e()]
    # many brackets that are not nested are fine
    wide = b"[" + b",".join([b"[]"] * 500) + b"]"
    assert whole(wide + b"\n") == [[[]] * 500]


def test_very_deep_nesting_in_one_chunk_is_one_error_not_a_crash():
    decoder = Decoder()
    assert norm(decoder.feed(b"[" * 50_000 + b"\n" + b'{"after": 1}\n')) == [e(), {"after": 1}]
    decoder = Decoder()
    assert norm(decoder.feed(b'{"a":' * 30_000)) == [e()]


# --- the size limit ---------------------------------------------------------


def padded_request(size: int) -> bytes:
    """An object of exactly `size` bytes: white space inside counts."""
    base = b'{"cliente": "A"'
    return base + b" " * (size - len(base) - 1) + b"}"


def test_request_of_exactly_the_limit_is_accepted():
    for limit in (64, 1000):
        assert both_ways(padded_request(limit), limit) == [{"cliente": "A"}]
    data = padded_request(DEFAULT_MAX_REQUEST_BYTES)
    assert whole(data) == [{"cliente": "A"}]
    assert chunked([data[i : i + 1000] for i in range(0, len(data), 1000)]) == [{"cliente": "A"}]


def test_request_one_byte_over_the_limit_is_demasiado_grande():
    for limit in (64, 1000):
        assert both_ways(padded_request(limit + 1), limit) == [e(BIG)]
    assert whole(padded_request(DEFAULT_MAX_REQUEST_BYTES + 1)) == [e(BIG)]


def test_demasiado_grande_while_still_arriving():
    """Refused as soon as the limit is crossed, without waiting for the end."""
    decoder = Decoder()
    sent = 0
    chunk = b"a" * 1000
    start = b'{"cliente": "'
    assert decoder.feed(start) == []
    sent += len(start)
    while sent + len(chunk) <= DEFAULT_MAX_REQUEST_BYTES:
        assert decoder.feed(chunk) == [], f"refused after {sent} bytes, within the limit"
        sent += len(chunk)
    # this chunk crosses the limit: refused now, though the value never ended
    assert norm(decoder.feed(chunk)) == [e(BIG)]
    assert decoder.closed
    assert not decoder.partial  # nothing kept
    assert decoder.feed(b'"}\n{"a": 1}\n') == []  # the connection is over


def test_demasiado_grande_one_byte_at_a_time():
    decoder = Decoder(100)
    data = b"[" + b"1," * 200
    results = []
    for i in range(len(data)):
        results += decoder.feed(data[i : i + 1])
        if results:
            assert i == 100, "refused at the 101st byte, not before and not later"
            break
    assert norm(results) == [e(BIG)]


def test_limit_counts_from_the_first_byte_of_each_request():
    limit = 100
    # white space before a request is not part of it
    assert both_ways(b" " * 500 + padded_request(limit), limit) == [{"cliente": "A"}]
    # many requests in one chunk are each under the limit
    assert both_ways(padded_request(limit) * 20, limit) == [{"cliente": "A"}] * 20
    # the limit is in bytes, not characters
    text = json.dumps({"c": "é" * 60}, ensure_ascii=False).encode()
    assert len(text.decode()) < limit < len(text)
    assert both_ways(text, limit) == [e(BIG)]


def test_the_limit_in_bytes_holds_for_four_byte_characters_in_one_chunk():
    # One chunk goes to the quick path, which counts characters: a request of
    # characters of four bytes each is over the limit with a quarter as many.
    for limit in (1000, DEFAULT_MAX_REQUEST_BYTES):
        over = json.dumps({"c": "\U0001f600" * ((limit - 8) // 4)}, ensure_ascii=False).encode()
        assert len(over) > limit and len(over.decode()) * 3 < limit
        assert whole(over, limit) == [e(BIG)]
        under = json.dumps({"c": "\U0001f600" * ((limit - 9) // 4)}, ensure_ascii=False).encode()
        assert len(under) <= limit
        assert whole(under, limit) == [json.loads(under)]


def test_nothing_more_comes_out_once_demasiado_grande_closed_it():
    decoder = Decoder(100)
    assert norm(decoder.feed(padded_request(101))) == [e(BIG)]
    assert decoder.closed
    assert decoder.feed(b'{"b": 2}\n[3]\n') == []  # whole requests, for the quick path
    assert decoder.finish() == []


def test_error_past_the_limit_is_demasiado_grande_however_it_arrives():
    """A valid beginning longer than the limit is too large, even when the
    bytes after it would have been refused as invalid."""
    data = b'"' + b"a" * 200 + b"\x01" + b'"\n'
    limit = 100
    expected = [e(BIG)]
    assert whole(data, limit) == expected
    assert bytewise(data, limit) == expected
    assert chunked([data[:50], data[50:]], limit) == expected


def test_error_within_the_limit_is_json_invalido_and_keeps_the_connection():
    decoder = Decoder(100)
    assert norm(decoder.feed(b'{"a": x' + b" " * 500 + b"\n")) == [e()]
    assert not decoder.closed
    assert decoder.feed(b'{"b": 2}') == [{"b": 2}]


def test_dropped_line_is_not_limited_and_not_kept():
    decoder = Decoder(100)
    assert norm(decoder.feed(b"x")) == [e()]
    for _ in range(100):
        assert decoder.feed(b"y" * 1000) == []
    assert not decoder.partial and not decoder.closed
    assert decoder.feed(b'\n{"b": 2}') == [{"b": 2}]


# --- telnet --------------------------------------------------------------------


def test_telnet_ctrl_c_abandons_the_partial_request_without_an_error():
    decoder = Decoder()
    assert decoder.feed(b'{"cliente": "A",\r\n') == []
    assert decoder.feed(IAC_IP) == []  # a person who pressed Ctrl-C asked for nothing
    assert not decoder.partial
    # the next line typed is read, not dropped waiting for a newline
    assert decoder.feed(b'{"accion": "estadisticas"}\r\n') == [{"accion": "estadisticas"}]


def test_telnet_ctrl_c_with_timing_mark_gets_the_mark_refused_and_nothing_else():
    # telnet hides all output after Ctrl-C until DO TIMING-MARK is answered
    # (RFC 860); WONT TIMING-MARK is an answer it accepts.
    data = b'{"cliente": "A",' + IAC_IP + IAC_DO_TIMING_MARK + b'{"accion": "estadisticas"}\r\n'
    assert both_ways(data) == [WONT_TIMING_MARK, {"accion": "estadisticas"}]


def test_telnet_ctrl_c_on_a_fresh_line_and_after_garbage():
    assert both_ways(IAC_IP + b'{"a": 1}\r\n') == [{"a": 1}]
    # a line already refused ends at the Ctrl-C too
    assert both_ways(b"garbage" + IAC_IP + b'{"a": 1}\r\n') == [e(), {"a": 1}]


@pytest.mark.parametrize("command", [b"\xf4", b"\xf5", b"\xf3"], ids=["IP", "AO", "BRK"])
def test_interrupt_abort_output_and_break_drop_the_partial_request(command):
    data = b'{"cliente": "Medio", "productos": ["pan"],\r\n\xff' + command + b'{"a": 1}'
    assert both_ways(data) == [{"a": 1}]


def test_telnet_options_are_refused_and_subnegotiation_skipped_whole():
    data = b"\xff\xfb\x01\xff\xfa\x18\x00xt\xff\xffrm\xff\xf0" + b'{"a": 1}\n'
    assert both_ways(data) == [TelnetReply(b"\xff\xfe\x01"), {"a": 1}]  # WILL ECHO: DONT ECHO
    assert both_ways(b"\xff\xfd\x03\xff\xfc\x01\xff\xfe\x03[1]") == [TelnetReply(b"\xff\xfc\x03"), [1]]


def test_other_telnet_commands_inside_a_request_are_taken_out_and_it_goes_on():
    # NOP, AYT, DO TIMING-MARK in the middle of an order: only IP, AO and BRK abandon it.
    data = b'{"cliente": "A",\xff\xf1 "productos": ["pan"],\xff\xf6\r\n' + IAC_DO_TIMING_MARK + b' "x": 1}'
    assert both_ways(data) == [WONT_TIMING_MARK, {"cliente": "A", "productos": ["pan"], "x": 1}]


def test_a_stray_0xff_0xfa_is_not_a_subnegotiation_that_swallows_the_rest():
    # Telnet's subnegotiations are a few bytes: past MAX_SUBNEGOTIATION it was data.
    order = b'{"b": 2, "pad": "' + b"x" * 300 + b'"}\n'
    data = b'{"cliente": "Mar\xff\xfaa"}\n' + order + order
    assert both_ways(data) == [e(), {"b": 2, "pad": "x" * 300}, {"b": 2, "pad": "x" * 300}]
    # and one that never ends is answered, as data that is no JSON
    assert both_ways(b"\xff\xfa" + b"y" * 2000) == [e()]


def test_a_stray_0xff_0xfa_ends_at_the_newline_and_at_the_end_of_the_input():
    short = b'{"cliente": "Mar\xff\xfaa"}\n{"b": 2}\n'
    assert both_ways(short) == [e(), {"b": 2}]  # answered as soon as its line ends
    assert both_ways(b'{"cliente": "Mar\xff\xfa\xff\n{"b": 2}\n') == [e(), {"b": 2}]
    decoder = Decoder()
    assert decoder.feed(b'\xff\xfa{"b": 2}') == []  # still possibly a subnegotiation...
    assert norm(decoder.finish()) == [e()]  # ...till the input ends: then data, and answered


def test_telnets_cr_nul_is_a_cr():
    # `printf '...\\r\\n' | telnet` sends CR NUL LF: one request, no error after it.
    assert both_ways(b'{"a": 1}\r\x00\n{"b": 2}\r\x00') == [{"a": 1}, {"b": 2}]
    assert chunked([b'{"a": 1}\r', b"\x00\x00\n"]) == whole(b'{"a": 1}\r\x00\x00\n') == [{"a": 1}, e()]


def test_iac_iac_is_a_data_byte_0xff_and_not_utf8():
    assert both_ways(b'{"cliente": "\xff\xff"}\n{"b": 2}\n') == [e(), {"b": 2}]
    assert both_ways(b'\xff\xff\n{"b": 2}\n') == [e(), {"b": 2}]


def test_telnet_ctrl_c_bytes_in_separate_packets():
    assert chunked([b'{"cliente": "A",', b"\xff", b"\xf4", b'{"b": 2}\n']) == [{"b": 2}]
    assert chunked([b"\xff\xf4\xff", b"\xfd", b"\x06", b"[1]"]) == [WONT_TIMING_MARK, [1]]


# --- cutting the input anywhere changes nothing ---------------------------------

CORPUS = [
    ORIGINAL_ORDER.encode(),
    json.dumps([ORDER] * 3, ensure_ascii=False).encode() + b"\n" + json.dumps(ORDER).encode(),
    b'{"a": 1}{"b": [1, 2.5e-3, -0, true, null]}"s"\r\n12 34\n',
    b'{"accion": "consultar", "id": 1}\n{"accion": "esperar", "id": 2, "timeout": 0.5}',
    b"01 1.5.3 1-2\n1.e5\n-\n{}",
    b'x {"dropped": 1}\n{"kept": "\\u00e9\\ud83d\\ude00"}\n',
    b'"\\ud800"\n{"k": 1}\n',
    b'{"a": "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"}\n"\xc3\xff\xf4"\n{"b": 2}',
    b'{"cliente": "A",\xff\xf4\xff\xfd\x06{"b": 2}\r\n',
    b"garbage\xff\xf4\xff\xfb\x01[1]\n",
    b'\xff\xfa\x18\x00xt\xff\xff\xf0\xff\xf0{"sb": 1}\n',  # IAC IAC inside SB does not end it
    b'["\xff\xfa' + b"z\xff\xff" * 90 + b'"]\n{"after": 1}\n',  # an SB too long: data after all
    b'{"c": "\xff\xfa\x01"}\n{"d": 1}\n\xff\xfa\xff\n[5]\n',  # an SB a newline ends: data after all
    b'{"cliente": "A",\xff\xf1\xff\xfd\x06 "b": ["\xff\xff"]}\xff\xf4[2]\xff\x22\n[3]\xff\xfe\x01{}',
    b"NaN\n[Infinity]\n-Infinity\ntrue false null nul\n[true]",
    b"[" * 70 + b"\n" + b"[" * 10 + b"]" * 10 + b"\n",
    b"9" * 150 + b"\n" + b"9" * 50 + b" ",
    b'{"t": "a\tb"}\n{"u": "\\u00"}\n{"ok": 1}',
    b"\xef\xbb\xbf{}\n\x00\n{}",
    b'{"a": 1}\r\x00\n\r\x00\x00[2]\r\r\x00\n',  # telnet's CR NUL, and a NUL that is not one
    b'\xf0x\n[1\xf0 ]\n{"a"\xc3:1}\n{"a": "\xe2\x82"}\n[0]',  # a bad character's first byte: bad UTF-8
]


@pytest.mark.parametrize("data", CORPUS, ids=range(len(CORPUS)))
def test_every_split_point_gives_the_same_results(data):
    # The same replies, sentences included: "bytes que no son UTF-8" whole
    # became "se esperaba un valor" when cut inside the bad character.
    expected = whole(data, exact=True)
    assert expected, "each corpus entry yields something"
    for i in range(len(data) + 1):
        assert chunked([data[:i], data[i:]], exact=True) == expected, f"split at {i}"
    for i in range(0, len(data) + 1, 3):
        for j in range(i, len(data) + 1, 7):
            assert chunked([data[:i], data[i:j], data[j:]], exact=True) == expected, f"split at {i}, {j}"
    assert chunked([data[i : i + 1] for i in range(len(data))], exact=True) == expected


@pytest.mark.parametrize("limit", [40, 80])
def test_every_split_point_with_a_small_limit(limit):
    data = b'{"a": 1}\n' + b'{"cliente": "' + b"x" * 100 + b'"}'
    expected = whole(data, limit)
    assert expected == [{"a": 1}, e(BIG)]
    for i in range(len(data) + 1):
        assert chunked([data[:i], data[i:]], limit) == expected, f"split at {i}"


TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"a",
    b"\\",
    b"u",
    b"00e9",
    b"d800",
    b":",
    b",",
    b" ",
    b"\n",
    b"\r\n",
    b"0",
    b"1",
    b"-",
    b".",
    b"e",
    b"+",
    b"true",
    b"tru",
    b"null",
    b"NaN",
    b"\xc3\xa9",
    b"\xc3",
    b"\xff",
    b"\xf4",
    b"\xfd",
    b"\xfa",
    b"\xf0",
    b"\x06",
    b"\x01",
    b'{"a": 1}',
    b'"x"',
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
    limit=st.sampled_from([8, 24, 1000]),
)
def test_any_chunking_of_any_input_gives_the_same_results(parts, cuts, limit):
    data = b"".join(parts)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert chunked(chunks, limit, exact=True) == whole(data, limit, exact=True)


def client_hello() -> bytes:
    """The first bytes a TLS client sends: its ClientHello record."""
    import ssl

    context = ssl.create_default_context()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_tls_client_on_the_plain_port_is_told_the_server_does_not_use_tls():
    # Its first reply said "se esperaba un valor", which tells someone who
    # reads it (or the log) nothing about TLS.
    # Without telnet's IAC (0xFF), which its random bytes may hold: what follows
    # one is telnet's (IAC SB would swallow the rest), and this test is not about that.
    hello = client_hello().replace(b"\xff", b"\xfe") + b'\n{"a": 1}'
    assert hello[:2] == b"\x16\x03"
    first = Decoder().feed(hello)[0]
    assert isinstance(first, RequestError) and first.code == JSON_INVALIDO, first
    assert "TLS" in first.mensaje and "no usa TLS" in first.mensaje, first.mensaje
    # However the bytes come, and then as after any error: its line dropped, reading goes on.
    assert bytewise(hello) == whole(hello) and whole(hello)[-1] == {"a": 1}
    assert chunked([hello[:1], hello[1:]], exact=True) == whole(hello, exact=True)
    # Only the connection's first byte: the same byte later is ordinary bad input.
    later = Decoder().feed(b'{"a": 1}\n' + hello)[1]
    assert isinstance(later, RequestError) and "TLS" not in later.mensaje, later.mensaje
