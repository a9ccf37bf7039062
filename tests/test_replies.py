"""`replies.encode_line`: every reply one line of JSON, an order's `resultado`
(a `domain.RawJSON`, its stored text) spliced in without being parsed."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pedidos.domain import RawJSON, Receipt
from pedidos.protocol.replies import REFERENCIA_EN_USO, encode_line, order_ack

# JSON values, with the characters a reply must escape (NUL, line breaks, quotes).
TEXT = st.text(alphabet=st.sampled_from(["a", "ñ", '"', "\\", "\x00", "\n", "\r", "\u2028", " ", "{"]))
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def one_line(reply: dict[str, Any]) -> Any:
    line = encode_line(reply)
    assert line.endswith(b"\n") and line.count(b"\n") == 1, line
    return json.loads(line)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(VALUES, st.sampled_from([None, 0, 2]), VALUES), max_size=4))
def test_a_resultado_as_stored_text_reads_back_as_its_value_on_one_line(orders):
    # Each order: its resultado as stored (compact or pretty-printed, with
    # line breaks between tokens), beside client text of every kind.
    reply = {
        "ok": True,
        "pedidos": [
            {"id": i, "resultado": RawJSON(json.dumps(value, indent=indent)), "cliente": other}
            for i, (value, indent, other) in enumerate(orders)
        ],
    }
    expected = [{"id": i, "resultado": value, "cliente": other} for i, (value, _, other) in enumerate(orders)]
    assert one_line(reply) == {"ok": True, "pedidos": expected}


def test_a_reply_without_stored_text_is_the_plain_encoding():
    reply = {"ok": True, "pedido": {"id": 1, "resultado": None, "cliente": "Ana\x00ñ"}}
    assert encode_line(reply) == (json.dumps(reply, ensure_ascii=False) + "\n").encode()


def test_text_that_looks_like_the_splice_mark_stays_text():
    # A NUL and 32 hex digits, the mark's shape: only the mark drawn at start is replaced.
    lookalike = "\x00" + "0123456789abcdef" * 2
    reply = {"ok": True, "pedido": {"resultado": RawJSON("[1]"), "cliente": lookalike}}
    assert one_line(reply) == {"ok": True, "pedido": {"resultado": [1], "cliente": lookalike}}


def test_stored_text_with_carriage_returns_between_tokens_stays_one_line():
    # Written by another program (CRLF, or a lone CR): a reader that splits
    # lines on CR as well (universal newlines) must see one reply.
    reply = {"ok": True, "pedido": {"resultado": RawJSON('{\r\n "a": [1,\r2]\r\n}')}}
    line = encode_line(reply)
    assert b"\r" not in line and len(line.decode().splitlines()) == 1, line
    assert json.loads(line) == {"ok": True, "pedido": {"resultado": {"a": [1, 2]}}}


def test_a_referencia_en_uso_refusal_names_the_referencia_and_nothing_of_the_other_order():
    reply = order_ack(Receipt(4711, "listo", False, taken=True, referencia="ana-0001"))
    assert reply["ok"] is False and reply["error"] == REFERENCIA_EN_USO, reply
    assert "'ana-0001'" in reply["mensaje"] and "4711" not in json.dumps(reply), reply
