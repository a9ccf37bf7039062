"""The original README's walkthrough, end to end, against the real server."""

from conftest import ORIGINAL_ORDER, LineClient, running_server


def test_original_order_pasted_byte_by_byte_ends_listo(server, connect):
    client = connect("::1")
    assert client.greeting["ok"] is True and client.greeting["protocolo"] == 1
    for byte in ORIGINAL_ORDER.encode():
        client.send(bytes([byte]))
    ack = client.read()
    assert ack == {"ok": True, "id": 1, "estado": "pendiente"}
    done = client.ask({"accion": "esperar", "id": 1, "timeout": 20})
    order = done["pedido"]
    assert order["estado"] == "listo"
    assert order["cliente"] == "Juan Pérez" and order["productos"] == ["pan", "agua"]
    assert order["fecha_inicio"] <= order["fecha_fin"]


def test_sigterm_then_restart_finishes_pending(tmp_path):
    with running_server(tmp_path, "--work-time", "1", "--workers", "1") as srv:
        with LineClient("127.0.0.1", srv.port) as client:
            ids = [client.ask({"cliente": "A", "productos": ["x"], "direccion": "d"})["id"] for _ in range(3)]
        assert srv.stop() == 0
    with running_server(tmp_path, "--work-time", "0") as srv, LineClient("127.0.0.1", srv.port) as client:
        for order_id in ids:
            assert (
                client.ask({"accion": "esperar", "id": order_id, "timeout": 20})["pedido"]["estado"]
                == "listo"
            )
