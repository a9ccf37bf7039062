"""The rapido extra (issue 15): uvloop's event loop, optional.

With it or without it (`--sin-rapido`, or not installed) the wire is the same byte for
byte: two servers, one on each loop, answer the same tricky requests with the same
bytes. The server's own tests run on uvloop too: `pytest --servidor-rapido`
(scripts/test does it for the contract, hardening, fault and hostile tests).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import conftest
from conftest import ROOT, SERVIDOR, LineClient, clean_environ, running_server, wait_for

# Requests of every kind and every way of being wrong: each must get today's reply.
TRICKY = [
    b'{"cliente": "Ana", "productos": ["pan"], "direccion": "C 1", "referencia": "r-\xc3\xa9\xe2\x82\xac"}\n',
    b'{"accion": "consultar", "id": 18446744073709551616}\n',
    b'{"accion": "consultar", "id": -9223372036854775809}\n',
    b'{"accion": "consultar", "id": 1e400}\n',
    b'{"accion": "consultar", "id": NaN}\n',
    b'{"accion": "consultar", "id": 1.0}\n',
    b'{"cliente": "\\ud800", "productos": ["pan"], "direccion": "C 1"}\n',  # lone surrogate
    b'{"cliente": "\\ud83d\\ude00", "productos": ["pan"], "direccion": "C 1"}\n',  # a pair
    b'{"cliente": "\xed\xa0\x80", "productos": ["pan"], "direccion": "C 1"}\n',  # CESU bytes
    b'{"cliente": "A", "cliente": "B", "productos": ["x"], "direccion": "d"}\n',  # duplicate key
    b'\xef\xbb\xbf{"accion": "estadisticas"}\n',  # a BOM
    b'{"accion": "consultar", "id": ' + b"9" * 120 + b"}\n",
    b"[" * 70 + b"]" * 70 + b"\n",
    b'  {"accion": "consultar",\n "id": 99}\n',  # one request over two lines
    b'{"accion": "consultar", "id": 99} {"accion": "consultar", "id": 98}\n',  # two on one line
    b"7\n",
]


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


def test_uvloop_is_installed_for_the_tests():
    # [test] pulls it in: without it the comparisons below would compare asyncio with asyncio.
    import uvloop  # noqa: F401


def test_the_wire_is_the_same_byte_for_byte_on_either_loop(tmp_path):
    with server_on(tmp_path, rapido=True) as fast, server_on(tmp_path, rapido=False) as plain:
        assert "loop uvloop," in fast.ready_line()
        assert "loop asyncio," in plain.ready_line()
        assert raw_replies(fast.port, TRICKY) == raw_replies(plain.port, TRICKY)
        # Processed by the workers the same way too.
        for srv in (fast, plain):
            with LineClient("127.0.0.1", srv.port) as c:
                wait_for(lambda c=c: c.ask({"accion": "consultar", "id": 1})["pedido"]["estado"] == "listo")


def test_without_uvloop_the_standard_library_serves(tmp_path):
    # As on a bare Python: uvloop cannot be imported at all.
    code = (
        "import sys; sys.modules['uvloop'] = None; "
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
        assert "loop asyncio," in ready, ready
        port = conftest.ready_addresses(ready)[0][1]
        with LineClient("127.0.0.1", port) as c:
            reply = c.ask(b'{"cliente": "Ana", "productos": ["pan"], "direccion": "C 1"}\n')
            assert reply == {"ok": True, "id": 1, "estado": "pendiente"}
    finally:
        proc.terminate()
        assert proc.wait(40) == 0


def test_sin_rapido_is_in_the_help():
    help_text = subprocess.run(
        [sys.executable, str(SERVIDOR), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environ(),
    ).stdout
    assert "--sin-rapido" in help_text and "pip install -e '.[rapido]'" in help_text
