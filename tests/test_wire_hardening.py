"""Issue 13, wire and access items, against the real server on loopback.

telnet's Ctrl-C (IAC IP, IAC DO TIMING-MARK) and other telnet commands; the
hint for a long line cut by the terminal; the line sent before an idle close;
the greeting of a server with tokens; `referencia` reused for a different
order (`referencia_en_uso`), in one batch and under a race; the server's own
token variable (PEDIDOS_SERVIDOR_TOKENS, never PEDIDOS_TOKEN); a token given
twice; and a suite immune to the PEDIDOS_* variables of whoever runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, SERVER_MODE, SERVIDOR, LineClient, ServerProcess, listed, running_server, wait_for

from pedidos.client import AsyncClient, Client, Refused

IAC_IP_DO_TM = b"\xff\xf4\xff\xfd\x06"  # exactly what telnet sends for Ctrl-C
WONT_TM = b"\xff\xfc\x06"  # IAC WONT TIMING-MARK
ORDER = {"cliente": "Ana", "productos": ["pan", "agua"], "direccion": "Calle 1"}
IDLE_TIMEOUT = 1


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("wire"), "--work-time", "0") as server:
        yield server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def line(request: dict) -> bytes:
    return json.dumps(request, ensure_ascii=False).encode() + b"\r\n"


def count_cliente(server: ServerProcess, cliente: str) -> int:
    return len(listed(server.port, cliente=cliente))


def with_referencia(server: ServerProcess, ref: str) -> list[dict]:
    """The stored orders with that referencia, read over the wire."""
    return [o for o in listed(server.port) if o["referencia"] == ref]


# --- 4: telnet ---------------------------------------------------------------------------------


def test_ctrl_c_gets_the_timing_mark_answered_no_error_and_drops_the_half_order(srv):
    medio = unique("Medio")
    with LineClient("127.0.0.1", srv.port) as c:
        c.send(b'{"cliente": "' + medio.encode() + b'",\r\n  "productos": ["pan"],\r\n')
        c.send(IAC_IP_DO_TM)
        # telnet shows nothing until its DO TIMING-MARK is answered: the answer comes first
        assert c.file.read(len(WONT_TM)) == WONT_TM
        # and the Ctrl-C itself is not answered: the next line read is the next request's
        assert c.ask(line({"accion": "consultar", "id": 2**40}))["error"] == "no_encontrado"
        ack = c.ask(line(dict(ORDER, cliente=medio)))
        assert ack["ok"] is True
    assert count_cliente(srv, medio) == 1  # the order sent whole, not the half before Ctrl-C


def test_ctrl_c_bytes_in_separate_packets_mean_the_same(srv):
    medio = unique("Medio")
    with LineClient("127.0.0.1", srv.port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.send(b'{"cliente": "' + medio.encode() + b'", "productos": [')
        for byte in IAC_IP_DO_TM:
            c.send(bytes([byte]))
        assert c.file.read(len(WONT_TM)) == WONT_TM
        c.send(line({"accion": "consultar", "id": 2**40}))
        assert c.read()["error"] == "no_encontrado"
    assert count_cliente(srv, medio) == 0


def test_option_requests_are_refused_and_the_session_goes_on(srv):
    with LineClient("127.0.0.1", srv.port) as c:
        c.send(b"\xff\xfd\x01\xff\xfb\x1f\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0")  # DO ECHO, WILL NAWS, SB NAWS
        assert c.file.read(6) == b"\xff\xfc\x01\xff\xfe\x1f"  # WONT ECHO, DONT NAWS
        assert c.ask(line(ORDER))["ok"] is True


def test_iac_iac_is_a_0xff_data_byte_one_error_for_the_line(srv):
    with LineClient("127.0.0.1", srv.port) as c:
        c.send(b'{"cliente": "\xff\xff", "productos": ["pan"], "direccion": "Calle 1"}\r\n')
        c.send(line({"accion": "consultar", "id": 2**40}))
        assert c.read()["error"] == "json_invalido"
        assert c.read()["error"] == "no_encontrado"  # nothing else came of that line


def test_real_telnet_shows_replies_after_ctrl_c(srv, tmp_path):
    """The real program in a terminal (tmux): type half an order, Ctrl-C, then a
    command; its reply must show. Before the fix telnet stayed blind."""
    tmux = ["tmux", "-S", str(tmp_path / "tmux.sock")]  # a tmux server of this test's own
    env = {**os.environ, "TERM": "xterm"}
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "250", "-y", "50", f"telnet 127.0.0.1 {srv.port}"],
        env=env,
        check=True,
    )

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-J"], capture_output=True, text=True).stdout

    try:
        wait_for(lambda: '"servidor": "pedidos"' in screen(), timeout=15)
        subprocess.run([*tmux, "send-keys", '{"cliente": "Medio",', "Enter"], check=True)
        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
        subprocess.run(
            [*tmux, "send-keys", '{"accion": "consultar", "id": 1099511627776}', "Enter"], check=True
        )
        wait_for(lambda: "No existe el pedido 1099511627776" in screen(), timeout=15)
        assert "json_invalido" not in screen()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_real_telnet_fed_crlf_text_gets_one_reply_per_request(srv):
    """`printf '...\\r\\n' | telnet`: telnet sends each CR as CR NUL, which is no
    request of its own (it was answered json_invalido)."""
    telnet = subprocess.Popen(
        ["telnet", "127.0.0.1", str(srv.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    deadline = threading.Timer(15, telnet.kill)  # no reply in time: the reading below ends
    deadline.start()
    try:
        assert telnet.stdin is not None and telnet.stdout is not None
        telnet.stdin.write(b'{"accion": "consultar", "id": 1099511627776}\r\n{"accion": "bailar"}\r\n')
        telnet.stdin.flush()
        seen = b""
        while b"accion_desconocida" not in seen:  # the second reply: everything before it came
            chunk = telnet.stdout.read1(4096)
            assert chunk, seen
            seen += chunk
        assert b"no_encontrado" in seen and b"json_invalido" not in seen, seen
    finally:
        deadline.cancel()
        telnet.kill()
        telnet.wait(10)


# --- 14: a long line cut by the terminal -------------------------------------------------------------


def test_a_line_break_inside_a_text_hints_at_pasting_over_several_lines(srv):
    with LineClient("127.0.0.1", srv.port) as c:
        # What arrives when a terminal cut a long one-line order at 4096 characters.
        refusal = c.ask(b'{"cliente": "Ana", "direccion": "' + b"x" * 4000 + b"\r\n")
        assert refusal["error"] == "json_invalido"
        assert "salto de línea" in refusal["mensaje"] and "varias líneas" in refusal["mensaje"]
        other = c.ask(b'{"cliente": "A\tB"}\n')  # another control character: no such hint
        assert other["error"] == "json_invalido" and "varias líneas" not in other["mensaje"]


# --- 16: the idle close says why; the greeting says a token is needed --------------------------------


@pytest.fixture(scope="module")
def idle_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # At debug level: the tests wait for the line that says their connection was closed as idle.
    args = ("--work-time", "0", "--idle-timeout", str(IDLE_TIMEOUT), "--log-level", "debug")
    with running_server(tmp_path_factory.mktemp("idle"), *args) as server:
        yield server


def test_an_idle_connection_gets_tiempo_agotado_then_the_close(idle_srv):
    with LineClient("127.0.0.1", idle_srv.port) as c:
        half = b'{"cliente": "Ocioso", "productos": ["pan"]'
        c.send(half)
        notice = c.read()
        assert notice["ok"] is False and notice["error"] == "tiempo_agotado", notice
        assert f"{IDLE_TIMEOUT} s" in notice["mensaje"] and "cierra la conexión" in notice["mensaje"]
        assert notice["conexion_cerrada"] is True
        assert c.file.read() == b""  # then the close, nothing more
    assert count_cliente(idle_srv, "Ocioso") == 0


def test_requests_answered_at_once_are_activity(idle_srv):
    # A refusal is written at once, without waiting in line: its request still
    # ended, and ending a request is activity. Spaced at half the timeout, for
    # twice the timeout: the connection stays open.
    with LineClient("127.0.0.1", idle_srv.port) as c:
        for _ in range(4):
            assert c.ask({"accion": "nada"})["error"] == "accion_desconocida"
            # Nothing comes in half the timeout: no idle notice (and the span passes).
            readable, _, _ = select.select([c.sock], [], [], IDLE_TIMEOUT / 2)
            assert not readable, c.read()


def test_waiting_for_a_reply_is_not_idleness(tmp_path):
    args = ("--work-time", "60", "--workers", "1", "--idle-timeout", "1", "--shutdown-timeout", "1")
    with running_server(tmp_path, *args) as srv:
        with LineClient("127.0.0.1", srv.port) as c:
            order_id = c.ask(line(ORDER))["id"]
            asked = time.monotonic()
            waited = c.ask({"accion": "esperar", "id": order_id, "timeout": 2.5})
            assert waited["error"] == "tiempo_agotado" and "conexion_cerrada" not in waited, waited
            # The idle clock starts again at that reply, not at the request 2.5 s before it.
            # (Timed from the request: a late reader only makes the span longer.)
            notice = c.read()
            assert notice.get("conexion_cerrada") is True, notice
            assert time.monotonic() - asked >= 2.5 + 0.9
        assert srv.stop() == 0


def test_both_clients_connect_again_after_an_idle_close(idle_srv):
    with Client("127.0.0.1", idle_srv.port) as client:
        # This connection's own close: an earlier test's connection closed for
        # idleness a moment later would otherwise pass for it.
        first = client._sock.getsockname()[:2]  # type: ignore[union-attr]
        ours = "closing {}:{}: idle for".format(*first)
        wait_for(lambda: ours in idle_srv.log, timeout=15)
        # The notice is not a reply to the next request, which goes on a new
        # connection (nothing of it had left: no risk of doing it twice).
        assert client.stats()["workers"] >= 1
        assert client._sock.getsockname()[:2] != first  # type: ignore[union-attr]

    async def scenario() -> None:
        async with AsyncClient("127.0.0.1", idle_srv.port) as client:
            local = client._wire._transport.get_extra_info("sockname")  # type: ignore[union-attr]
            ours = "closing {}:{}: idle for".format(*local[:2])
            while ours not in idle_srv.log:
                await asyncio.sleep(0.05)
            assert (await client.stats())["workers"] >= 1  # a new connection, no stray reply

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_greeting_says_when_a_token_is_needed_and_how_to_send_it(tmp_path, srv):
    env = {"PEDIDOS_SERVIDOR_TOKENS": "admin-token-1 admin"}
    with (
        running_server(tmp_path, "--work-time", "0", env=env) as guarded,
        LineClient("127.0.0.1", guarded.port) as c,
    ):
        assert "token" in c.greeting["mensaje"]
        assert c.greeting["comando"] == {"accion": "autenticar", "token": "SU-TOKEN"}
    with LineClient("127.0.0.1", srv.port) as c:
        assert "token" not in c.greeting["mensaje"]


def test_the_greeting_s_examples_pasted_back_as_telnet_shows_them_are_answered(srv):
    # telnet shows the line as it comes: an example inside `mensaje` showed
    # its quotes as \" and could not be pasted back as it was.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as sock:
        shown = sock.makefile("rb").readline().decode()
    assert '\\"' not in shown, shown  # nothing in it that a paste would get wrong
    pasted = {key: re.search(f'"{key}": ({{[^{{}}]*}})', shown) for key in ("ejemplo", "comando")}
    assert all(pasted.values()), shown
    with LineClient("127.0.0.1", srv.port) as c:
        placed = c.ask(pasted["ejemplo"].group(1))  # type: ignore[union-attr]
        assert placed["ok"] is True and placed["estado"] == "pendiente", placed
        asked = c.ask(pasted["comando"].group(1))  # type: ignore[union-attr]
        assert asked["ok"] is True or asked["error"] == "no_encontrado", asked


# --- 12: referencia reused for a different order -----------------------------------------------------


def test_referencia_same_order_is_a_retry_a_different_one_is_refused(srv):
    ref = unique("ref")
    with LineClient("127.0.0.1", srv.port) as c:
        first = c.ask(line(dict(ORDER, referencia=ref)))
        assert first["ok"] is True and "duplicado" not in first
        retry = c.ask(line(dict(ORDER, cliente=" Ana ", referencia=f" {ref}")))  # equal once trimmed
        assert (retry["id"], retry["duplicado"]) == (first["id"], True)
        for change in ({"cliente": "Beto"}, {"productos": ["pan"]}, {"direccion": "Calle 2"}):
            refused = c.ask(line({**ORDER, **change, "referencia": ref}))
            assert refused["ok"] is False and refused["error"] == "referencia_en_uso", refused
            assert "referencia" in refused["mensaje"] and "id" not in refused
    assert len(with_referencia(srv, ref)) == 1


def test_referencia_in_one_batch(srv):
    ref = unique("batch")
    orders = [
        dict(ORDER, referencia=ref),
        dict(ORDER, cliente="Otro", referencia=ref),
        dict(ORDER, referencia=ref),
    ]
    with LineClient("127.0.0.1", srv.port) as c:
        c.send(b"".join(line(o) for o in orders))  # one packet: one group commit
        first, second, third = c.read(), c.read(), c.read()
    assert first["ok"] is True and "duplicado" not in first
    assert second["error"] == "referencia_en_uso"
    assert (third["id"], third["duplicado"]) == (first["id"], True)
    assert [o["cliente"] for o in with_referencia(srv, ref)] == ["Ana"]


@pytest.mark.parametrize("same", [False, True], ids=["different", "same"])
def test_referencia_under_a_race(srv, same):
    ref, clients = unique("race"), 24
    conns = [LineClient("127.0.0.1" if i % 2 else "::1", srv.port) for i in range(clients)]
    start = threading.Barrier(clients)
    replies: list[dict] = [{}] * clients

    def send(i: int) -> None:
        start.wait(10)
        replies[i] = conns[i].ask(line(dict(ORDER, cliente="Ana" if same else f"Ana {i}", referencia=ref)))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for c in conns:
            c.close()
    stored = [(o["id"],) for o in with_referencia(srv, ref)]
    assert len(stored) == 1
    winners = [r for r in replies if r.get("ok") and not r.get("duplicado")]
    assert [w["id"] for w in winners] == [stored[0][0]]
    others = [r for r in replies if r not in winners]
    if same:
        assert all(r["ok"] and r["duplicado"] and r["id"] == stored[0][0] for r in others), others
    else:
        assert all(r.get("error") == "referencia_en_uso" for r in others), others


def test_the_client_library_raises_refused_with_the_code(srv):
    ref = unique("lib")
    with Client("127.0.0.1", srv.port) as client:
        client.submit("Ana", ["pan"], "Calle 1", referencia=ref)
        assert client.submit("Ana", ["pan"], "Calle 1", referencia=ref).duplicado
        with pytest.raises(Refused) as refused:
            client.submit("Ana", ["pan", "vino"], "Calle 1", referencia=ref)
    assert refused.value.code == "referencia_en_uso"


# --- 10, 11: the server's tokens -------------------------------------------------------------------


def test_server_tokens_come_from_pedidos_servidor_tokens(tmp_path):
    env = {"PEDIDOS_SERVIDOR_TOKENS": "admin-token-1 admin, shop-token-1\nshop-token-2 cliente"}
    with running_server(tmp_path, "--work-time", "0", env=env) as guarded:
        with LineClient("127.0.0.1", guarded.port) as c:
            assert c.ask(line(ORDER))["error"] == "no_autorizado"
            assert c.ask(line({"accion": "autenticar", "token": "shop-token-1"}))["rol"] == "cliente"
        with LineClient("127.0.0.1", guarded.port) as c:
            assert c.ask(line({"accion": "autenticar", "token": "admin-token-1"}))["rol"] == "admin"
    assert "3 access tokens" in guarded.log
    assert "admin-token-1" not in guarded.log and "shop-token" not in guarded.log


def test_the_server_does_not_read_the_clients_pedidos_token(tmp_path):
    # A shop's token exported for cliente.py must not become a token of the server.
    env = {"PEDIDOS_TOKEN": "shop-token-1"}
    with (
        running_server(tmp_path, "--work-time", "0", env=env) as open_server,
        LineClient("127.0.0.1", open_server.port) as c,
    ):
        assert c.ask(line(ORDER))["ok"] is True  # no token needed
        assert c.ask(line({"accion": "listar"}))["ok"] is True
    assert "no access tokens" in open_server.log
    assert "PEDIDOS_TOKEN is set" in open_server.log and "shop-token-1" not in open_server.log


def start_with_tokens(
    tmp_path: Path, text: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(text)
    return subprocess.run(
        [
            sys.executable,
            str(SERVIDOR),
            *SERVER_MODE,
            "--port",
            "0",
            "--db",
            str(tmp_path / "x.db"),
            "--token-file",
            str(tokens),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_a_token_given_twice_with_two_roles_stops_the_start_naming_both_lines(tmp_path):
    result = start_with_tokens(
        tmp_path, "# tokens\nshop-token-1\nadmin-token-1 admin\n\nshop-token-1 admin\n"
    )
    assert result.returncode == 1, result.stderr
    assert "line 5" in result.stderr and "line 2" in result.stderr and "one role" in result.stderr
    assert "shop-token-1" not in result.stderr and "Traceback" not in result.stderr
    # across the file and the variable too
    result = start_with_tokens(tmp_path, "shop-token-1\n", {"PEDIDOS_SERVIDOR_TOKENS": "shop-token-1 admin"})
    assert result.returncode == 1 and "PEDIDOS_SERVIDOR_TOKENS, entry 1" in result.stderr, result.stderr


def test_a_token_repeated_with_its_role_counts_once(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("shop-token-1\nshop-token-1 cliente\n")
    with running_server(tmp_path, "--work-time", "0", "--token-file", str(tokens)) as guarded:
        pass
    # singular, counted once (the line's key=value fields follow a ';')
    assert re.search(r" ready: .*, 1 access token(;|$)", guarded.log, re.M), guarded.log
    assert "line 2: the same token as" in guarded.log and "shop-token-1" not in guarded.log


# --- 10: the suite is immune to the caller's environment -----------------------------------------------


def server_environ(server: ServerProcess) -> dict[str, str]:
    raw = Path(f"/proc/{server.pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_no_pedidos_variable_reaches_the_suite_or_its_servers(tmp_path, monkeypatch):
    assert not [name for name in os.environ if name.startswith("PEDIDOS_")]
    # Even one a test set for its own use (say, for the client) stays out of a server.
    monkeypatch.setenv("PEDIDOS_DB", str(tmp_path / "elsewhere.db"))
    with running_server(tmp_path, "--work-time", "0") as server:
        assert not [name for name in server_environ(server) if name.startswith("PEDIDOS_")]
        with LineClient("127.0.0.1", server.port) as c:
            assert c.ask(line(ORDER))["ok"] is True


def test_the_suite_passes_with_pedidos_variables_exported(tmp_path):
    """Run a few tests in a fresh pytest with the variables a user of the docs
    exports; before the fix the servers inherited them and every test failed."""
    exported = {
        "PEDIDOS_TOKEN": "shop-token-1",
        "PEDIDOS_SERVIDOR_TOKENS": "admin-token-1 admin",
        "PEDIDOS_DB": str(tmp_path / "not-this.db"),
    }
    tests = [
        "tests/test_smoke.py::test_original_order_pasted_byte_by_byte_ends_listo",
        "tests/test_wire_hardening.py::test_no_pedidos_variable_reaches_the_suite_or_its_servers",
        "tests/test_client_api.py::test_referencia_makes_a_retry_safe",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env={**os.environ, **exported},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout
