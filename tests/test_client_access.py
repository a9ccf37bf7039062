"""The client side of issue 6: tokens and TLS through `Client`, `AsyncClient` and
`cliente.py`, against the real server started with `--token-file` and with
`--tls-cert/--tls-key` (a certificate this module makes with `openssl`)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLIENTE, ROOT, ServerProcess, running_server
from test_client_cli import Terminal

from pedidos.client.blocking import AsyncClient, Client, ConnectionProblem, Refused
from pedidos.client.cli.main import main

ADMIN, ANA, BEA = "admin-secret-1", "cliente-aaaa-1", "cliente-bbbb-1"
TOKENS = f"{ADMIN} admin\n{ANA}\n{BEA} cliente\n"
ORDER = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}
_names = itertools.count(1)


def unique(prefix: str = "acc") -> str:
    """A client name no other test uses, since the servers are shared."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own PEDIDOS_TOKEN must not change what these tests send.
    monkeypatch.delenv("PEDIDOS_TOKEN", raising=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="module")
def other_certificate(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A certificate for the same names that is not the server's."""
    return str(self_signed(tmp_path_factory.mktemp("other"))[0])


def self_signed(where: Path) -> tuple[Path, Path]:
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Plain TCP, tokens required."""
    where = tmp_path_factory.mktemp("tokens")
    (where / "tokens.txt").write_text(TOKENS)
    with running_server(where, "--work-time", "0", "--token-file", str(where / "tokens.txt")) as srv:
        yield srv


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certificate) -> Iterator[ServerProcess]:
    """TLS and tokens, as docs/security.md recommends."""
    where = tmp_path_factory.mktemp("tls")
    (where / "tokens.txt").write_text(TOKENS)
    cert, key = certificate
    args = ["--work-time", "0", "--token-file", str(where / "tokens.txt")]
    with running_server(where, *args, "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        yield srv


def run(capsys, *argv: object, stdin: str = "") -> tuple[int, str, str]:
    """`main(argv)`: its exit status, stdout and stderr."""
    try:
        code = main([str(a) for a in argv], stdin=io.TextIOWrapper(io.BytesIO(stdin.encode())))
    except SystemExit as exit_:
        code = exit_.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    return code, out, err


def reason(err: str) -> str:
    """The one line a failure is explained in (and no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- the API, plain TCP with tokens ------------------------------------------------------


def test_blocking_client_with_a_token(token_server):
    with Client("127.0.0.1", token_server.port, token=ADMIN) as client:
        assert client.role == "admin"
        receipt = client.submit(unique(), ["pan"], "Calle 1")
        assert client.wait(receipt.id, timeout=20).estado == "listo"
        assert receipt.id in [o.id for o in client.list(desde_id=receipt.id - 1)]
        assert "estados" in client.stats()
        client.close()
        assert client.get(receipt.id).id == receipt.id  # a reconnection authenticates again


def test_async_client_with_a_token(token_server):
    async def scenario() -> tuple[str | None, list[str], int]:
        async with AsyncClient("::1", token_server.port, token=ANA) as client:
            receipts = await asyncio.gather(*(client.submit(unique(), ["té"], "Calle 2") for _ in range(3)))
            done = [(await client.wait(r.id, timeout=20)).estado for r in receipts]
            many = [r async for r in client.submit_many([ORDER] * 50)]
            return client.role, done, len(many)

    assert asyncio.run(scenario()) == ("cliente", ["listo"] * 3, 50)


def test_a_cliente_token_meets_its_limits_as_refusals(token_server):
    with (
        Client("127.0.0.1", token_server.port, token=ANA) as ana,
        Client("127.0.0.1", token_server.port, token=BEA) as bea,
    ):
        mine = ana.submit(unique(), ["pan"], "Calle 1").id
        assert ana.get(mine).id == mine
        for call, code in [
            (lambda: bea.get(mine), "no_encontrado"),
            (lambda: bea.cancel(mine), "no_encontrado"),
            (lambda: bea.wait(mine, timeout=1), "no_encontrado"),
            (lambda: bea.list(), "no_autorizado"),
            (lambda: bea.stats(), "no_autorizado"),
        ]:
            with pytest.raises(Refused) as refused:
                call()
            assert refused.value.code == code
        assert bea.connected  # a refusal is an answer: the connection goes on


def test_a_wrong_or_missing_token_is_refused(token_server):
    client = Client("127.0.0.1", token_server.port, token="not-a-token-1")
    with pytest.raises(Refused) as refused:
        client.connect()
    assert refused.value.code == "no_autorizado" and not client.connected

    async def wrong() -> str:
        try:
            await AsyncClient("127.0.0.1", token_server.port, token="not-a-token-2").connect()
        except Refused as exc:
            return exc.code
        return "accepted"

    assert asyncio.run(wrong()) == "no_autorizado"
    with Client("127.0.0.1", token_server.port) as anonymous, pytest.raises(Refused) as refused:
        anonymous.submit("Ana", ["pan"], "Calle 1")
    assert refused.value.code == "no_autorizado"


def test_the_token_comes_from_pedidos_token_unless_given(token_server, monkeypatch):
    monkeypatch.setenv("PEDIDOS_TOKEN", f"{ADMIN} admin")  # the server's form: the role is not sent
    with Client("127.0.0.1", token_server.port) as client:
        assert client.role == "admin"
    with Client("127.0.0.1", token_server.port, token=ANA) as client:
        assert client.role == "cliente"
    with Client("127.0.0.1", token_server.port, token="") as client:  # "": none at all
        assert client.role is None
        with pytest.raises(Refused):
            client.stats()


# --- the API over TLS ----------------------------------------------------------------


def test_tls_blocking_and_asyncio_with_the_certificate(tls_server, certificate):
    cert = str(certificate[0])
    with Client("localhost", tls_server.port, token=ADMIN, tls=True, cafile=cert) as client:
        results = list(client.submit_many([ORDER] * 2000))  # pipelined through TLS
        assert len(results) == 2000 and all(not isinstance(r, Refused) for r in results)
        assert client.wait(results[-1].id, timeout=20).estado == "listo"  # type: ignore[union-attr]

    async def scenario() -> list[str]:
        context = ssl.create_default_context(cafile=cert)
        async with AsyncClient("::1", tls_server.port, token=ANA, ssl_context=context) as client:
            receipts = [r async for r in client.submit_many([ORDER] * 300)]
            return [(await client.wait(receipts[-1].id, timeout=20)).estado, client.role]  # type: ignore[union-attr]

    assert asyncio.run(scenario()) == ["listo", "cliente"]


def test_async_tasks_that_come_while_it_connects_wait_for_the_token(tls_server, certificate):
    # Tasks arriving one after another while the first one connects: none may
    # write on the connection before its `autenticar` is answered.
    async def scenario() -> list[object]:
        client = AsyncClient("::1", tls_server.port, token=ANA, tls=True, cafile=str(certificate[0]))

        async def later(n: int) -> object:
            await asyncio.sleep(n * 0.0005)
            return await client.submit(unique("race"), ["pan"], "Calle 1")

        try:
            return await asyncio.gather(*(later(n) for n in range(60)), return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(scenario())
    assert [r for r in results if isinstance(r, BaseException)] == []


def test_async_tasks_writing_as_a_tls_server_stops_get_connection_problems_and_no_warnings(
    tmp_path: Path, certificate, caplog: pytest.LogCaptureFixture
):
    # A server's stop closes the connection in an orderly way (its notice, TLS's
    # close_notify). Tasks that wrote in the moment between its end of the
    # connection and the connection's loss had their requests dropped by asyncio,
    # which over TLS logged "SSL connection is closed" for each past the fifth.
    cert, key = certificate
    with running_server(tmp_path, "--work-time", "0", "--tls-cert", str(cert), "--tls-key", str(key)) as srv:

        async def scenario() -> tuple[int, list[BaseException]]:
            client = AsyncClient("127.0.0.1", srv.port, tls=True, cafile=str(cert), timeout=10)
            acks = 0

            async def keep_ordering() -> None:
                nonlocal acks
                while True:
                    await client.submit(unique("stop"), ["pan"], "Calle 1")
                    acks += 1

            tasks = [asyncio.ensure_future(keep_ordering()) for _ in range(20)]
            deadline = time.monotonic() + 20
            while acks < 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.get_running_loop().run_in_executor(None, srv.stop)
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
            await client.close()
            return acks, [o for o in outcomes if isinstance(o, BaseException)]

        with caplog.at_level(logging.WARNING, logger="asyncio"):
            acks, failures = asyncio.run(scenario())
    assert acks >= 200
    assert len(failures) == 20 and all(isinstance(f, ConnectionProblem) for f in failures), failures
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


@pytest.mark.parametrize(
    ("server", "settings", "words"),
    [
        ("tls_server", {"tls": True}, "el certificado del servidor no es de confianza"),
        ("token_server", {"tls": True}, "TLS"),
        ("tls_server", {"tls": True, "cafile": "/nonexistent/ca.pem"}, "no existe"),
        ("tls_server", {"tls": True, "cafile": "other_certificate"}, "no lo firma el certificado de"),
        ("tls_server", {"timeout": 1}, "--tls"),  # plain client: the TLS server never greets
    ],
)
def test_tls_failures_are_connection_problems(request, server, settings, words):
    port = request.getfixturevalue(server).port
    if settings.get("cafile") == "other_certificate":
        settings = {**settings, "cafile": request.getfixturevalue("other_certificate")}

    async def attempt() -> str:
        try:
            await AsyncClient("localhost", port, token=ADMIN, **settings).connect()
        except ConnectionProblem as exc:
            return str(exc)
        return "connected"

    with pytest.raises(ConnectionProblem, match=words.replace("-", r"\-")):
        Client("localhost", port, token=ADMIN, **settings).connect()
    assert words in asyncio.run(attempt())


def test_a_tls_handshake_nobody_answers_ends_at_the_timeout(fake_server):
    port = fake_server("silent").port  # accepts, never says a word

    async def attempt() -> str:
        try:
            await AsyncClient("127.0.0.1", port, timeout=0.3, tls=True).connect()
        except ConnectionProblem as exc:
            return str(exc)
        return "connected"

    with pytest.raises(ConnectionProblem, match="la negociación TLS no terminó en 0.3 s"):
        Client("127.0.0.1", port, timeout=0.3, tls=True).connect()
    assert asyncio.run(attempt()) == "la negociación TLS no terminó en 0.3 s"


def test_cafile_without_tls_is_a_mistake():
    with pytest.raises(ValueError):
        Client(cafile="cert.pem")


# --- cliente.py ---------------------------------------------------------------------------


def test_cli_token(token_server, capsys):
    code, out, _ = run(capsys, "--port", token_server.port, "--token", ADMIN, "--estadisticas", "--json")
    assert code == 0 and "estados" in json.loads(out)
    code, _, err = run(capsys, "--port", token_server.port, "--token", "not-a-token-3", "--listar")
    assert code == 1 and reason(err) == "cliente.py: rechazado (no_autorizado): Token no válido."
    code, _, err = run(capsys, "--port", token_server.port, "--listar")
    assert code == 1 and "--token" in reason(err) and "PEDIDOS_TOKEN" in reason(err)
    code, _, err = run(capsys, "--port", token_server.port, "--token", ANA, "--listar")
    assert code == 1 and "administrador" in reason(err)


def test_cli_tls_order_waited_for_end_to_end(tls_server, certificate, capsys):
    secure = ["--port", tls_server.port, "--tls", "--cafile", certificate[0], "--token", ANA]
    name = unique("cli")
    code, out, err = run(
        capsys, *secure, "--cliente", name, "--productos", "pan", "--direccion", "Calle 1", "--esperar"
    )
    assert code == 0, err
    assert out.startswith("Pedido recibido: número ") and "listo" in out.splitlines()[-1]
    order_id = int(out.split("número ")[1].split(",")[0])
    code, out, _ = run(capsys, *secure, "--consultar", order_id, "--json")
    assert code == 0 and json.loads(out)["pedido"]["cliente"] == name
    code, out, err = run(
        capsys, *secure, "--archivo", "-", stdin=json.dumps(ORDER) + "\n" + json.dumps(ORDER)
    )
    assert code == 0 and "aceptados:  2" in out, err
    code, _, err = run(capsys, *secure, "--cancelar", order_id)
    assert code == 1 and "no_cancelable" in reason(err)
    admin = ["--port", tls_server.port, "--tls", "--cafile", certificate[0], "--token", ADMIN]
    code, out, _ = run(capsys, *admin, "--listar", "--cliente", name)
    assert code == 0 and name in out


@pytest.mark.parametrize(
    ("server", "options", "words"),
    [
        ("tls_server", ["--tls"], "el certificado del servidor no es de confianza"),
        ("token_server", ["--tls"], "no se pudo negociar TLS"),
        ("tls_server", ["--timeout", "1"], "si el servidor usa TLS, conéctese con --tls"),
    ],
)
def test_cli_tls_failures_exit_3_with_a_reason(request, capsys, server, options, words):
    port = request.getfixturevalue(server).port
    code, out, err = run(capsys, "--port", port, "--token", ADMIN, *options, "--estadisticas")
    assert code == 3 and out == "" and words in reason(err)


def test_cafile_alone_is_a_usage_error(capsys):
    code, _, err = run(capsys, "--cafile", "cert.pem", "--estadisticas")
    assert code == 2 and "--cafile solo sirve con --tls" in err


def test_the_real_script_over_tls_interactive_with_the_token_from_the_environment(
    tls_server, certificate, monkeypatch
):
    monkeypatch.setenv("PEDIDOS_TOKEN", ANA)
    term = Terminal("--port", tls_server.port, "--tls", "--cafile", certificate[0])
    try:
        term.expect("Cliente (hasta 200 caracteres): ")
        term.type("Ana\r")
        term.expect("Productos, separados por comas")
        term.type("pan\r")
        term.expect("Dirección (hasta 500 caracteres): ")
        term.type("Calle 1\r")
        term.expect("Pedido recibido: número ")
        assert term.finish() == 0
    finally:
        term.close()
    monkeypatch.setenv("PEDIDOS_TOKEN", "not-a-token-4")
    result = subprocess.run(
        [sys.executable, str(CLIENTE), "--port", str(tls_server.port), "--tls", "--estadisticas"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3 and "no es de confianza" in reason(result.stderr)
