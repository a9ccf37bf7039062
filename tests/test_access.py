"""Access tokens and TLS (issue 6), against the real server."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import running_server, wait_for

from pedidos.server.auth import FailureThrottle, TokenFileError, load_tokens

ORDER = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}
TOKENS = "admin-secret-1 admin\ncliente-aaaa-1\ncliente-bbbb-1 cliente\n"


class Session:
    """One connection, plain or TLS: send an object, read one reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = json.loads(self.file.readline())

    def ask(self, request: dict) -> dict:
        self.sock.sendall(json.dumps(request).encode())
        return json.loads(self.file.readline())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def token_server(tmp_path: Path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    with running_server(tmp_path, "--work-time", "0", "--token-file", str(tokens)) as srv:
        sessions: list[Session] = []

        def session() -> Session:
            sessions.append(Session(socket.create_connection(("127.0.0.1", srv.port), timeout=15)))
            return sessions[-1]

        yield session
        for s in sessions:
            s.close()


def test_requests_before_authenticating_are_refused_and_store_nothing(token_server):
    s = token_server()
    # The greeting says a token is needed, and how to send it.
    assert s.greeting["ok"] is True and "token" in s.greeting["mensaje"], s.greeting
    assert s.greeting["comando"] == {"accion": "autenticar", "token": "SU-TOKEN"}, s.greeting
    for request in (
        ORDER,
        {"accion": "listar"},
        {"accion": "consultar", "id": 1},
        {"accion": "estadisticas"},
    ):
        reply = s.ask(request)
        assert reply["ok"] is False and reply["error"] == "no_autorizado", reply
    admin = token_server()
    assert admin.ask({"accion": "autenticar", "token": "admin-secret-1"}) == {"ok": True, "rol": "admin"}
    assert admin.ask({"accion": "listar"})["pedidos"] == []
    assert admin.ask({"accion": "reintentar", "id": 1})["error"] == "no_encontrado"


def test_a_cliente_token_sees_only_its_own_orders(token_server):
    a, b = token_server(), token_server()
    assert a.ask({"accion": "autenticar", "token": "cliente-aaaa-1"})["rol"] == "cliente"
    assert b.ask({"accion": "autenticar", "token": "cliente-bbbb-1"})["rol"] == "cliente"
    mine = a.ask({**ORDER, "referencia": "a-ref"})["id"]
    assert a.ask({"accion": "esperar", "id": mine, "timeout": 20})["pedido"]["estado"] == "listo"
    for request in ({"accion": "consultar", "id": mine}, {"accion": "cancelar", "id": mine}):
        assert b.ask(request)["error"] == "no_encontrado"
    assert b.ask({"accion": "esperar", "id": mine, "timeout": 1})["error"] == "no_encontrado"
    for request in ({"accion": "listar"}, {"accion": "estadisticas"}):
        assert b.ask(request)["error"] == "no_autorizado"
    # reintentar is for admin, even on one's own order; a key finds only one's own order.
    assert a.ask({"accion": "reintentar", "id": mine})["error"] == "no_autorizado"
    assert b.ask({"accion": "consultar", "referencia": "a-ref"})["error"] == "no_encontrado"
    assert a.ask({"accion": "consultar", "referencia": "a-ref"})["pedido"]["id"] == mine
    taken = b.ask({**ORDER, "referencia": "a-ref"})
    # The same content from another token is not a retry: never that other order's id.
    assert taken["error"] == "referencia_en_uso" and str(mine) not in taken["mensaje"], taken
    assert "id" not in taken and "pedido" not in taken
    assert a.ask({**ORDER, "referencia": "a-ref"}) == {
        "ok": True,
        "id": mine,
        "estado": "listo",
        "duplicado": True,
    }


def test_a_pipelined_autenticar_changes_only_what_comes_after_it(token_server):
    a = token_server()
    assert a.ask({"accion": "autenticar", "token": "cliente-aaaa-1"})["rol"] == "cliente"
    mine = a.ask(ORDER)["id"]
    b = token_server()
    assert b.ask({"accion": "autenticar", "token": "cliente-bbbb-1"})["rol"] == "cliente"
    # One send: B's requests, then a switch to A's token, then A's own request.
    batch = [
        {"accion": "consultar", "id": mine},
        {"accion": "cancelar", "id": mine},
        {"accion": "listar"},
        {"accion": "autenticar", "token": "admin-secret-1"},
        {"accion": "consultar", "id": mine},
    ]
    b.sock.sendall(b"".join(json.dumps(request).encode() for request in batch))
    replies = [json.loads(b.file.readline()) for _ in batch]
    refused = ["no_encontrado", "no_encontrado", "no_autorizado"]
    assert [r.get("error") for r in replies] == [*refused, None, None]
    assert replies[4]["pedido"]["estado"] != "cancelado"


def test_a_wrong_token_leaves_the_connection_with_none(token_server):
    s = token_server()
    assert s.ask({"accion": "autenticar", "token": "admin-secret-1"})["rol"] == "admin"
    assert s.ask({"accion": "autenticar", "token": "admin-secret-x"})["error"] == "no_autorizado"
    for request in ({"accion": "listar"}, ORDER):
        assert s.ask(request)["error"] == "no_autorizado"
    # A token that is not even well formed, or missing, is as wrong as a wrong one.
    for malformed in ({"accion": "autenticar", "token": ""}, {"accion": "autenticar"}):
        assert s.ask({"accion": "autenticar", "token": "admin-secret-1"})["rol"] == "admin"
        assert s.ask(malformed)["error"] == "mensaje_invalido"
        assert s.ask({"accion": "listar"})["error"] == "no_autorizado"


def test_a_wrong_token_is_refused_without_saying_why(token_server):
    s = token_server()
    replies = [
        s.ask({"accion": "autenticar", "token": token})
        for token in ("admin-secret-2", "admin-secret-1x", "x", "cliente-aaaa-1 ")
    ]
    assert {r["error"] for r in replies} == {"no_autorizado"}
    assert len({r["mensaje"] for r in replies}) == 1
    assert s.ask(ORDER)["error"] == "no_autorizado"


def test_repeated_failures_from_one_address_are_slowed_down():
    throttle = FailureThrottle(base_delay=0.1, max_delay=1.0)
    delays = [throttle.failed("10.0.0.1") for _ in range(6)]
    assert delays[0] == 0 and delays == sorted(delays) and delays[-1] == 1.0
    assert throttle.failed("10.0.0.2") == 0
    throttle.succeeded("10.0.0.1")
    assert throttle.failed("10.0.0.1") == 0


def test_token_sources(tmp_path: Path):
    assert load_tokens(None, {}) is None
    # PEDIDOS_TOKEN is the client's token: the server does not read it.
    assert load_tokens(None, {"PEDIDOS_TOKEN": "operator-token"}) is None
    book = load_tokens(None, {"PEDIDOS_SERVIDOR_TOKENS": "operator-token admin, shop-token-1"})
    assert book is not None and book.authenticate("operator-token").is_admin
    assert book.authenticate("shop-token-1").role == "cliente"
    bad = tmp_path / "bad.txt"
    bad.write_text("short-token jefe\n")
    with pytest.raises(TokenFileError, match="line 1"):
        load_tokens(str(bad), {})


def test_tokens_never_reach_the_log(tmp_path: Path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    with running_server(tmp_path, "--work-time", "0", "--token-file", str(tokens)) as srv:
        s = Session(socket.create_connection(("127.0.0.1", srv.port), timeout=15))
        s.ask({"accion": "autenticar", "token": "guess-guess-guess"})
        s.ask({"accion": "autenticar", "token": "admin-secret-1"})
        s.close()
        srv.stop()
    assert "failed authentication" in srv.log
    assert "guess-guess-guess" not in srv.log and "admin-secret-1" not in srv.log


def test_no_token_on_every_interface_is_warned_about(tmp_path: Path):
    with running_server(tmp_path, "--work-time", "0", "--host", "0.0.0.0") as srv:
        pass
    assert "listening beyond this machine" in srv.log
    with running_server(tmp_path, "--work-time", "0") as srv:
        pass
    assert "listening beyond this machine" not in srv.log


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_a_full_order_over_tls_and_plain_clients_fail_cleanly(tmp_path: Path, certificate):
    cert, key = certificate
    with running_server(tmp_path, "--work-time", "0", "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        plain = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        plain.sendall(json.dumps(ORDER).encode() + b"\n")
        assert plain.recv(4096) == b""  # the handshake fails; the server closes
        plain.close()
        context = ssl.create_default_context(cafile=str(cert))
        for host in ("127.0.0.1", "::1"):
            raw = socket.create_connection((host, srv.port), timeout=10)
            s = Session(context.wrap_socket(raw, server_hostname="localhost"))
            assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
            assert s.greeting["servidor"] == "pedidos"
            order_id = s.ask(ORDER)["id"]
            assert s.ask({"accion": "esperar", "id": order_id, "timeout": 20})["pedido"]["estado"] == "listo"
            s.close()
        unverified = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(unverified, server_hostname="localhost")
        unverified.close()


def test_a_missing_certificate_stops_the_start(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parent.parent / "servidor.py"), "--port", "0",
         "--db", str(tmp_path / "x.db"), "--tls-cert", str(tmp_path / "none.pem")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot load the TLS certificate" in result.stderr and "Traceback" not in result.stderr


def test_plain_text_on_the_tls_port_is_one_info_line_naming_the_peer(tmp_path: Path, certificate):
    # telnet, or cliente.py without --tls: silence, a close, and nothing in the
    # log at INFO to tell the operator why.
    cert, key = certificate
    with running_server(tmp_path, "--work-time", "0", "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        peers = []
        for text in (b"hola\r\n", json.dumps(ORDER).encode() + b"\n", b"GET / HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as plain:
                peers.append(f"127.0.0.1:{plain.getsockname()[1]}")
                plain.sendall(text)
                assert plain.recv(4096) == b""  # the handshake fails; the server closes
        wait_for(lambda: "did not speak TLS" in srv.log)
    said = [line for line in srv.lines if "did not speak TLS" in line]
    # One line for the three: a client retrying in a loop does not fill the log.
    assert len(said) == 1 and " INFO " in said[0] and peers[0] in said[0], srv.log
    assert "--tls" in said[0], said[0]


def test_a_tls_client_on_the_plain_port_is_told_and_logged(tmp_path: Path):
    context = ssl.create_default_context()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()  # the first bytes a TLS client sends
    with running_server(tmp_path, "--work-time", "0") as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
            peer = f"127.0.0.1:{raw.getsockname()[1]}"
            raw.sendall(hello)
            replies = raw.makefile("rb")
            assert json.loads(replies.readline())["servidor"] == "pedidos"  # the greeting
            reply = json.loads(replies.readline())
            replies.close()
        assert reply["ok"] is False and reply["error"] == "json_invalido", reply
        assert "no usa TLS" in reply["mensaje"], reply
        wait_for(lambda: "speaks TLS" in srv.log)
        # A real TLS client fails on the greeting, as before, and the server goes on.
        with (
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw,
            pytest.raises(ssl.SSLError),
        ):
            context.wrap_socket(raw, server_hostname="localhost")
        s = Session(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
        assert s.ask(ORDER)["ok"]
        s.close()
    said = [line for line in srv.lines if "speaks TLS" in line]
    assert len(said) == 1 and " INFO " in said[0] and peer in said[0], srv.log
