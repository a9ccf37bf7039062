"""The contract (/work/shared/PROTOCOL.md), end to end, against the real
`servidor.py` on loopback: connection, framing, replies, every command and
error code, order states, shutdown and restart, and the startup errors.

Most tests share one quick server (`--work-time 0`) and so never count on ids
or totals, only on orders of their own (a unique `cliente`). Tests that stop,
restart or configure a server start their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ORDER_KEYS,
    ORIGINAL_ORDER,
    LineClient,
    ServerProcess,
    database_held,
    listed,
    running_server,
    storage_of,
    stored_orders,
    wait_for,
)

from pedidos.domain import NewOrder
from pedidos.server.preflight import listen_addresses

ESTADOS = {"pendiente", "en proceso", "listo", "cancelado", "fallido"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
LIMIT = 64 * 1024


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One quick server (orders done at once, 2 workers) for the tests that only talk to it,
    on each backend: a SQLite file, and a database of its own on the test PostgreSQL."""
    folder = tmp_path_factory.mktemp("contract")
    if request.param == "sqlite":
        with running_server(folder, "--work-time", "0") as srv:
            yield srv
        return
    databases = request.getfixturevalue("pg_databases")
    url = databases.create()
    try:
        with running_server(folder, "--work-time", "0", db=url) as srv:  # type: ignore[arg-type]
            yield srv
    finally:
        databases.drop(url)


@contextlib.contextmanager
def client(srv: ServerProcess, host: str = "127.0.0.1") -> Iterator[LineClient]:
    c = LineClient(host, srv.port)
    try:
        yield c
    finally:
        c.close()


def unique(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def order(cliente: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "cliente": cliente or unique(),
        "productos": ["pan", "agua"],
        "direccion": "Av. Siempre Viva 742",
        **extra,
    }


def assert_error(reply: dict, code: str, *names: str) -> dict:
    assert reply["ok"] is False, reply
    assert reply["error"] == code, reply
    assert isinstance(reply["mensaje"], str) and reply["mensaje"].strip(), reply
    for name in names:
        assert name in reply["mensaje"], f"{reply['mensaje']!r} does not name {name!r}"
    return reply


def assert_order(pedido: dict) -> dict:
    assert set(pedido) >= set(ORDER_KEYS), pedido
    assert isinstance(pedido["id"], int) and pedido["id"] > 0
    assert pedido["estado"] in ESTADOS
    assert TIMESTAMP.match(pedido["fecha_recibido"]), pedido
    for name in ("fecha_inicio", "fecha_fin"):
        assert pedido[name] is None or TIMESTAMP.match(pedido[name]), pedido
    assert isinstance(pedido["intentos"], int)
    return pedido


def at_eof(c: LineClient, timeout: float = 15.0) -> bool:
    """True once the server has closed the connection (EOF or reset), nothing else sent."""
    c.sock.settimeout(timeout)
    try:
        rest = c.file.read()
    except ConnectionResetError:
        return True
    assert rest == b"", f"unexpected bytes before the close: {rest[:200]!r}"
    return True


def padded_order(size: int, cliente: str) -> bytes:
    """A valid order of exactly `size` bytes: white space inside counts."""
    body = json.dumps(order(cliente)).encode()[:-1]
    return body + b" " * (size - len(body) - 1) + b"}"


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def tcp_sockets(port: int) -> list[dict[str, Any]]:
    """Sockets with local `port`, from /proc/net/tcp and tcp6 (one line each, kernel's view)."""
    found = []
    for family, path in (("v4", "/proc/net/tcp"), ("v6", "/proc/net/tcp6")):
        with contextlib.suppress(FileNotFoundError), open(path) as table:
            for line in list(table)[1:]:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                address, local_port = local.split(":")
                if int(local_port, 16) != port:
                    continue
                remote_port = int(remote.split(":")[1], 16)
                rx = int(fields[4].split(":")[1], 16)
                found.append(
                    {
                        "family": family,
                        "address": _address(address),
                        "listening": state == "0A",
                        "remote_port": remote_port,
                        "rx_queue": rx,
                    }
                )
    return found


def listeners(port: int) -> set[tuple[str, str]]:
    return {(s["family"], s["address"]) for s in tcp_sockets(port) if s["listening"]}


def server_read_everything(srv: ServerProcess, c: LineClient) -> bool:
    """True once the server has read all the client sent on connection `c`."""
    client_port = c.sock.getsockname()[1]
    ends = [s for s in tcp_sockets(srv.port) if s["remote_port"] == client_port]
    return bool(ends) and all(s["rx_queue"] == 0 for s in ends)


def start_expecting_failure(tmp_path: Path, *args: str, db: Path | None = None) -> ServerProcess:
    """Start a server that must not start; if it does start, stop it (by pid) and fail."""
    port = [] if "--port" in args else ["--port", "0"]
    srv = ServerProcess([*args, *port, "--work-time", "0"], db or tmp_path / "pedidos.db", tmp_path)
    try:
        wait_for(lambda: srv.proc.poll() is not None or " ready: " in srv.log, timeout=30)
        if srv.proc.poll() is None:
            srv.stop()
            raise AssertionError(f"the server started:\n{srv.log}")
        srv._reader.join(5)
        return srv
    finally:
        srv.kill()


def assert_one_clear_error(srv: ServerProcess, *words: str) -> None:
    assert srv.proc.returncode == 1, srv.log
    assert "Traceback" not in srv.log, srv.log
    errors = [line for line in srv.lines if " ERROR " in line]
    assert len(errors) == 1, srv.log
    for word in words:
        assert word in errors[0], srv.log


# --- §1 connection ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_greeting_on_both_families(shared, host):
    with client(shared, host) as c:
        g = c.greeting
        assert g["ok"] is True and g["servidor"] == "pedidos" and g["protocolo"] == 1
        assert "cliente" in g["mensaje"] and "productos" in g["mensaje"]  # what to paste
        ack = c.ask(order())
        assert ack["ok"] is True and ack["estado"] == "pendiente"


def test_default_localhost_is_two_sockets_one_per_family(shared):
    port = shared.port
    assert sorted(shared.addresses) == sorted([("127.0.0.1", port), ("::1", port)])
    assert any(line.endswith(f"listening on 127.0.0.1:{port}") for line in shared.lines)
    assert any(line.endswith(f"listening on [::1]:{port}") for line in shared.lines)
    # the kernel's view: an IPv4 socket on 127.0.0.1 and an IPv6 socket on ::1, nothing wider
    assert listeners(port) == {("v4", "127.0.0.1"), ("v6", "::1")}


@pytest.mark.parametrize("name", ["LOCALHOST", "localhost.", "LocalHost"])
def test_localhost_however_written_is_both_families(name):
    # getaddrinfo("LOCALHOST") gives ::1 alone on some machines, 127.0.0.1 alone on others
    assert listen_addresses(name, 8888) == [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


def test_host_any_is_v6_only_wildcard_and_v4_wildcard(tmp_path):
    with running_server(tmp_path, "--host", "::", "--work-time", "0") as srv:
        port = srv.port
        assert any(line.endswith(f"listening on [::]:{port}") for line in srv.lines), srv.log
        assert any(line.endswith(f"listening on 0.0.0.0:{port}") for line in srv.lines), srv.log
        # two sockets on one port: the IPv6 one must be v6-only, or the IPv4 bind would fail
        assert listeners(port) == {("v6", "::"), ("v4", "0.0.0.0")}
        for host in ("127.0.0.1", "::1"):
            with client(srv, host) as c:
                assert c.greeting["ok"] is True
                assert c.ask(order())["ok"] is True


@pytest.mark.parametrize("hosts", [("::", "127.0.0.1"), ("localhost", "0.0.0.0", "::")])
def test_an_address_a_wildcard_covers_is_not_bound_twice(tmp_path, hosts):
    # 0.0.0.0 already takes 127.0.0.1 (and [::] takes ::1): binding both failed the start with
    # "already in use by another program", the other program being this server itself
    args = [arg for host in hosts for arg in ("--host", host)]
    with running_server(tmp_path, *args, "--work-time", "0") as srv:
        assert listeners(srv.port) == {("v6", "::"), ("v4", "0.0.0.0")}
        assert any("127.0.0.1 is covered by 0.0.0.0" in line for line in srv.lines), srv.log
        for host in ("127.0.0.1", "::1"):
            with client(srv, host) as c:
                assert c.ask(order())["ok"] is True


def test_connection_stays_open_for_many_requests(shared):
    with client(shared) as c:
        for _ in range(20):
            assert c.ask({"accion": "estadisticas"})["ok"] is True


def test_servidor_ocupado_past_max_connections(tmp_path):
    with running_server(tmp_path, "--max-connections", "2", "--work-time", "0") as srv:
        first, second = LineClient("127.0.0.1", srv.port), LineClient("::1", srv.port)
        try:
            with client(srv) as third:
                assert_error(third.greeting, "servidor_ocupado")
                assert at_eof(third)
            assert second.ask({"accion": "estadisticas"})["conexiones"] == 2
            first.close()

            def admitted() -> bool:
                with client(srv, "::1") as again:
                    return again.greeting["ok"] is True

            wait_for(admitted)  # a slot frees once a client leaves
        finally:
            first.close()
            second.close()


def test_idle_connection_is_closed(tmp_path):
    with running_server(tmp_path, "--idle-timeout", "1", "--work-time", "0", "--log-level", "debug") as srv:
        with client(srv) as idle:
            assert idle.ask({"accion": "estadisticas"})["ok"] is True
            notice = idle.read()  # the reason, then the close
            assert_error(notice, "tiempo_agotado")
            assert "1 s" in notice["mensaje"] and notice["conexion_cerrada"] is True
            assert at_eof(idle)
        wait_for(lambda: "idle" in srv.log)


# --- §2 framing ---------------------------------------------------------------------------------


def test_original_client_one_object_no_newline(shared):
    """The original client: read the greeting, send one JSON object (ASCII-escaped,
    no newline after it), read one reply."""
    with socket.create_connection(("127.0.0.1", shared.port), timeout=15) as sock:
        greeting = b""
        while not greeting.endswith(b"\n"):
            chunk = sock.recv(1024)
            assert chunk, "closed before the greeting"
            greeting += chunk
        assert json.loads(greeting)["servidor"] == "pedidos"
        sock.sendall(json.dumps({"cliente": "Juan Pérez", "productos": ["pan"], "direccion": "d"}).encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(1024)
            assert chunk, "closed before the reply"
            reply += chunk
    ack = json.loads(reply)
    assert ack["ok"] is True and ack["estado"] == "pendiente"
    with client(shared) as c:
        assert c.ask({"accion": "consultar", "id": ack["id"]})["pedido"]["cliente"] == "Juan Pérez"


def test_client_that_half_closes_after_sending_gets_its_replies(shared):
    with client(shared) as c:
        c.send(json.dumps(order()) + json.dumps({"accion": "estadisticas"}))
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read()["estado"] == "pendiente"
        assert c.read()["ok"] is True
        assert at_eof(c)


def test_a_request_cut_short_by_the_clients_end_gets_json_invalido_and_stores_nothing(shared):
    cliente = unique("cut")
    with client(shared) as c:
        c.send(json.dumps(order(cliente=cliente))[:-1])  # all but its closing brace
        c.sock.shutdown(socket.SHUT_WR)
        assert_error(c.read(), "json_invalido", "terminó a mitad de una petición")
        assert at_eof(c)
    assert listed(shared.port, cliente=cliente) == []


def test_pretty_printed_order_pasted_with_crlf(shared):
    with client(shared, "::1") as c:
        ack = c.ask(ORIGINAL_ORDER.replace("\n", "\r\n"))
        assert ack["ok"] is True
        done = c.ask({"accion": "esperar", "id": ack["id"], "timeout": 20})["pedido"]
        assert (done["cliente"], done["productos"]) == ("Juan Pérez", ["pan", "agua"])


def test_reply_is_one_line_of_utf8_with_non_ascii_as_is(shared):
    with client(shared) as c:
        ack = c.ask(order("Juan Pérez Ñandú"))
        c.send({"accion": "consultar", "id": ack["id"]})
        line = c.file.readline()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert "Juan Pérez Ñandú".encode() in line
    assert b"\\u00e9" not in line


def test_telnet_ctrl_c_abandons_the_line_and_the_next_is_read(shared):
    with client(shared) as c:
        c.send(b'{"cliente": "A",\r\n  "productos": [')
        wait_for(lambda: server_read_everything(shared, c))
        for byte in b"\xff\xf4\xff\xfd\x06":  # Ctrl-C: IAC IP, IAC DO TIMING-MARK, a byte a read
            c.send(bytes([byte]))
            wait_for(lambda: server_read_everything(shared, c))
        c.send(b'{"accion": "estadisticas"}\r\n')
        # No error for the abandoned request: the timing mark refused, then the reply.
        assert c.file.read(3) == b"\xff\xfc\x06"
        assert c.read()["estados"]


def test_pipelining_fifty_orders_and_commands_in_one_send(shared):
    cliente = unique("pipe")
    orders = [order(cliente, referencia=unique("r")) for _ in range(50)]
    data = "".join(json.dumps(o, ensure_ascii=False) + ("\n" if i % 2 else "") for i, o in enumerate(orders))
    data += json.dumps({"accion": "listar", "cliente": cliente, "limite": 1000}) + "\n"
    data += "not json\n"
    data += '{"accion": "consultar", "id": 0}'
    data += '{"accion": "estadisticas"}'
    data += json.dumps(orders[7])  # a retry of the eighth order
    with client(shared) as c:
        c.send(data)
        acks = [c.read() for _ in orders]
        listed = c.read()
        invalid = c.read()
        bad_id = c.read()
        stats = c.read()
        retry = c.read()
        ids = [a["id"] for a in acks]
        assert all(a["ok"] is True and a["estado"] == "pendiente" for a in acks), acks
        assert ids == sorted(set(ids)), "one id each, in the order sent"
        assert [p["id"] for p in listed["pedidos"]] == ids  # a command sees the orders before it
        assert_error(invalid, "json_invalido")
        assert_error(bad_id, "mensaje_invalido", "id")
        assert stats["ok"] is True and "estados" in stats
        assert retry["id"] == ids[7] and retry["duplicado"] is True
        # fifty esperar and consultar, read back in the order sent
        c.send("".join(json.dumps({"accion": "esperar", "id": i, "timeout": 30}) for i in ids))
        c.send("".join(json.dumps({"accion": "consultar", "id": i}) for i in ids))
        waited = [c.read()["pedido"] for _ in ids]
        looked = [c.read()["pedido"] for _ in ids]
    assert [p["id"] for p in waited] == ids and [p["id"] for p in looked] == ids
    assert {p["estado"] for p in waited} == {"listo"}


def test_request_of_exactly_64_kib_is_accepted(shared):
    cliente = unique("big")
    with client(shared) as c:
        ack = c.ask(padded_order(LIMIT, cliente))
        assert ack["ok"] is True, ack
        assert c.ask({"accion": "consultar", "id": ack["id"]})["pedido"]["cliente"] == cliente


def test_request_over_64_kib_is_demasiado_grande_and_closes(shared):
    cliente = unique("big")
    with client(shared) as c:
        c.send(padded_order(LIMIT + 1, cliente))
        assert_error(c.read(), "demasiado_grande")
        assert at_eof(c)
    with client(shared) as c:  # nothing partial was stored
        assert c.ask({"accion": "listar", "cliente": cliente})["pedidos"] == []


def test_demasiado_grande_while_the_request_is_still_arriving(shared):
    """No closing brace ever comes: the server answers once the limit is crossed."""
    cliente = unique("big")
    with client(shared) as c:
        start = b'{"cliente": "' + cliente.encode() + b'", "direccion": "'
        c.send(start + b"x" * (LIMIT + 1 - len(start)))
        assert_error(c.read(), "demasiado_grande")
        assert at_eof(c)
    with client(shared) as c:
        assert c.ask({"accion": "listar", "cliente": cliente})["pedidos"] == []


# --- §3, §4, §5: replies, orders and commands ---------------------------------------------------


def test_new_order_reply_and_the_stored_row(shared):
    cliente = unique("  Ana ")
    with client(shared) as c:
        ack = c.ask(
            {
                "cliente": cliente,
                "productos": ["  pan ", "agua"],
                "direccion": " Calle 1 ",
                "referencia": None,
            }
        )
        assert set(ack) == {"ok", "id", "estado"} and ack["ok"] is True and ack["estado"] == "pendiente"
        pedido = assert_order(c.ask({"accion": "consultar", "id": ack["id"]})["pedido"])
    assert pedido["cliente"] == cliente.strip()  # stored trimmed
    assert pedido["productos"] == ["pan", "agua"] and pedido["direccion"] == "Calle 1"
    assert pedido["referencia"] is None and pedido["id"] == ack["id"]


def test_order_reaches_listo_with_its_times_and_worker(shared):
    with client(shared) as c:
        ack = c.ask(order())
        done = c.ask({"accion": "esperar", "id": ack["id"], "timeout": 30})
    assert done["ok"] is True
    pedido = assert_order(done["pedido"])
    assert pedido["estado"] == "listo"
    assert pedido["worker"] in (1, 2)  # --workers 2 by default
    assert pedido["intentos"] == 0
    recibido, inicio, fin = (
        datetime.fromisoformat(pedido[k]) for k in ("fecha_recibido", "fecha_inicio", "fecha_fin")
    )
    assert recibido <= inicio <= fin


def test_esperar_on_a_finished_order_answers_at_once(shared):
    with client(shared) as c:
        ack = c.ask(order())
        c.ask({"accion": "esperar", "id": ack["id"], "timeout": 30})
        again = c.ask({"accion": "esperar", "id": ack["id"], "timeout": 0})
        assert again["ok"] is True and again["pedido"]["estado"] == "listo"


def test_referencia_retry_gets_the_same_id(shared):
    ref = unique("ref")
    with client(shared) as c:
        first_order = order(referencia=ref)
        first = c.ask(first_order)
        assert first["ok"] is True and "duplicado" not in first
    with client(shared, "::1") as c:  # the retry comes on a new connection, as after a lost reply
        retry = order(referencia=f"  {ref} ")
        retry.update(cliente=f" {first_order['cliente']}  ", productos=["pan ", " agua"])  # same once trimmed
        second = c.ask(retry)
        assert second["ok"] is True and second["id"] == first["id"] and second["duplicado"] is True
        assert second["estado"] in ESTADOS
        stored = c.ask({"accion": "consultar", "id": first["id"]})["pedido"]
        assert stored["referencia"] == ref
        c.ask({"accion": "esperar", "id": first["id"], "timeout": 30})
        third = c.ask(first_order)
        assert (third["id"], third["estado"], third["duplicado"]) == (first["id"], "listo", True)
        other = c.ask(order(unique("other"), referencia=ref))  # a different order: not a retry
        assert (
            other["ok"] is False
            and other["error"] == "referencia_en_uso"
            and "referencia" in other["mensaje"]
        )


def test_listar_filters_and_order(shared):
    cliente = unique("list")
    with client(shared) as c:
        ids = [c.ask(order(cliente))["id"] for _ in range(5)]
        for i in ids:
            c.ask({"accion": "esperar", "id": i, "timeout": 30})
        every = c.ask({"accion": "listar", "cliente": cliente})
        assert every["ok"] is True and [p["id"] for p in every["pedidos"]] == ids
        for p in every["pedidos"]:
            assert_order(p)
        page = c.ask({"accion": "listar", "cliente": cliente, "desde_id": ids[1], "limite": 2})
        assert [p["id"] for p in page["pedidos"]] == ids[2:4]
        listos = c.ask({"accion": "listar", "estado": "listo", "cliente": f" {cliente} "})
        assert [p["id"] for p in listos["pedidos"]] == ids
        assert c.ask({"accion": "listar", "estado": "cancelado", "cliente": cliente})["pedidos"] == []
        mixed = c.ask({"accion": "listar", "desde_id": ids[0] - 1, "limite": 1000})["pedidos"]
        assert [p["id"] for p in mixed] == sorted(p["id"] for p in mixed)
        assert all(p["id"] > ids[0] - 1 for p in mixed)
        assert len(c.ask({"accion": "listar", "limite": 1})["pedidos"]) == 1


def test_estadisticas_shape(shared):
    with client(shared) as c, client(shared, "::1"):
        stats = c.ask({"accion": "estadisticas"})
    assert stats["ok"] is True
    assert set(stats["estados"]) == ESTADOS
    assert all(isinstance(n, int) and n >= 0 for n in stats["estados"].values())
    assert stats["workers"] == 2
    assert stats["conexiones"] >= 2
    assert isinstance(stats["esperando"], int) and stats["esperando"] >= 0
    assert stats["en_cola"] == stats["estados"]["pendiente"]
    assert isinstance(stats["uptime_s"], (int, float)) and stats["uptime_s"] >= 0


@pytest.mark.parametrize(
    ("request_", "code", "names"),
    [
        (b"hola\n", "json_invalido", ()),
        (b'{"cliente": "\xe9"}\n', "json_invalido", ()),
        (b"NaN\n", "json_invalido", ()),
        (b'"\\ud800"\n', "json_invalido", ()),
        (b"9" * 1000 + b"\n", "json_invalido", ()),
        (b"[1, 2]", "mensaje_invalido", ()),
        (b'"pedido"\n', "mensaje_invalido", ()),
        ({"accion": 5}, "mensaje_invalido", ("accion",)),
        ({"accion": "consultar"}, "mensaje_invalido", ("id",)),
        ({"accion": "consultar", "id": 0}, "mensaje_invalido", ("id",)),
        ({"accion": "consultar", "id": -1}, "mensaje_invalido", ("id",)),
        ({"accion": "consultar", "id": "1"}, "mensaje_invalido", ("id",)),
        ({"accion": "consultar", "id": True}, "mensaje_invalido", ("id",)),
        ({"accion": "consultar", "id": 2**63}, "mensaje_invalido", ("id",)),
        ({"accion": "consultar", "id": 1, "extra": 1}, "mensaje_invalido", ("extra",)),
        ({"accion": "listar", "limite": 0}, "mensaje_invalido", ("limite",)),
        ({"accion": "listar", "limite": 1001}, "mensaje_invalido", ("limite",)),
        ({"accion": "listar", "estado": "hecho"}, "mensaje_invalido", ("estado",)),
        ({"accion": "esperar", "id": 1, "timeout": 3601}, "mensaje_invalido", ("timeout",)),
        ({"cliente": "A", "productos": ["x"]}, "pedido_invalido", ("direccion",)),
        ({"cliente": " ", "productos": ["x"], "direccion": "d"}, "pedido_invalido", ("cliente",)),
        ({"cliente": "A", "productos": [], "direccion": "d"}, "pedido_invalido", ("productos",)),
        ({"cliente": "A", "productos": "pan", "direccion": "d"}, "pedido_invalido", ("productos",)),
        (
            {"cliente": "A", "productos": ["x"], "dirección": "d"},
            "pedido_invalido",
            ("dirección",),
        ),
        ({"cliente": "x" * 201, "productos": ["x"], "direccion": "d"}, "pedido_invalido", ("cliente",)),
        ({"accion": "borrar", "id": 1}, "accion_desconocida", ("borrar",)),
        ({"accion": "consultar", "id": 2**63 - 1}, "no_encontrado", ()),
        ({"accion": "esperar", "id": 2**63 - 1, "timeout": 1}, "no_encontrado", ()),
        ({"accion": "cancelar", "id": 2**63 - 1}, "no_encontrado", ()),
    ],
)
def test_error_codes_and_the_connection_goes_on(shared, request_, code, names):
    with client(shared) as c:
        reply = c.ask(request_)
        assert_error(reply, code, *names)
        assert set(reply) >= {"ok", "error", "mensaje"}
        assert c.ask({"accion": "estadisticas"})["ok"] is True  # still served


def test_no_cancelable_on_a_finished_order(shared):
    with client(shared) as c:
        ack = c.ask(order())
        c.ask({"accion": "esperar", "id": ack["id"], "timeout": 30})
        reply = assert_error(c.ask({"accion": "cancelar", "id": ack["id"]}), "no_cancelable")
        if "pedido" in reply:  # an extension: the order as it stands
            assert reply["pedido"]["estado"] == "listo"
        assert c.ask({"accion": "consultar", "id": ack["id"]})["pedido"]["estado"] == "listo"


def test_invalid_order_stores_nothing(shared):
    cliente = unique("bad")
    with client(shared) as c:
        assert_error(c.ask(order(cliente, productos=["ok", ""])), "pedido_invalido")
        assert_error(c.ask(order(cliente, extra=1)), "pedido_invalido", "extra")
        assert c.ask({"accion": "listar", "cliente": cliente})["pedidos"] == []


# --- many clients at once -------------------------------------------------------------------------


def test_two_hundred_concurrent_clients_on_both_families(shared):
    cliente = unique("crowd")

    async def crowd() -> tuple[list[dict], dict]:
        async def connect(host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection(host, shared.port)
            greeting = json.loads(await reader.readline())
            assert greeting["ok"] is True
            return reader, writer

        conns = await asyncio.wait_for(
            asyncio.gather(*(connect("127.0.0.1" if i % 2 else "::1") for i in range(200))), 60
        )
        try:
            # all 200 open at once: the server counts them
            reader, writer = await connect("127.0.0.1")
            writer.write(b'{"accion": "estadisticas"}')
            stats = json.loads(await asyncio.wait_for(reader.readline(), 30))
            writer.close()

            async def one(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict:
                writer.write(json.dumps(order(cliente, referencia=f"{cliente}-{i}")).encode())
                return json.loads(await reader.readline())

            acks = await asyncio.wait_for(
                asyncio.gather(*(one(i, r, w) for i, (r, w) in enumerate(conns))), 60
            )
        finally:
            for _, writer in conns:
                writer.close()
        return acks, stats

    acks, stats = asyncio.run(crowd())
    assert stats["conexiones"] >= 201
    assert all(a["ok"] is True and a["estado"] == "pendiente" for a in acks), acks
    ids = [a["id"] for a in acks]
    assert len(set(ids)) == 200
    with client(shared) as c:
        c.send("".join(json.dumps({"accion": "esperar", "id": i, "timeout": 60}) for i in ids))
        done = [c.read() for _ in ids]
        listed = c.ask({"accion": "listar", "cliente": cliente, "limite": 1000})["pedidos"]
    assert [d["pedido"]["id"] for d in done] == ids
    assert {d["pedido"]["estado"] for d in done} == {"listo"}
    assert sorted(p["id"] for p in listed) == sorted(ids)


# --- §6 states, §8 shutdown and restart -------------------------------------------------------------


def test_states_timeouts_cancel_shutdown_and_restart(tmp_path):
    """One worker, two seconds an order: watch an order go en proceso -> listo,
    time out waiting, cancel, then stop with work in hand and start again."""
    db = tmp_path / "pedidos.db"
    with running_server(tmp_path, "--workers", "1", "--work-time", "2") as srv:
        with client(srv) as c:
            a, b, cc = (c.ask(order())["id"] for _ in range(3))
            # cc waits behind a and b: at least four seconds
            late = assert_error(c.ask({"accion": "esperar", "id": cc, "timeout": 0.2}), "tiempo_agotado")
            assert late["pedido"]["id"] == cc and late["pedido"]["estado"] == "pendiente"
            assert_order(late["pedido"])

            def a_started() -> dict | None:
                pedido = c.ask({"accion": "consultar", "id": a})["pedido"]
                return pedido if pedido["estado"] != "pendiente" else None

            seen = wait_for(a_started, timeout=30)
            assert seen["estado"] == "en proceso", seen  # the order takes 2 s: seen in process
            assert seen["worker"] == 1 and TIMESTAMP.match(seen["fecha_inicio"])
            assert seen["fecha_fin"] is None

            refused = assert_error(c.ask({"accion": "cancelar", "id": a}), "no_cancelable")
            if "pedido" in refused:
                assert refused["pedido"]["estado"] in ("en proceso", "listo")
            cancelled = c.ask({"accion": "cancelar", "id": cc})
            assert cancelled["ok"] is True and cancelled["pedido"]["estado"] == "cancelado"
            assert_error(c.ask({"accion": "cancelar", "id": cc}), "no_cancelable")
            assert c.ask({"accion": "esperar", "id": cc, "timeout": 5})["pedido"]["estado"] == "cancelado"

            done = c.ask({"accion": "esperar", "id": a, "timeout": 30})["pedido"]
            assert done["estado"] == "listo" and done["worker"] == 1
            assert done["fecha_inicio"] == seen["fecha_inicio"] and done["fecha_fin"] is not None

            d, e = (c.ask(order())["id"] for _ in range(2))
            c.send({"accion": "esperar", "id": e, "timeout": 600})
            wait_for(lambda: server_read_everything(srv, c))
            workers = srv.worker_pids()
            assert srv.stop() == 0  # SIGTERM; stop() also checks the workers are gone
            assert not any(Path(f"/proc/{pid}").exists() and _running(pid) for pid in workers)
            # the waiting esperar was answered before the server left
            last = assert_error(c.read(), "tiempo_agotado")
            assert last["pedido"]["id"] == e and last["pedido"]["estado"] in ("pendiente", "en proceso")
        assert "Traceback" not in srv.log

    stored = stored_orders(db)
    rows = {i: o["estado"] for i, o in stored.items()}
    assert rows[a] == "listo" and rows[cc] == "cancelado"
    for order_id in (b, d, e):  # finished, handed back, or never started
        assert rows[order_id] in ("listo", "pendiente")
    assert "en proceso" not in rows.values()
    assert max(o["intentos"] for o in stored.values()) == 0  # a graceful stop is no attempt

    with running_server(tmp_path, "--work-time", "0") as srv, client(srv) as c:
        for order_id in (b, d, e):
            assert c.ask({"accion": "esperar", "id": order_id, "timeout": 30})["pedido"]["estado"] == "listo"


def test_restart_takes_up_pending_and_crashed_orders(tmp_path):
    db = tmp_path / "pedidos.db"
    with storage_of(db) as storage:
        ids = [r.id for r in storage.submit(*[NewOrder(f"c{i}", ("x",), "d") for i in range(5)])]
        storage.worker(1).claim([ids[3]], 1)  # in process when "the machine crashed"
        for _ in range(2):  # two interrupted attempts already
            storage.worker(2).claim([ids[4]], 2)
            storage.hand_back(2, True)
        storage.worker(2).claim([ids[4]], 2)  # and crashed on the third

    with running_server(tmp_path, "--work-time", "0") as srv, client(srv) as c:
        final = [c.ask({"accion": "esperar", "id": i, "timeout": 30})["pedido"] for i in ids]
        assert "in process when the server last stopped" in srv.log
    assert [p["estado"] for p in final] == ["listo", "listo", "listo", "listo", "fallido"]
    assert [p["intentos"] for p in final] == [0, 0, 0, 1, 3]


def test_an_address_that_cannot_be_bound_is_skipped_and_logged(tmp_path):
    # ::2 is not on this machine: as when a family is missing, the server starts on the rest
    with running_server(tmp_path, "--host", "127.0.0.1", "--host", "::2", "--work-time", "0") as srv:
        assert srv.addresses == [("127.0.0.1", srv.port)]
        assert any("cannot listen on [::2]" in line for line in srv.lines), srv.log
        with client(srv) as c:
            assert c.ask(order())["ok"] is True


# --- startup errors ---------------------------------------------------------------------------------


def test_database_in_a_missing_folder_exits_1(tmp_path):
    srv = start_expecting_failure(tmp_path, db=tmp_path / "no" / "such" / "pedidos.db")
    assert_one_clear_error(srv, "pedidos.db")


def test_nothing_to_listen_on_exits_1(tmp_path):
    srv = start_expecting_failure(tmp_path, "--host", "::2", "--host", "192.0.2.1")
    assert_one_clear_error(srv, "cannot listen")


def test_read_only_database_exits_1(tmp_path):
    db = tmp_path / "pedidos.db"
    with storage_of(db) as storage:
        storage.submit(NewOrder("A", ("x",), "d"))
    with read_only(db):
        srv = start_expecting_failure(tmp_path, db=db)
    assert_one_clear_error(srv, "pedidos.db")


def test_port_in_use_exits_1(shared, tmp_path):
    srv = start_expecting_failure(tmp_path, "--port", str(shared.port))
    assert_one_clear_error(srv, "in use")
    srv = start_expecting_failure(tmp_path, "--host", "127.0.0.1", "--port", str(shared.port))
    assert_one_clear_error(srv, "in use")


# --- a bug in shutdown -------------------------------------------------------------------------------


def test_shutdown_answers_esperar_queued_behind_an_order(tmp_path):
    db = tmp_path / "pedidos.db"
    # the order takes a minute: only the shutdown can answer its esperar
    args = ("--workers", "1", "--work-time", "60", "--shutdown-timeout", "1")
    with running_server(tmp_path, *args) as srv, client(srv) as c:
        with database_held(db, exclusive=False):  # the server's next commit waits for us
            esperar = {"accion": "esperar", "id": 1, "timeout": 600}  # the order's id: a new database
            c.send(json.dumps(order()) + json.dumps(esperar))
            wait_for(lambda: server_read_everything(srv, c))
            srv.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "shutting down" in srv.log)
        assert c.read()["id"] == 1
        c.sock.settimeout(20)
        try:
            line = c.file.readline()
        except ConnectionResetError:
            line = b""
        assert srv.stop() == 0
        assert line, "the esperar got no answer: the connection was cut at the shutdown deadline"
        assert_error(json.loads(line), "tiempo_agotado")


# --- small helpers for the tests above ------------------------------------------------------------------


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` unwritable even for root (the immutable attribute), or skip."""
    os.chmod(path, 0o444)
    immutable = False
    try:
        if os.geteuid() == 0:
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode:
                pytest.skip("running as root without chattr +i: cannot make a file read-only")
            immutable = True
        yield
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr") or "chattr", "-i", str(path)], check=False)
        os.chmod(path, 0o644)
