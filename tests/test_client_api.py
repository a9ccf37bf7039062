"""The Python client library, blocking and asyncio, against the real server."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pedidos.client import UnexpectedReply
from pedidos.client.blocking import AsyncClient, Client, ConnectionProblem, Order, Receipt, Refused

_names = itertools.count(1)


def unique(prefix: str = "api") -> str:
    """A client name no other test uses, since the servers are shared."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


def order(cliente: str, n: int = 0) -> dict[str, Any]:
    return {"cliente": cliente, "productos": ["pan", f"item {n}"], "direccion": "Calle 1"}


# --- blocking ---------------------------------------------------------------------------


def test_submit_get_wait_return_typed_records(quick_server):
    name = unique()
    with Client("127.0.0.1", quick_server.port) as client:
        assert client.greeting["servidor"] == "pedidos"
        receipt = client.submit(f"  {name}  ", ["pan", " agua "], "Av. Siempre Viva 742")
        assert isinstance(receipt, Receipt) and receipt.estado == "pendiente" and not receipt.duplicado
        got = client.get(receipt.id)
        assert isinstance(got, Order)
        assert (got.cliente, got.productos, got.referencia) == (name, ("pan", "agua"), None)
        done = client.wait(receipt.id, timeout=20)
    assert done.estado == "listo" and done.final
    assert done.worker in (1, 2) and done.intentos == 0
    assert done.duration is not None and done.duration >= 0
    assert done.received_at <= done.started_at <= done.finished_at  # type: ignore[operator]
    assert done.as_dict()["productos"] == ["pan", "agua"]


def test_referencia_makes_a_retry_safe(quick_server):
    ref = unique("ref")
    with Client("127.0.0.1", quick_server.port) as client:
        first = client.submit("Ana", ["pan"], "Calle 1", referencia=ref)
        again = client.submit("Ana", ["pan"], "Calle 1", referencia=ref)
    assert again == Receipt(first.id, again.estado, duplicado=True)


@pytest.mark.parametrize(
    ("call", "code", "word"),
    [
        (lambda c: c.submit("   ", ["pan"], "Calle 1"), "pedido_invalido", "cliente"),
        (lambda c: c.submit("Ana", [], "Calle 1"), "pedido_invalido", "productos"),
        # a text is no list of products: never sent as ["p", "a", "n"]
        (lambda c: c.submit("Ana", "pan", "Calle 1"), "pedido_invalido", "productos"),
        (lambda c: c.submit("Ana", {"pan": 1}, "Calle 1"), "pedido_invalido", "productos"),
        (lambda c: c.submit("Ana", None, "Calle 1"), "pedido_invalido", "productos"),
        # the server closes the connection after this one: the next call connects again
        (lambda c: c.submit("B" * 70_000, ["pan"], "Calle 1"), "demasiado_grande", "límite"),
        (lambda c: c.get(10**12), "no_encontrado", "10000"),
        (lambda c: c.cancel(10**12), "no_encontrado", "10000"),
        (lambda c: c.list(limite=1001), "mensaje_invalido", "limite"),
        (lambda c: c.call({"accion": "bailar"}), "accion_desconocida", "bailar"),
    ],
)
def test_a_refusal_raises_refused_with_code_and_message(quick_server, call, code, word):
    with Client("127.0.0.1", quick_server.port) as client:
        with pytest.raises(Refused) as caught:
            call(client)
        assert caught.value.code == code and word in caught.value.mensaje
        assert client.stats()["workers"] == 2  # a refusal leaves the connection usable


def test_list_filters_and_pages(quick_server):
    name = unique()
    with Client("127.0.0.1", quick_server.port) as client:
        ids = [r.id for r in client.submit_many(order(name, n) for n in range(7))]
        # Workers need not finish orders in the order they came: wait for each.
        assert all(client.wait(i, 20).estado == "listo" for i in ids)
        everything = client.list(cliente=name, limite=1000)
        first = client.list(cliente=name, limite=3)
        rest = client.list(cliente=name, desde_id=first[-1].id)
        none_pending = client.list(cliente=name, estado="pendiente")
    assert [o.id for o in everything] == ids
    assert [o.id for o in first + rest] == ids
    assert none_pending == [] and all(o.cliente == name for o in everything)


def test_stats_is_a_typed_dict_of_the_reply(quick_server):
    with Client("127.0.0.1", quick_server.port) as client:
        stats = client.stats()
    assert set(stats) >= {"estados", "workers", "conexiones", "en_cola", "uptime_s"}
    assert set(stats["estados"]) == {"pendiente", "en proceso", "listo", "cancelado", "fallido"}


def test_submit_many_pipelines_and_keeps_order_with_refusals_in_place(quick_server):
    name = unique()
    orders = [order(name, n) for n in range(300)]
    orders[10] = {"cliente": name, "productos": "pan", "direccion": "d"}
    orders[200] = {"cliente": name, "productos": ["pan"], "direccion": "d", "dirección": "x"}
    with Client("127.0.0.1", quick_server.port) as client:
        results = list(client.submit_many(orders, window=16))
        listed = client.list(cliente=name, limite=1000)
    assert len(results) == 300
    assert [i for i, r in enumerate(results) if isinstance(r, Refused)] == [10, 200]
    assert results[200].code == "pedido_invalido" and "dirección" in results[200].mensaje  # type: ignore[union-attr]
    ids = [r.id for r in results if isinstance(r, Receipt)]
    assert ids == sorted(ids) and [o.id for o in listed] == ids


def test_stopping_a_pipeline_early_leaves_the_client_usable(quick_server):
    name = unique()
    with Client("127.0.0.1", quick_server.port) as client:
        results = client.submit_many(order(name, n) for n in range(5000))
        first = [next(results) for _ in range(3)]
        results.close()
        assert all(isinstance(r, Receipt) for r in first)
        assert client.get(first[0].id).cliente == name


def test_wait_runs_out_with_the_order_as_it_stands_and_follow_sees_each_state(slow_server):
    with Client("127.0.0.1", slow_server.port) as client:
        receipt = client.submit(unique(), ["pan"], "Calle 1")
        with pytest.raises(Refused) as caught:
            client.wait(receipt.id, timeout=0.05)
        assert caught.value.code == "tiempo_agotado"
        assert caught.value.order is not None and caught.value.order.estado in ("pendiente", "en proceso")
        states = [o.estado for o in client.follow(receipt.id, interval=0.1)]
        assert client.wait(receipt.id, timeout=None).estado == "listo"
    assert states[-1] == "listo" and "en proceso" in states
    assert states == sorted(states, key=["pendiente", "en proceso", "listo"].index)


def test_cancel_a_pending_order(slow_server):
    name = unique()
    with Client("127.0.0.1", slow_server.port) as client:
        receipts = list(client.submit_many(order(name, n) for n in range(4)))
        cancelled = client.cancel(receipts[-1].id)  # two workers, 0.5 s each: the 4th waits
        assert cancelled.estado == "cancelado" and cancelled.final
        with pytest.raises(Refused) as caught:
            client.cancel(receipts[-1].id)
    assert caught.value.code == "no_cancelable"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost"])
def test_names_and_both_address_families(quick_server, host):
    with Client(host, quick_server.port) as client:
        assert client.stats()["workers"] == 2


def test_each_address_a_name_resolves_to_is_tried(quick_server, monkeypatch):
    port = quick_server.port
    # 127.0.0.2 is loopback too but nobody listens there: refused, then ::1 answers.
    fake = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: fake)
    with Client("pedidos.example", port) as client:
        assert client.stats()["workers"] == 2

    async def main() -> int:
        async with AsyncClient("pedidos.example", port) as aclient:
            return (await aclient.stats())["workers"]

    assert asyncio.run(main()) == 2


def test_connection_problems_are_not_refusals(fake_server, dead_port):
    with pytest.raises(ConnectionProblem, match="rechazada"):
        Client("127.0.0.1", dead_port, timeout=2).connect()
    with pytest.raises(ConnectionProblem, match="no se encuentra"):
        Client("nadie.invalid", 8888, timeout=2).connect()
    with pytest.raises(ConnectionProblem, match="dejó de responder"):
        Client("127.0.0.1", fake_server("silent").port, timeout=0.3).connect()
    mute = Client("127.0.0.1", fake_server("mute").port, timeout=0.3)
    with pytest.raises(ConnectionProblem, match="dejó de responder"):
        mute.get(1)
    assert not mute.connected  # a late reply would be taken for the next one's
    with pytest.raises(ConnectionProblem, match="cerró|perdió"):
        Client("127.0.0.1", fake_server("hangup").port, timeout=2).stats()
    with pytest.raises(Refused) as caught:
        Client("127.0.0.1", fake_server("busy").port, timeout=2).connect()
    assert caught.value.code == "servidor_ocupado"
    assert not issubclass(ConnectionProblem, Refused) and not issubclass(Refused, ConnectionProblem)


# --- asyncio ------------------------------------------------------------------------------


def test_async_client_does_what_the_blocking_one_does(quick_server):
    name = unique()

    async def main() -> None:
        async with AsyncClient("::1", quick_server.port) as client:
            receipt = await client.submit(name, ["pan"], "Calle 1", referencia=name)
            assert (await client.submit(name, ["pan"], "Calle 1", referencia=name)).duplicado
            assert (await client.wait(receipt.id, 20)).estado == "listo"
            assert (await client.get(receipt.id)).referencia == name
            assert [o.id for o in await client.list(cliente=name)] == [receipt.id]
            assert (await client.stats())["workers"] == 2
            with pytest.raises(Refused) as caught:
                await client.cancel(receipt.id)
            assert caught.value.code == "no_cancelable"

    asyncio.run(main())


def test_async_requests_from_many_tasks_share_one_connection(quick_server):
    name = unique()

    async def main() -> None:
        async with AsyncClient("127.0.0.1", quick_server.port) as client:
            receipts = await asyncio.gather(*(client.submit(name, [f"p{n}"], "Calle") for n in range(50)))
            orders = await asyncio.gather(*(client.get(r.id) for r in receipts))
            assert [o.productos for o in orders] == [(f"p{n}",) for n in range(50)]
            assert (await client.stats())["conexiones"] >= 1

    asyncio.run(main())


def test_async_submit_many_from_a_list_and_from_an_async_source(quick_server):
    name = unique()

    async def trickle() -> AsyncIterator[dict[str, Any]]:
        for n in range(20):
            await asyncio.sleep(0)
            yield order(name, n) if n != 5 else {"cliente": name}

    async def main() -> None:
        async with AsyncClient("127.0.0.1", quick_server.port) as client:
            batch = [r async for r in client.submit_many([order(name, n) for n in range(500)], window=64)]
            trickled = [r async for r in client.submit_many(trickle(), window=4)]
            assert all(isinstance(r, Receipt) for r in batch)
            assert [i for i, r in enumerate(trickled) if isinstance(r, Refused)] == [5]
            listed = await client.list(cliente=name, limite=1000)
            assert len(listed) == 519

    asyncio.run(main())


def test_async_follow_and_wait_timeout(slow_server):
    async def main() -> None:
        async with AsyncClient("localhost", slow_server.port) as client:
            receipt = await client.submit(unique(), ["pan"], "Calle 1")
            with pytest.raises(Refused) as caught:
                await client.wait(receipt.id, 0.05)
            assert caught.value.code == "tiempo_agotado"
            states = [o.estado async for o in client.follow(receipt.id, interval=0.1)]
            assert states[-1] == "listo" and "en proceso" in states

    asyncio.run(main())


def test_async_connection_problems(fake_server, dead_port):
    async def expect(client: AsyncClient, match: str) -> None:
        with pytest.raises(ConnectionProblem, match=match):
            await client.stats()

    async def main() -> None:
        await expect(AsyncClient("127.0.0.1", dead_port, timeout=2), "rechazada")
        await expect(AsyncClient("127.0.0.1", fake_server("silent").port, timeout=0.3), "dejó de responder")
        await expect(AsyncClient("127.0.0.1", fake_server("mute").port, timeout=0.3), "dejó de responder")
        await expect(AsyncClient("127.0.0.1", fake_server("hangup").port, timeout=2), "cerró|perdió")
        with pytest.raises(Refused):
            await AsyncClient("127.0.0.1", fake_server("busy").port).connect()

    asyncio.run(main())


def test_async_a_caller_that_gives_up_does_not_disturb_the_others(slow_server):
    async def main() -> None:
        async with AsyncClient("127.0.0.1", slow_server.port) as client:
            receipt = await client.submit(unique(), ["pan"], "Calle 1")
            waiting = asyncio.ensure_future(client.wait(receipt.id, 20))
            await asyncio.sleep(0)
            waiting.cancel()
            # Replies come in order: this one is only written after the cancelled wait's.
            assert (await client.wait(receipt.id, 20)).estado == "listo"
            assert (await client.get(receipt.id)).estado == "listo"

    asyncio.run(main())


def test_async_client_connects_again_after_a_request_over_the_size_limit(quick_server):
    async def scenario() -> tuple[str, int]:
        async with AsyncClient("127.0.0.1", quick_server.port) as client:
            with pytest.raises(Refused) as caught:
                await client.submit("B" * 70_000, ["pan"], "Calle 1")
            return caught.value.code, (await client.stats())["workers"]

    assert asyncio.run(scenario()) == ("demasiado_grande", 2)


def test_a_reply_not_shaped_as_the_contract_says_raises_unexpected_reply(fake_server):
    # Was a KeyError from deep in the client; now a ConnectionProblem naming the
    # field, and the connection is dropped like after any other problem.
    fake = fake_server("answer", b'{"ok": true, "pedido": {"id": 1, "cliente": 5}}\n')
    with Client("127.0.0.1", fake.port, timeout=5) as client:
        with pytest.raises(UnexpectedReply, match="'cliente' no es un texto"):
            client.get(1)
        assert not client.connected
        with pytest.raises(ConnectionProblem, match="'estados' falta"):
            client.stats()
