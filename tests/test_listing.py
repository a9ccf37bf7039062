"""`listar` with `contiene` (a part of `cliente`, any case, any alphabet) and
`orden` (newest first), from the field rules through the store to the wire,
the Python clients and `cliente.py --listar --contiene --recientes`; and how
the clients read an `esperar` that a stopping server cut short."""

from __future__ import annotations

import asyncio
import itertools
import shlex
import time
from pathlib import Path

import pytest
from conftest import LineClient, storage_of

from pedidos.client.blocking import AsyncClient, Client, ConnectionProblem, ServerStopping
from pedidos.client.cli.main import main
from pedidos.client.records import polled_order
from pedidos.domain import NewOrder
from pedidos.protocol.replies import MENSAJE_INVALIDO, RequestError
from pedidos.protocol.validation import parse_request

_names = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test uses (the servers are shared), with a part to search for."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


# --- field rules ----------------------------------------------------------------------


def test_contiene_and_orden_are_checked_and_have_defaults():
    command = parse_request({"accion": "listar", "contiene": "  pérez "})
    assert command.args["contiene"] == "pérez" and command.args["orden"] == "asc"
    assert parse_request({"accion": "listar", "orden": "desc"}).args["orden"] == "desc"
    assert parse_request({"accion": "listar", "contiene": "x" * 200}).args["contiene"] == "x" * 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("contiene", ""),
        ("contiene", "   "),
        ("contiene", "x" * 201),
        ("contiene", 3),
        ("contiene", ["pérez"]),
        ("orden", "DESC"),
        ("orden", "descendente"),
        ("orden", ""),
        ("orden", 1),
        ("orden", True),
        ("orden", ["desc"]),
    ],
)
def test_bad_contiene_or_orden_is_refused_naming_the_field(field, value):
    with pytest.raises(RequestError) as info:
        parse_request({"accion": "listar", field: value})
    assert info.value.code == MENSAJE_INVALIDO and f"'{field}'" in info.value.mensaje
    assert "desconocido" not in info.value.mensaje  # a known field, with a bad value


# --- the store --------------------------------------------------------------------------

CLIENTES = ["Juan PÉREZ", "Ana", "pérez y cía", "ÑANDÚ SA", "Perez sin tilde", "María Pérez", "ana"]


@pytest.fixture
def store(tmp_path: Path):
    """The storage interface on a new database (conftest.StorageHarness)."""
    with storage_of(tmp_path / "pedidos.db") as s:
        s.submit(*[NewOrder(c, ("pan",), "Calle 1") for c in CLIENTES])
        yield s


def ids(store, contiene=None, orden="asc", desde_id=0, limite=100, estado=None, cliente=None):
    return [o["id"] for o in store.list_orders(estado, cliente, desde_id, limite, contiene, orden)]


def test_contiene_ignores_case_beyond_ascii(store):
    # SQLite's LIKE and lower() fold ASCII only: "pérez" would miss "PÉREZ".
    assert ids(store, "pérez") == [1, 3, 6]
    assert ids(store, "PÉREZ") == [1, 3, 6]
    assert ids(store, "ÉR") == [1, 3, 6]
    assert ids(store, "ñandú") == [4]
    assert ids(store, "perez") == [5]  # an accent is a different letter, not a case
    assert ids(store, "ana") == [2, 7]
    assert ids(store, "%") == [] and ids(store, "_") == []  # no LIKE wildcards
    assert ids(store, "pérez", cliente="María Pérez") == [6]


def test_desc_is_newest_first_and_pages_downwards(store):
    assert ids(store, orden="desc") == [7, 6, 5, 4, 3, 2, 1]
    assert ids(store, orden="desc", limite=3) == [7, 6, 5]
    assert ids(store, orden="desc", desde_id=5, limite=3) == [4, 3, 2]
    assert ids(store, orden="desc", desde_id=2) == [1]
    assert ids(store, orden="desc", desde_id=1) == []
    assert ids(store, "pérez", orden="desc") == [6, 3, 1]
    assert ids(store, "pérez", orden="desc", desde_id=6) == [3, 1]
    store.cancel(6)
    assert ids(store, orden="desc", estado="pendiente", limite=2) == [7, 5]
    assert ids(store, desde_id=5) == [6, 7]  # asc still pages upwards


# --- the wire and the Python clients ------------------------------------------------------


def test_listar_on_the_wire(quick_server):
    tag = unique("wire")
    names = [f"Juan PÉREZ {tag}", f"ana {tag}", f"pérez y cía {tag}"]
    with LineClient("127.0.0.1", quick_server.port) as line:
        stored = [line.ask({"cliente": n, "productos": ["p"], "direccion": "d"})["id"] for n in names]
        reply = line.ask({"accion": "listar", "contiene": f"PÉREZ {tag.upper()}", "orden": "desc"})
        assert reply["ok"] is True
        assert [(o["id"], o["cliente"]) for o in reply["pedidos"]] == [(stored[0], names[0])]
        reply = line.ask({"accion": "listar", "contiene": tag, "orden": "desc", "desde_id": stored[2]})
        assert [o["id"] for o in reply["pedidos"]] == [stored[1], stored[0]]
        for field, value in [("orden", "nuevo"), ("contiene", " ")]:
            reply = line.ask({"accion": "listar", field: value})
            assert reply["error"] == MENSAJE_INVALIDO and f"'{field}'" in reply["mensaje"]


def test_client_list_takes_contiene_and_orden(quick_server):
    tag = unique("api")
    with Client("127.0.0.1", quick_server.port) as client:
        stored = [client.submit(f"{case} {tag}", ["p"], "d").id for case in ("Óscar", "ÓSCAR", "óscar")]
        assert [o.id for o in client.list(contiene=f"óscar {tag}")] == stored
        assert [o.id for o in client.list(contiene=tag, orden="desc", limite=2)] == stored[:0:-1]

    async def listed() -> list[int]:
        async with AsyncClient("127.0.0.1", quick_server.port) as aclient:
            return [o.id for o in await aclient.list(contiene=f"ÓSCAR {tag.upper()}", orden="desc")]

    assert asyncio.run(listed()) == stored[::-1]


# --- cliente.py ------------------------------------------------------------------------------


def test_cliente_listar_contiene_recientes_pages_past_the_server_limit(quick_server, capsys):
    tag = unique("cli")
    with Client("127.0.0.1", quick_server.port) as client:
        stored = [
            r.id
            for r in client.submit_many(
                {"cliente": f"Pérez {tag}", "productos": ["p"], "direccion": "d"} for _ in range(1010)
            )
        ]
    base = ["--port", quick_server.port, "--listar", "--contiene", f"PÉREZ {tag.upper()}"]
    code = main([str(a) for a in [*base, "--recientes", "--limite", 1005]])
    out = capsys.readouterr().out
    header, *rows, footer = out.splitlines()
    assert code == 0 and [int(row.split()[0]) for row in rows] == stored[::-1][:1005]
    more = footer.split("puede haber más: python3 cliente.py ", 1)[1].rstrip(")")
    then = ["--recientes", "--limite", "1005", "--desde-id", str(stored[5])]
    assert shlex.split(more) == [*map(str, base), *then]
    code = main(shlex.split(more))  # the rest, with the same filters
    rows = capsys.readouterr().out.splitlines()[1:]
    assert code == 0 and [int(row.split()[0]) for row in rows] == stored[4::-1]
    code = main([str(a) for a in [*base, "--limite", 2]])
    rows = capsys.readouterr().out.splitlines()[1:3]
    assert code == 0 and [int(row.split()[0]) for row in rows] == stored[:2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--contiene", "Ana"], "--contiene solo sirve con --listar"),
        (["--recientes"], "--recientes solo sirve con --listar"),
        (["--listar", "--contiene", "  "], "--contiene necesita un texto"),
    ],
)
def test_cliente_listar_options_are_checked(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_a_stopping_server_ends_waiting_with_server_stopping():
    order = {
        "id": 7,
        "cliente": "A",
        "productos": ["p"],
        "direccion": "d",
        "referencia": None,
        "estado": "en proceso",
        "fecha_recibido": "2026-11-28T03:15:13.942334+00:00",
        "fecha_inicio": None,
        "fecha_fin": None,
        "worker": 1,
        "intentos": 0,
    }
    out_of_time = {"ok": False, "error": "tiempo_agotado", "mensaje": "...", "pedido": order}
    assert polled_order(out_of_time).estado == "en proceso"  # ask again
    with pytest.raises(ServerStopping) as info:
        polled_order({**out_of_time, "apagando": True})
    assert info.value.order.id == 7 and isinstance(info.value, ConnectionProblem)
    assert "pedido 7" in str(info.value) and "se detuvo" in str(info.value)
