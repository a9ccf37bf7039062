"""The client library where connections end or misbehave: idle closes, a request
that cannot be written, a call interrupted, replies no order server sends.
Real server processes (stopped by their pid) and loopback listeners."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import CLIENTE, LineClient, ServerProcess, clean_environ, running_server, wait_for

from pedidos.client import AsyncClient, Client, ConnectionProblem

_names = itertools.count(1)

IDLE_NOTICE = (
    b'{"ok": false, "error": "tiempo_agotado", "mensaje": "Sin actividad durante 1 s; se cierra la '
    b'conexi\xc3\xb3n.", "conexion_cerrada": true}\n'
)
STATS = b'{"ok": true, "estados": {"pendiente": 0}, "workers": 7}\n'


def unique(prefix: str = "rob") -> str:
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server that closes a connection silent for 1 s."""
    with running_server(tmp_path_factory.mktemp("idle"), "--work-time", "0", "--idle-timeout", "1") as srv:
        yield srv


def others_gone(port: int) -> bool:
    """True once the server holds no connection but the one asking."""
    with LineClient("127.0.0.1", port) as probe:
        return probe.ask({"accion": "estadisticas"})["conexiones"] == 1


# --- a connection the server closed for being idle -----------------------------------


def test_blocking_client_connects_again_after_an_idle_close_and_sends_once(idle_server):
    # Was: the first call after the server's idle close raised "el servidor cerró
    # la conexión: sin actividad durante 1 s" (AsyncClient reconnected).
    name = unique()
    with Client("127.0.0.1", idle_server.port, timeout=5) as client:
        assert client.stats()["workers"] == 2
        wait_for(lambda: others_gone(idle_server.port), timeout=10)
        receipt = client.submit(name, ["pan"], "Calle 1")
        assert [o.id for o in client.list(cliente=name)] == [receipt.id]
        wait_for(lambda: others_gone(idle_server.port), timeout=10)
        # A pipeline too starts on a new connection.
        (second,) = client.submit_many([{"cliente": name, "productos": ["té"], "direccion": "C"}])
        assert [o.id for o in client.list(cliente=name)] == [receipt.id, second.id]


def test_async_client_connects_again_after_an_idle_close_and_sends_once(idle_server):
    name = unique()

    async def main() -> list[int]:
        async with AsyncClient("127.0.0.1", idle_server.port, timeout=5) as client:
            assert (await client.stats())["workers"] == 2
            await asyncio.to_thread(wait_for, lambda: others_gone(idle_server.port), 10)
            receipt = await client.submit(name, ["pan"], "Calle 1")
            return [receipt.id] + [o.id for o in await client.list(cliente=name)]

    sent, *listed = asyncio.run(main())
    assert listed == [sent]


def idle_then_answer(number: int, line: bytes) -> bytes:
    """The first connection gets the idle notice for its first request (the
    server's notice crossing the request on the wire); later ones, answers."""
    return IDLE_NOTICE if number == 0 else STATS


def test_blocking_request_crossing_the_idle_notice_is_sent_again_on_a_new_connection(fake_server):
    fake = fake_server(idle_then_answer)
    with Client("127.0.0.1", fake.port, timeout=5) as client:
        assert client.stats()["workers"] == 7
    assert [len(seen) for seen in fake.requests] == [1, 1]


def test_async_request_crossing_the_idle_notice_is_sent_again_on_a_new_connection(fake_server):
    fake = fake_server(idle_then_answer)

    async def main() -> int:
        async with AsyncClient("127.0.0.1", fake.port, timeout=5) as client:
            return (await client.stats())["workers"]

    assert asyncio.run(main()) == 7
    assert [len(seen) for seen in fake.requests] == [1, 1]


def test_a_request_cut_off_without_the_notice_is_not_sent_again(fake_server):
    # Closed after reading the request, with no notice: it may have had its
    # effect, so neither client sends it twice.
    fake = fake_server(lambda number, line: None)
    order = ("Ana", ["pan"], "Calle 1")
    with pytest.raises(ConnectionProblem, match="cerró|perdió"):
        Client("127.0.0.1", fake.port, timeout=5).submit(*order)

    async def main() -> None:
        await AsyncClient("127.0.0.1", fake.port, timeout=5).submit(*order)

    with pytest.raises(ConnectionProblem, match="cerró|perdió"):
        asyncio.run(main())
    assert [len(seen) for seen in fake.requests] == [1, 1]
    assert all(json.loads(seen[0])["cliente"] == "Ana" for seen in fake.requests)


# --- a request that cannot be written, or a call cut short ----------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"cliente": "Ana", "productos": {"pan"}, "direccion": "Calle 1"},  # a set: no JSON
        {"cliente": "\udcff", "productos": ["pan"], "direccion": "Calle 1"},  # a lone surrogate: no UTF-8
    ],
)
def test_async_a_request_that_cannot_be_written_leaves_the_connection_in_step(idle_server, bad):
    # Was: AsyncClient took a place in line before writing the request, so one
    # that could not be encoded left a place no reply would fill: the next
    # request's reply went to it, and the next request hung until its timeout.
    async def main() -> int:
        async with AsyncClient("127.0.0.1", idle_server.port, timeout=3) as client:
            with pytest.raises((TypeError, ValueError)):
                await client.request(bad)
            return (await client.stats())["workers"]

    assert asyncio.run(main()) == 2


class Interrupted(Exception):
    """Raised by a signal handler, as Ctrl-C raises KeyboardInterrupt."""


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server whose orders take 2 s: an `esperar` on one is answered late."""
    with running_server(tmp_path_factory.mktemp("busy"), "--work-time", "2") as srv:
        yield srv


def test_blocking_a_call_interrupted_before_its_reply_does_not_hand_that_reply_to_the_next(busy_server):
    # Was: the connection stayed open with the interrupted request's reply on its
    # way, and the next call read it as its own (here `get` returned, or
    # refused with, the `esperar` reply about another order).

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    with Client("127.0.0.1", busy_server.port, timeout=10) as client:
        slow = client.submit(unique(), ["pan"], "Calle 1")
        other = client.submit(unique(), ["té"], "Calle 2")
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(Interrupted):
                client.wait(slow.id, timeout=1)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert client.get(other.id).id == other.id


# --- replies and names no order server gives -------------------------------------------

DEEP = b'{"ok": true, "pedido": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"


def cliente(*argv: str | bytes, stdin: bytes = b"", timeout: float = 30) -> tuple[int, str]:
    """The real `cliente.py` (argv may hold bytes that are no UTF-8): its exit
    status and stderr; stdout is dropped."""
    done = subprocess.run(
        [sys.executable, str(CLIENTE), *argv],
        input=stdin,
        capture_output=True,
        env=clean_environ(),
        timeout=timeout,
    )
    return done.returncode, done.stderr.decode("utf-8", "replace")


def test_a_reply_nested_deeper_than_python_reads_is_a_connection_problem(fake_server):
    # Was RecursionError out of json.loads: a traceback and exit 1 from cliente.py.
    fake = fake_server(lambda number, line: DEEP)
    with pytest.raises(ConnectionProblem, match="respuesta ilegible"):
        Client("127.0.0.1", fake.port, timeout=5).get(1)

    async def main() -> None:
        await AsyncClient("127.0.0.1", fake.port, timeout=5).get(1)

    with pytest.raises(ConnectionProblem, match="respuesta ilegible"):
        asyncio.run(main())
    code, err = cliente("--host", "127.0.0.1", "--port", str(fake.port), "--consultar", "1")
    assert code == 3 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("cliente.py: respuesta ilegible del servidor")


def test_a_reply_that_never_ends_is_not_called_silence(fake_server):
    # Bytes kept coming but never the end of the line: "nada en N s" was false.
    fake = fake_server(lambda number, line: b'{"ok": true, "pedido": {"id": 1, "cliente": "')
    with pytest.raises(ConnectionProblem, match="no terminó en 0.5 s"):
        Client("127.0.0.1", fake.port, timeout=0.5).get(1)

    async def main() -> None:
        await AsyncClient("127.0.0.1", fake.port, timeout=0.5).get(1)

    with pytest.raises(ConnectionProblem, match="no terminó en 0.5 s"):
        asyncio.run(main())


def test_a_reply_past_any_order_servers_length_is_a_connection_problem(fake_server, monkeypatch):
    # A peer that streams bytes and never a newline (a wrong port, a broken
    # proxy) filled the client's memory until the timeout. Past the longest
    # reply an order server sends, the client gives up at once: the bound is
    # made small here, the reply twice as long, and the timeout long.
    import pedidos.client.blocking
    import pedidos.client.interleave
    import pedidos.client.wire

    for module in (pedidos.client.blocking, pedidos.client.interleave, pedidos.client.wire):
        monkeypatch.setattr(module, "MAX_REPLY_BYTES", 256 * 1024)
    fake = fake_server(lambda number, line: b'{"ok": true, "pedido": {"cliente": "' + b"x" * 512 * 1024)
    started = time.monotonic()
    with pytest.raises(ConnectionProblem, match="MiB sin terminar .ningún servidor de pedidos"):
        Client("127.0.0.1", fake.port, timeout=20).get(1)
    with pytest.raises(ConnectionProblem, match="sin terminar"):
        list(Client("127.0.0.1", fake.port, timeout=20).pipeline([{"accion": "consultar", "id": 1}]))

    async def main() -> None:
        await AsyncClient("127.0.0.1", fake.port, timeout=20).get(1)

    with pytest.raises(ConnectionProblem, match="sin terminar"):
        asyncio.run(main())
    assert time.monotonic() - started < 15  # not one timeout


def test_replies_of_many_megabytes_come_whole_to_both_clients(fake_server):
    # Each read now searches only its own bytes for a line's end: the replies
    # must come out the same, whole and in order, however they were cut.
    big = "x" * (12 * 1024 * 1024)

    def reply(number: int, line: bytes) -> bytes:
        n = json.loads(line)["id"]
        order = {"id": n, "cliente": big if n % 2 else "Ana", "productos": ["pan"], "direccion": "C"}
        order.update(estado="listo", fecha_recibido="2026-12-04T10:00:00", intentos=0)
        return json.dumps({"ok": True, "pedido": order}).encode() + b"\n"

    fake = fake_server(reply)
    with Client("127.0.0.1", fake.port, timeout=30) as client:
        got = [client.request({"accion": "consultar", "id": n}) for n in (1, 2)]
        piped = list(client.pipeline([{"accion": "consultar", "id": n} for n in (3, 4, 5)]))
    assert [r["pedido"]["id"] for r in got + piped] == [1, 2, 3, 4, 5]
    assert [len(r["pedido"]["cliente"]) for r in got + piped] == [len(big), 3, len(big), 3, len(big)]

    async def main() -> list[dict]:
        async with AsyncClient("127.0.0.1", fake.port, timeout=30) as client:
            return await asyncio.gather(
                *(client.request({"accion": "consultar", "id": n}) for n in (1, 2, 3))
            )

    assert [len(r["pedido"]["cliente"]) for r in asyncio.run(main())] == [len(big), 3, len(big)]


def test_a_host_name_dns_cannot_carry_is_not_found():
    # Was UnicodeError from the IDNA codec (a label over 63 characters): a
    # traceback and exit 1 from cliente.py.
    host = "a" * 300
    with pytest.raises(ConnectionProblem, match="no se encuentra el servidor"):
        Client(host, 8888, timeout=5).stats()

    async def main() -> None:
        await AsyncClient(host, 8888, timeout=5).stats()

    with pytest.raises(ConnectionProblem, match="no se encuentra el servidor"):
        asyncio.run(main())
    code, err = cliente("--host", host, "--estadisticas")
    assert code == 3 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "no se encuentra el servidor" in err


# --- cliente.py with text that is no UTF-8 ------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([b"--cliente", b"\xff", b"--productos", b"pan", b"--direccion", b"Calle 1"], {}, "opción --cliente"),
        (
            [b"--cliente", b"A", b"--productos", b"pan", b"q\xe9", b"--direccion", b"d"],
            {},
            "opción --productos",
        ),
        ([b"--consultar-referencia", b"ref-\xff"], {}, "opción --consultar-referencia"),
        ([b"--listar", b"--contiene", b"p\xe9rez"], {}, "opción --contiene"),
        ([b"--estadisticas", b"--token", b"\xff"], {}, "opción --token"),
        ([b"--estadisticas"], {"PEDIDOS_TOKEN": b"k\xff"}, "la variable PEDIDOS_TOKEN"),
    ],
)
def test_cliente_text_that_is_no_utf8_is_a_usage_error(dead_port, argv, env, named):
    # Was UnicodeEncodeError's traceback (exit 1) when the request was written:
    # Python hands such bytes over as lone surrogates, which UTF-8 cannot carry.
    done = subprocess.run(
        [sys.executable, str(CLIENTE), "--port", str(dead_port), *argv],
        capture_output=True,
        env={**clean_environ(), **{k.encode(): v for k, v in env.items()}},  # type: ignore[dict-item]
        timeout=30,
    )
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2 and "Traceback" not in err, err
    assert (
        err.splitlines()[-1]
        == f"cliente.py: error: {named}: no es texto UTF-8 (¿la terminal usa otra codificación?)"
    )
