"""The rapido extra (issue 15): uvloop's event loop and orjson's decoding, optional.

With them or without them (`--sin-rapido`, or not installed) the wire is the same
byte for byte: the decoder gives the same values and the same errors for any input
(a property, against the standard-library path), and two servers, one on each path,
answer the same tricky requests with the same bytes. The server's own tests run on
uvloop too: `pytest --servidor-rapido` (scripts/test does it).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conftest
import pytest
from conftest import ROOT, SERVIDOR, LineClient, clean_environ, running_server, wait_for
from hypothesis import example, given
from hypothesis import strategies as st
from test_properties import LIMIT, SETTINGS, cuts, encoded, interesting_bytes, json_values

from pedidos.protocol import codec
from pedidos.protocol.framing import Decoder
from pedidos.protocol.replies import RequestError, encode_line
from pedidos.protocol.telnet import TelnetReply
from pedidos.protocol.validation import parse_request

# What orjson reads differently from `json`, or refuses where `json` accepts, or
# where the careful path decides: each must give today's reply.
TRICKY = [
    b'{"cliente": "Ana", "productos": ["pan"], "direccion": "C 1", "referencia": "r-\xc3\xa9\xe2\x82\xac"}\n',
    b'{"accion": "consultar", "id": 18446744073709551616}\n',  # orjson: a float
    b'{"accion": "consultar", "id": -9223372036854775809}\n',
    b'{"accion": "consultar", "id": 18446744073709551615}\n',
    b'{"accion": "consultar", "id": 1e400}\n',  # orjson refuses, json: inf
    b'{"accion": "consultar", "id": NaN}\n',
    b'{"accion": "consultar", "id": 1.0}\n',
    b'{"accion": "consultar", "id": -0}\n',
    b'{"cliente": "\\ud800", "productos": ["pan"], "direccion": "C 1"}\n',  # lone surrogate
    b'{"cliente": "\\ud83d\\ude00", "productos": ["pan"], "direccion": "C 1"}\n',  # a pair
    b'{"cliente": "\xed\xa0\x80", "productos": ["pan"], "direccion": "C 1"}\n',  # CESU bytes
    b'{"cliente": "A", "cliente": "B", "productos": ["x"], "direccion": "d"}\n',  # duplicate key
    b'\xef\xbb\xbf{"accion": "estadisticas"}\n',  # a BOM
    b'\x0c{"accion": "estadisticas"}\n',
    b'{"accion": "consultar", "id": ' + b"9" * 120 + b"}\n",
    b"[" * 70 + b"]" * 70 + b"\n",
    b'{"accion": "consultar", "id": 99, "timeout": 1, "timeout": 2}\n',
    b'  {"accion": "consultar",\n "id": 99}\n',  # one request over two lines
    b'{"accion": "consultar", "id": 99} {"accion": "consultar", "id": 98}\n',  # two on one line
    b"7\n",
    b'"texto"\n',
]


def comparable(item: Any) -> tuple[str, str]:
    """A decoder result, and the validation's verdict on it, as exactly comparable text."""
    if isinstance(item, RequestError):
        return ("error", encode_line(item.reply()).decode())
    if isinstance(item, TelnetReply):
        return ("telnet", item.data.hex())
    # repr tells 1 from 1.0 and True, -0.0 from 0.0, and keeps the keys' order.
    try:
        verdict = repr(parse_request(item))
    except RequestError as refused:
        verdict = encode_line(refused.reply()).decode()
    return (repr(item), verdict)


def decoded(chunks: list[bytes], fast: bool) -> tuple[list[tuple[str, str]], bool, bool]:
    codec.use_orjson(fast)
    try:
        decoder = Decoder(LIMIT)
        items = [comparable(item) for chunk in chunks for item in decoder.feed(chunk)]
        return items, decoder.closed, decoder.partial
    finally:
        codec.use_orjson(True)


def test_the_extra_is_installed_for_the_tests():
    # [test] pulls it in: without it the comparisons below would compare json with json.
    assert codec.available() and codec.name() == codec.ORJSON
    import uvloop  # noqa: F401


@pytest.mark.parametrize("line", TRICKY)
def test_tricky_lines_decode_as_with_json(line):
    assert decoded([line], fast=True) == decoded([line], fast=False)


def test_orjson_does_the_common_lines():
    out: list[Any] = []
    lines = (
        b'{"cliente": "Jos\xc3\xa9", "productos": ["pan"], "direccion": "C 1"}\n\n  7 \r\n{"a": [1]}\n{"b"'
    )
    done = codec.decode_lines(lines, out, LIMIT)
    assert out == [{"cliente": "José", "productos": ["pan"], "direccion": "C 1"}, 7, {"a": [1]}]
    assert lines[done:] == b'{"b"'
    codec.use_orjson(False)
    try:
        assert codec.decode_lines(lines, [], LIMIT) == 0 and codec.name() == codec.STDLIB
    finally:
        codec.use_orjson(True)


@SETTINGS
@given(st.data(), interesting_bytes)
@example(None, b'{"id": 18446744073709551616}\n[1]\n')
@example(None, b'{"id": 1e400}\n{"x": "\\udc00"}\n')
def test_both_decoders_give_the_same_values_and_errors(data, stream):
    expected = decoded([stream], fast=False)
    assert decoded([stream], fast=True) == expected
    if data is not None:  # the same cuts for both: a cut may change an error's wording on either path
        chunks = data.draw(cuts(stream))
        assert decoded(chunks, fast=True) == decoded(chunks, fast=False)


@SETTINGS
@given(st.data(), st.lists(json_values, min_size=1, max_size=6))
def test_lines_of_values_decode_the_same(data, values):
    stream = b"".join(data.draw(encoded(value)) + b"\n" for value in values)
    assert decoded([stream], fast=True) == decoded([stream], fast=False)


# --- the server on each path ----------------------------------------------------------------


@contextlib.contextmanager
def server_on(tmp_path: Path, rapido: bool) -> Iterator[conftest.ServerProcess]:
    folder = tmp_path / ("rapido" if rapido else "estandar")
    folder.mkdir()
    mode = conftest.SERVER_MODE[:]
    conftest.SERVER_MODE[:] = [] if rapido else ["--sin-rapido"]
    try:
        with running_server(folder, "--work-time", "0", "--workers", "1") as srv:
            yield srv
    finally:
        conftest.SERVER_MODE[:] = mode


def raw_replies(port: int, lines: list[bytes]) -> list[bytes]:
    """Each line sent alone, and the raw bytes of its replies (a line may hold two requests)."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock, sock.makefile("rb") as f:
        f.readline()  # greeting
        for line in lines:
            sock.sendall(line)
            expected = 2 if line.count(b'"accion"') == 2 else 1
            replies.append(b"".join(f.readline() for _ in range(expected)))
    return replies


def test_the_wire_is_the_same_byte_for_byte_with_and_without_the_extra(tmp_path):
    with server_on(tmp_path, rapido=True) as fast, server_on(tmp_path, rapido=False) as plain:
        assert "loop uvloop, JSON orjson" in fast.ready_line()
        assert "loop asyncio, JSON json" in plain.ready_line()
        assert raw_replies(fast.port, TRICKY) == raw_replies(plain.port, TRICKY)
        # Processed by the workers the same way too.
        for srv in (fast, plain):
            with LineClient("127.0.0.1", srv.port) as c:
                wait_for(lambda c=c: c.ask({"accion": "consultar", "id": 1})["pedido"]["estado"] == "listo")


def test_without_the_packages_the_standard_library_serves(tmp_path):
    # As on a bare Python: uvloop and orjson cannot be imported at all.
    code = (
        "import sys; sys.modules['uvloop'] = None; sys.modules['orjson'] = None; "
        "sys.argv[0] = 'servidor.py'; from pedidos.server.cli import main; sys.exit(main())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--db", str(tmp_path / "p.db"), "--port", "0", "--work-time", "0"],
        cwd=ROOT,
        env=clean_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = next(line for line in proc.stdout if " ready: " in line or "Traceback" in line)
        assert "loop asyncio, JSON json" in ready, ready
        port = conftest.ready_addresses(ready)[0][1]
        with LineClient("127.0.0.1", port) as c:
            reply = c.ask(b'{"cliente": "Ana", "productos": ["pan"], "direccion": "C 1"}\n')
            assert reply == {"ok": True, "id": 1, "estado": "pendiente"}
            assert c.ask(b'{"accion": "consultar", "id": 18446744073709551616}\n')["ok"] is False
    finally:
        proc.terminate()
        assert proc.wait(40) == 0


def test_sin_rapido_is_in_the_help():
    out = subprocess.run(
        [sys.executable, str(SERVIDOR), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environ(),
    ).stdout
    assert "--sin-rapido" in out and "pedidos[rapido]" in out
