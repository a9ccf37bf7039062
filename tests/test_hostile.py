"""Hostile input against one real server: each gets its error, nothing is stored.

One `servidor.py` serves the whole module with small limits, so that the
limits are reached quickly. After every test a well-behaved client must still
be served, and every row in the database must be a valid order: whatever was
thrown at the server, nothing invalid or partial was stored.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import LineClient, ServerProcess, listed, rss_kib, running_server, wait_for

MAX_REQUEST = 16 * 1024
MAX_CONNECTIONS = 32
IDLE_TIMEOUT = 3
MIB = 1024 * 1024

IAC_IP_DO_TM = b"\xff\xf4\xff\xfd\x06"  # what telnet sends for Ctrl-C
WONT_TM = b"\xff\xfc\x06"  # IAC WONT TIMING-MARK
GOOD = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}


def line(request: dict) -> bytes:
    return json.dumps(request, ensure_ascii=False).encode("utf-8") + b"\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("hostile"),
        "--workers",
        "1",
        "--work-time",
        "0",
        "--max-request-bytes",
        str(MAX_REQUEST),
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--idle-timeout",
        str(IDLE_TIMEOUT),
        "--log-level",  # a test waits for the line that says its connection was closed as idle
        "debug",
    ) as server:
        yield server


@dataclass
class Expect:
    stored: int = 0  # valid orders the test means to store


def valid_row(row: dict) -> bool:
    items = row["productos"]
    cliente, direccion, referencia, estado = (
        row["cliente"],
        row["direccion"],
        row["referencia"],
        row["estado"],
    )

    def text(value: object, limit: int) -> bool:
        return isinstance(value, str) and value == value.strip() and 1 <= len(value) <= limit

    return (
        text(cliente, 200)
        and isinstance(items, list)
        and 1 <= len(items) <= 100
        and all(text(item, 200) for item in items)
        and text(direccion, 500)
        and (referencia is None or text(referencia, 100))
        and estado in ("pendiente", "en proceso", "listo", "cancelado", "fallido")
    )


def count(server: ServerProcess) -> int:
    with LineClient("127.0.0.1", server.port) as client:
        return sum(client.ask({"accion": "estadisticas"})["estados"].values())


@pytest.fixture(autouse=True)
def still_serving(srv: ServerProcess) -> Iterator[Expect]:
    """After each test: the server is up, serves a well-behaved client, and stored
    exactly what the test meant, all of it valid."""
    before = count(srv)
    expect = Expect()
    yield expect
    assert srv.proc.poll() is None, srv.log
    # The well-behaved client may have to wait for a slot if the test filled them all.
    client = wait_for(lambda: _greeted(srv), timeout=IDLE_TIMEOUT * 4)
    with client:
        ack = client.ask(GOOD)
        assert ack["ok"], ack
        done = client.ask({"accion": "esperar", "id": ack["id"], "timeout": 20})
        assert done["ok"] and done["pedido"]["estado"] == "listo", done
    assert count(srv) == before + expect.stored + 1
    rows = listed(srv.port)
    assert all(valid_row(row) for row in rows), [row for row in rows if not valid_row(row)]
    assert "Traceback" not in srv.log


def _greeted(server: ServerProcess) -> LineClient | None:
    client = LineClient("127.0.0.1", server.port)
    if client.greeting.get("ok"):
        return client
    client.close()
    return None


def reply_or_close(sock: socket.socket, timeout: float = 15) -> dict | None:
    """The next reply line, or None if the server closed the connection."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


def closed(sock: socket.socket, timeout: float = 15) -> bool:
    """True once the server closes: EOF (or a reset) and no more replies."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def send_until_answered(sock: socket.socket, piece: bytes, limit: int) -> int:
    """Send `piece` again and again until the server answers (or `limit` bytes went):
    how many bytes were sent."""
    sent = 0
    sock.setblocking(False)
    try:
        while sent < limit:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
    finally:
        sock.setblocking(True)
    return sent


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    assert reply_or_close(sock)["ok"]  # the greeting
    return sock


# --- size ----------------------------------------------------------------------------------


def test_request_over_the_limit_is_refused_while_still_arriving(srv):
    with connect(srv) as sock:
        sock.sendall(b'{"cliente": "')
        # An endless string: the refusal must come once the limit is passed,
        # without waiting for the end of the request.
        sent = send_until_answered(sock, b"a" * 1024, limit=64 * MIB)
        assert sent < 4 * MIB
        reply = reply_or_close(sock)
        assert reply is not None and reply["error"] == "demasiado_grande", reply
        assert closed(sock)


def test_complete_request_over_the_limit_is_refused_and_the_connection_closed(srv):
    with connect(srv) as sock:
        big = dict(GOOD, direccion="x" * MAX_REQUEST)
        sock.sendall(line(big))
        reply = reply_or_close(sock)
        assert reply is not None and reply["error"] == "demasiado_grande", reply
        assert closed(sock)


def test_megabytes_of_garbage_without_newline_get_one_error_and_no_memory(srv, still_serving):
    before = rss_kib(srv.pid)
    with LineClient("127.0.0.1", srv.port, timeout=30) as client:
        for _ in range(8):
            client.send(b"x" * MIB)
        assert rss_kib(srv.pid) - before < 32 * 1024
        client.send(b"\n")
        client.send(line(GOOD))
        refusal = client.read()
        assert refusal["error"] == "json_invalido", refusal
        assert client.read()["ok"]  # one error for the whole line, then service
    assert rss_kib(srv.pid) - before < 32 * 1024
    still_serving.stored = 1


def test_megabytes_of_white_space_then_an_order(srv, still_serving):
    with LineClient("127.0.0.1", srv.port, timeout=30) as client:
        for _ in range(4):
            client.send(b" \r\n\t" * (MIB // 4))
        assert client.ask(GOOD)["ok"]
    still_serving.stored = 1


def test_a_string_that_never_ends_is_refused_at_the_limit(srv):
    before = rss_kib(srv.pid)
    with connect(srv) as sock:
        sock.sendall(b'["')
        send_until_answered(sock, "ñ".encode() * 4096, limit=64 * MIB)
        reply = reply_or_close(sock)
        assert reply is not None and reply["error"] == "demasiado_grande", reply
        assert closed(sock)
    assert rss_kib(srv.pid) - before < 32 * 1024


# --- JSON that is not what it seems --------------------------------------------------------------


def test_nesting_a_million_deep_is_refused_and_the_line_dropped(srv, still_serving):
    with LineClient("127.0.0.1", srv.port, timeout=30) as client:
        client.send(b"[" * 1_000_000)
        client.send(b'{"a":' * 100_000 + b"\n")
        client.send(line(GOOD))
        refusal = client.read()
        assert refusal["error"] == "json_invalido" and "anidamiento" in refusal["mensaje"], refusal
        assert client.read()["ok"]
    still_serving.stored = 1


@pytest.mark.parametrize(
    "raw",
    [
        b'{"accion": "consultar", "id": ' + b"9" * 5000 + b"}",
        b'{"accion": "esperar", "id": 1, "timeout": 0.' + b"1" * 5000 + b"}",
        b"1" * 200_000,
        b'{"accion": "consultar", "id": -' + b"1" * 101 + b"}",
        b'{"accion": "esperar", "id": 1, "timeout": 1e' + b"9" * 5000 + b"}",
    ],
    ids=["id-5000-digits", "fraction-5000-digits", "number-200000-digits", "negative-101", "exponent"],
)
def test_numbers_with_thousands_of_digits_are_refused(srv, raw):
    with LineClient("127.0.0.1", srv.port) as client:
        refusal = client.ask(raw + b"\n")
        assert refusal["error"] == "json_invalido" and "número" in refusal["mensaje"], refusal


def test_a_number_too_large_for_a_float_is_refused_by_range(srv):
    with LineClient("127.0.0.1", srv.port) as client:
        refusal = client.ask(b'{"accion": "esperar", "id": 1, "timeout": 1e400}\n')
        assert refusal["error"] == "mensaje_invalido" and "timeout" in refusal["mensaje"], refusal
        refusal = client.ask(b'{"accion": "consultar", "id": 1e2}\n')
        assert refusal["error"] == "mensaje_invalido" and "'id'" in refusal["mensaje"], refusal


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(srv, constant):
    with LineClient("127.0.0.1", srv.port) as client:
        refusal = client.ask(b'{"accion": "esperar", "id": 1, "timeout": ' + constant + b"}\n")
        assert refusal["error"] == "json_invalido", refusal
        refusal = client.ask(b'{"cliente": "A", "productos": [' + constant + b'], "direccion": "d"}\n')
        assert refusal["error"] == "json_invalido", refusal


@pytest.mark.parametrize(
    "text",
    [
        b'"\xfe"',
        b'"\xc0\xaf"',  # overlong "/"
        b'"\xed\xa0\x80"',  # a surrogate encoded as UTF-8
        b'"\xe2\x82"',  # cut short
        b'"\xf4\x90\x80\x80"',  # past U+10FFFF
        b'"\\ud800"',
        b'"\\udc00"',
        b'"\\udc00\\ud800"',
        b'"a\\ud83d"',
    ],
)
def test_invalid_utf8_and_lone_surrogates_are_refused(srv, still_serving, text):
    order = b'{"cliente": ' + text + b', "productos": ["pan"], "direccion": "Calle 1"}'
    with LineClient("127.0.0.1", srv.port) as client:
        refusal = client.ask(order + b"\n")
        assert refusal["error"] == "json_invalido", refusal
        assert client.ask(line(GOOD))["ok"]  # the connection goes on
    still_serving.stored = 1


def test_a_stray_ff_byte_in_a_line_gets_one_error_for_the_line(srv, still_serving):
    # 0xFF is not UTF-8; it is also telnet's IAC, but only a command byte
    # (0xF0 to 0xFF) after it makes a telnet command.
    still_serving.stored = 1
    with LineClient("127.0.0.1", srv.port) as client:
        client.send(b'{"cliente": "\xff", "productos": ["pan"], "direccion": "Calle 1"}\n')
        client.send(line(GOOD))
        assert client.read()["error"] == "json_invalido"
        assert client.read()["ok"]


def test_a_surrogate_pair_is_a_character_and_is_stored(srv, still_serving):
    with LineClient("127.0.0.1", srv.port) as client:
        ack = client.ask(b'{"cliente": "Ana \\ud83d\\ude00", "productos": ["pan"], "direccion": "d"}')
        assert ack["ok"], ack
        assert client.ask({"accion": "consultar", "id": ack["id"]})["pedido"]["cliente"] == "Ana 😀"
    still_serving.stored = 1


def test_telnet_ctrl_c_is_answered_with_the_mark_and_ends_what_was_typed(srv, still_serving):
    with LineClient("127.0.0.1", srv.port) as client:
        client.send(IAC_IP_DO_TM)
        assert client.file.read(3) == WONT_TM  # telnet shows output again once it has this
        client.send(line(GOOD).rstrip(b"\n"))  # no newline after Ctrl-C: telnet sends none
        assert client.read()["ok"]
        # Half an order, then Ctrl-C: the half is dropped, not completed by what follows.
        client.send(b'{"cliente": "Medio", "productos": ["pan"],' + IAC_IP_DO_TM)
        assert client.file.read(3) == WONT_TM
        client.send(line(GOOD))
        assert client.read()["ok"]
    still_serving.stored = 2
    assert listed(srv.port, cliente="Medio") == []


def test_an_order_cut_off_by_a_disconnect_stores_nothing(srv):
    whole = line(dict(GOOD, cliente="Cortado"))
    for cut in (1, len(whole) // 2, len(whole) - 2):
        for reset in (False, True):
            sock = connect(srv)
            if reset:  # close with RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(whole[:cut])
            sock.close()
    with LineClient("127.0.0.1", srv.port) as client:
        wait_for(lambda: client.ask({"accion": "estadisticas"})["conexiones"] == 1)
    assert listed(srv.port, cliente="Cortado") == []


# --- wrong types everywhere --------------------------------------------------------------------

NOT_TEXT = [1, 1.5, True, [], {}, ["a"], {"a": "b"}]


def order_cases() -> list[tuple[dict, str, str]]:
    """(request, error code, word the message must contain)."""
    cases = []
    for name, limit in (("cliente", 200), ("direccion", 500)):
        for bad in [*NOT_TEXT, None, "", "   \t\n", "x" * (limit + 1)]:
            cases.append((dict(GOOD, **{name: bad}), "pedido_invalido", name))
        cases.append(({k: v for k, v in GOOD.items() if k != name}, "pedido_invalido", name))
    for bad in [None, "pan", 1, True, {}, {"pan": 1}, []]:
        cases.append((dict(GOOD, productos=bad), "pedido_invalido", "productos"))
    for bad in [["p"] * 101]:
        cases.append((dict(GOOD, productos=bad), "pedido_invalido", "productos"))
    for bad in [[1], [None], [""], ["  "], ["x" * 201], [[]], ["pan", {}]]:
        cases.append((dict(GOOD, productos=bad), "pedido_invalido", "producto"))
    cases.append(({k: v for k, v in GOOD.items() if k != "productos"}, "pedido_invalido", "productos"))
    for bad in [*NOT_TEXT, "", "  ", "r" * 101]:
        cases.append((dict(GOOD, referencia=bad), "pedido_invalido", "referencia"))
    for unknown in ("dirección", "id", "estado", "accion_", ""):
        cases.append((dict(GOOD, **{unknown: "x"}), "pedido_invalido", unknown or "''"))
    return cases


def command_cases() -> list[tuple[dict, str, str]]:
    bad_ids = ["1", 1.5, 1.0, 0, -1, True, False, [], {}, [1], 2**63, -(2**63)]
    cases = []
    for accion in ("consultar", "cancelar", "esperar"):
        for bad in bad_ids:
            cases.append(({"accion": accion, "id": bad}, "mensaje_invalido", "id"))
        cases.append(({"accion": accion}, "mensaje_invalido", "id"))
        cases.append(({"accion": accion, "id": None}, "mensaje_invalido", "id"))
        cases.append(({"accion": accion, "id": 1, "extra": 1}, "mensaje_invalido", "extra"))
    for bad in ["1", -1, -0.5, 3600.001, 3601, True, [], {}, [1]]:
        cases.append(({"accion": "esperar", "id": 1, "timeout": bad}, "mensaje_invalido", "timeout"))
    listar = {
        "estado": ["otro", "LISTO", "", 1, True, [], {}, ["listo"]],
        "cliente": [1, True, "", "   ", "x" * 201, [], {}, ["Ana"]],
        "desde_id": [-1, "0", 1.5, True, [], {}, 2**63],
        "limite": [0, 1001, -1, "5", 1.5, True, [], {}],
    }
    for name, values in listar.items():
        for bad in values:
            cases.append(({"accion": "listar", name: bad}, "mensaje_invalido", name))
    cases.append(({"accion": "listar", "id": 1}, "mensaje_invalido", "id"))
    cases.append(({"accion": "estadisticas", "id": 1}, "mensaje_invalido", "id"))
    for bad in [1, 1.5, True, [], {}, None, ["consultar"]]:
        cases.append(({"accion": bad, "id": 1}, "mensaje_invalido", "accion"))
    for unknown in ["borrar", "", "CONSULTAR", " consultar", "consultar\u0000"]:
        cases.append(({"accion": unknown, "id": 1}, "accion_desconocida", "acci"))
    return cases


def test_wrong_types_in_every_field_of_every_request_are_refused(srv):
    cases = order_cases() + command_cases()
    top_level = [[], [GOOD], "pedido", 17, 1.5, True, None]
    with LineClient("127.0.0.1", srv.port) as client:
        client.send(b"".join(line(request) for request, _, _ in cases))
        client.send(b"".join(json.dumps(value).encode() + b"\n" for value in top_level))
        for request, code, word in cases:
            reply = client.read()
            assert reply["ok"] is False and reply["error"] == code, (request, reply)
            assert word.lower() in reply["mensaje"].lower(), (request, reply)
        for value in top_level:
            reply = client.read()
            assert reply["error"] == "mensaje_invalido" and "objeto" in reply["mensaje"], (value, reply)


# --- connections -----------------------------------------------------------------------------


def test_connections_past_the_limit_get_servidor_ocupado_then_a_close(srv):
    held: list[socket.socket] = []
    try:
        refused = None
        for _ in range(MAX_CONNECTIONS + 8):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
            greeting = reply_or_close(sock)
            if greeting is not None and greeting.get("ok"):
                held.append(sock)
                continue
            refused = sock
            break
        assert refused is not None, f"{len(held)} connections accepted"
        with refused:
            assert greeting is not None and greeting["error"] == "servidor_ocupado", greeting
            assert closed(refused)
        assert len(held) <= MAX_CONNECTIONS
        # Those admitted are still served while the server is full.
        held[0].sendall(line({"accion": "estadisticas"}))
        stats = reply_or_close(held[0])
        assert stats is not None and stats["conexiones"] == MAX_CONNECTIONS, stats
    finally:
        for sock in held:
            sock.close()


def test_idle_clients_are_closed(srv):
    silent = connect(srv)
    half = connect(srv)
    half.sendall(b'{"cliente": "Ocioso", "productos": ["pan"]')
    start = time.monotonic()
    with silent, half:
        for sock in (silent, half):
            notice = reply_or_close(sock, timeout=IDLE_TIMEOUT * 5)
            assert notice is not None and notice["error"] == "tiempo_agotado", notice
            assert closed(sock)
    assert time.monotonic() - start >= IDLE_TIMEOUT * 0.9
    assert listed(srv.port, cliente="Ocioso") == []


@pytest.mark.parametrize(
    ("start", "drip"),
    [(b'{"cliente": "', b"a"), (b"", b"\n"), (b"", b" ")],
    ids=["request", "newlines", "spaces"],
)
def test_bytes_that_complete_no_request_do_not_keep_a_connection_open(srv, start, drip):
    # Slowloris: a request sent a byte at a time, or blank lines without end,
    # would otherwise hold its place under --max-connections for ever.
    sock = connect(srv)
    began = time.monotonic()
    data = b""
    with sock:
        sock.sendall(start)
        while b"\n" not in data and time.monotonic() - began < IDLE_TIMEOUT * 5:
            try:
                sock.sendall(drip)
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([sock], [], [], 0.1)  # the server's word, or the next byte
            if readable:
                chunk = sock.recv(4096)
                data += chunk if chunk else b"\n"
    assert b"\n" in data, "still open after five idle timeouts"
    notice = json.loads(data.split(b"\n")[0])
    assert notice["error"] == "tiempo_agotado" and notice["conexion_cerrada"], notice
    assert IDLE_TIMEOUT * 0.9 <= time.monotonic() - began < IDLE_TIMEOUT * 5


def test_an_order_typed_line_by_line_has_the_whole_idle_timeout_from_its_first_byte(srv, still_serving):
    # A person at telnet: silent a while after the greeting, then types an
    # order over several lines; the last comes later than the idle timeout
    # after the greeting, but well within it from the order's first line.
    lines = [
        b"{\r\n",
        b'"cliente": "A mano",\r\n',
        b'"productos": ["pan"],\r\n',
        b'"direccion": "Calle 1"\r\n',
        b"}\r\n",
    ]
    sock = connect(srv)
    with sock:
        greeted = time.monotonic()
        assert select.select([sock], [], [], IDLE_TIMEOUT * 0.6) == ([], [], [])  # nothing comes meanwhile
        for typed in lines:
            sock.sendall(typed)
            assert select.select([sock], [], [], IDLE_TIMEOUT * 0.2)[0] == [] or typed == lines[-1]
        assert time.monotonic() - greeted > IDLE_TIMEOUT
        reply = reply_or_close(sock)
    assert reply is not None and reply["ok"], reply
    still_serving.stored += 1


def flood_without_reading(server: ServerProcess, request: bytes, clients: int) -> tuple[int, int]:
    """`clients` connections send `request` over and over and never read a reply,
    until the server stops reading them (no progress for a second) or 30 s pass:
    (bytes the server let in, peak growth of the server's RSS in KiB)."""
    baseline = peak = rss_kib(server.pid)
    floods = []
    for _ in range(clients):
        flood = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.connect(("127.0.0.1", server.port))
        flood.setblocking(False)
        floods.append(flood)
    piece = request * (64 * 1024 // len(request))
    sent, last_progress = 0, time.monotonic()
    deadline = last_progress + 30
    try:
        while floods and sent < 256 * MIB and time.monotonic() < deadline:
            _, writable, _ = select.select([], floods, [], 0.1)
            peak = max(peak, rss_kib(server.pid))
            for flood in writable:
                try:
                    sent += flood.send(piece)
                    last_progress = time.monotonic()
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):  # closed as idle
                    floods.remove(flood)
                    flood.close()
            if time.monotonic() - last_progress > 1.0:
                break  # the server stopped reading them
        # Everyone else is served meanwhile.
        with LineClient("127.0.0.1", server.port) as other:
            assert other.ask({"accion": "estadisticas"})["ok"]
        peak = max(peak, rss_kib(server.pid))
    finally:
        for flood in floods:
            flood.close()
    return sent, peak - baseline


@pytest.mark.parametrize(
    "request_bytes",
    [
        line({"accion": "consultar", "id": 1}),  # answered after a database read
        line({"accion": "nada"}),  # answered at once, with a longer reply
    ],
    ids=["consultar", "accion_desconocida"],
)
def test_a_client_that_never_reads_is_no_longer_read(srv, request_bytes):
    sent, grown_kib = flood_without_reading(srv, request_bytes, clients=1)
    # Kernel buffers take a few MiB; past them, the server must stop reading.
    assert sent < 32 * MIB, f"the server read {sent / MIB:.0f} MiB from a client that reads nothing"
    assert grown_kib < 32 * 1024, f"server RSS grew {grown_kib / 1024:.0f} MiB"


def test_clients_that_never_read_cost_little_memory_each(srv):
    clients = 2
    sent, grown_kib = flood_without_reading(srv, line({"accion": "consultar", "id": 1}), clients)
    assert sent < 32 * MIB * clients
    # One read (256 KiB of small requests, parked) and a write buffer: a few MiB each.
    assert grown_kib < 12 * 1024 * clients, f"server RSS grew {grown_kib / 1024:.0f} MiB for {clients}"


def store_big_orders(server: ServerProcess, expect: Expect) -> None:
    """40 orders of ~12 KiB: each `listar` of the whole file is then half a MiB or more."""
    big = {**GOOD, "cliente": "Grande", "productos": [f"{i:03d}" + "x" * 196 for i in range(60)]}
    with LineClient("127.0.0.1", server.port) as client:
        client.send(b"".join(line(big) for _ in range(40)))
        for _ in range(40):
            ack = client.read()
            assert ack["ok"], ack
    expect.stored += 40


def test_pipelined_listings_a_client_never_reads_start_no_more_work(srv, still_serving):
    # Hundreds of `listar` fit in one read; were they all begun at once, the
    # server would hold every reply (the write buffer, then the line), hundreds
    # of MiB, for a client that reads none of them.
    store_big_orders(srv, still_serving)
    asks = 200
    baseline = peak = rss_kib(srv.pid)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(line({"accion": "listar", "limite": 1000}) * asks)
        # Until the server's memory has stood still for a second (it is done
        # with what it will do for a client that does not read), 20 s at most.
        last, still_since, deadline = peak, time.monotonic(), time.monotonic() + 20
        while time.monotonic() - still_since < 1.0 and time.monotonic() < deadline:
            now = rss_kib(srv.pid)
            peak = max(peak, now)
            if abs(now - last) > 1024:
                last, still_since = now, time.monotonic()
            time.sleep(0.05)
        grown = (peak - baseline) / 1024
        assert grown < 40, f"server RSS grew {grown:.0f} MiB for one client that reads nothing"
        # Reading again, the client gets every reply, in order.
        sock.settimeout(30)
        replies = sock.makefile("rb")
        assert json.loads(replies.readline())["ok"]  # the greeting
        for _ in range(asks):
            reply = json.loads(replies.readline())
            assert reply["ok"] and len(reply["pedidos"]) >= 40


def test_requests_left_unbegun_by_an_idle_close_are_never_begun(srv, still_serving):
    # Behind the listings that fill its write buffer, the client's orders wait
    # unbegun; it reads nothing till the server closes it as idle, and is told
    # so: they must not be stored once it reads at last (it would resend them).
    store_big_orders(srv, still_serving)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        sock.connect(("127.0.0.1", srv.port))
        parked = {**GOOD, "cliente": "Aparcado"}
        sock.sendall(line({"accion": "listar", "limite": 1000}) * 30 + line(parked) * 50)
        me = f"127.0.0.1:{sock.getsockname()[1]}"
        wait_for(lambda: f"closing {me}: idle" in srv.log, timeout=IDLE_TIMEOUT * 10)
        sock.settimeout(30)
        replies = [json.loads(reply) for reply in sock.makefile("rb")]
    assert replies[-1]["error"] == "tiempo_agotado", replies[-1]
    assert not [r for r in replies if r.get("estado") == "pendiente"]  # no order acknowledged
    assert listed(srv.port, cliente="Aparcado") == []  # nor stored


def test_a_field_given_twice_is_refused_and_changes_nothing(srv, still_serving):
    with LineClient("127.0.0.1", srv.port) as client:
        ack = client.ask(GOOD)
        still_serving.stored = 1
        twice = client.ask(f'{{"accion": "consultar", "id": {ack["id"]}, "accion": "cancelar"}}'.encode())
        assert twice["error"] == "mensaje_invalido" and "'accion'" in twice["mensaje"], twice
        order = client.ask(b'{"cliente": "A", "productos": ["p"], "direccion": "d", "cliente": "B"}')
        assert order["error"] == "pedido_invalido" and "'cliente'" in order["mensaje"], order
        assert client.ask({"accion": "consultar", "id": ack["id"]})["pedido"]["estado"] != "cancelado"
