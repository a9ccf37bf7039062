"""The panel over HTTP (issue 12, contract §10): /metrics, the event stream,
tokens, and bad input on its port. The page itself in a browser is in
test_panel_browser.py."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from conftest import ROOT, LineClient, panel_url, running_server, wait_for
from prometheus_client.parser import text_string_to_metric_families

ORDER = {"cliente": "Ana", "productos": ["pan"], "direccion": "Calle 1"}
ADMIN_TOKEN = "panel-admin-token-1"
CLIENTE_TOKEN = "panel-cliente-token-2"


@pytest.fixture(autouse=True)
def _no_pedidos_env(monkeypatch):
    # A developer's PEDIDOS_TOKEN would give the server a token and lock the panel.
    for name in list(os.environ):
        if name.startswith("PEDIDOS_"):
            monkeypatch.delenv(name)


def get(url: str, path: str, token: str | None = None, timeout: float = 10.0):
    """(status, headers, body) of a GET on the panel."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def metric_families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict, name: str, sample_name: str | None = None, **labels: str) -> float:
    for s in families[name].samples:
        if s.name == (sample_name or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample_name or name} {labels} in {families[name].samples}")


def stream_messages(url: str, token: str | None = None, timeout: float = 10.0):
    """An open /eventos response and a generator of its decoded messages."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("GET", "/eventos", headers=headers)
    response = conn.getresponse()

    def messages():
        while True:
            line = response.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                yield json.loads(line[6:])

    return conn, response, messages()


def test_metrics_match_estadisticas(tmp_path):
    with running_server(tmp_path, "--work-time", "0.3", "--workers", "1", "--panel", "0") as srv:
        url = panel_url(srv)
        # A first scrape reads the counts from the database; the next ones, within
        # a few seconds, take them as the server's events moved them since.
        assert get(url, "/metrics")[0] == 200
        with LineClient("127.0.0.1", srv.port) as client:
            ids = [client.ask(ORDER)["id"] for _ in range(5)]
            assert client.ask({"accion": "cancelar", "id": ids[-1]})["ok"]
            for order_id in ids[:-1]:
                assert client.ask({"accion": "esperar", "id": order_id, "timeout": 30})["ok"]

            def reported() -> bool:
                families = metric_families(get(url, "/metrics")[2].decode())
                return sample(families, "pedidos_terminados", "pedidos_terminados_total", estado="listo") == 4

            # `esperar` may find an order listo in the database a moment before
            # its worker's report reaches the server's counters.
            wait_for(reported, 10)
            stats = client.ask({"accion": "estadisticas"})
            status, headers, body = get(url, "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        families = metric_families(body.decode())
        assert sample(families, "pedidos_recibidos", "pedidos_recibidos_total") == 5
        assert sample(families, "pedidos_terminados", "pedidos_terminados_total", estado="listo") == 4
        assert sample(families, "pedidos_terminados", "pedidos_terminados_total", estado="cancelado") == 1
        for estado, count in stats["estados"].items():
            assert sample(families, "pedidos_estado", estado=estado) == count
        assert sample(families, "pedidos_en_cola") == stats["en_cola"]
        assert sample(families, "pedidos_workers") == stats["workers"] == 1
        assert sample(families, "pedidos_conexiones") == stats["conexiones"] == 1
        assert families["pedidos_ack_segundos"].type == "histogram"
        assert sample(families, "pedidos_ack_segundos", "pedidos_ack_segundos_count") == 5
        assert sample(families, "pedidos_ack_segundos", "pedidos_ack_segundos_bucket", le="+Inf") == 5
        assert 0 < sample(families, "pedidos_ack_segundos", "pedidos_ack_segundos_sum") < 5
        assert sample(families, "pedidos_lote_pedidos", "pedidos_lote_pedidos_sum") == 5
        # One order at a time, each waiting for its ack: five group commits of one.
        assert families["pedidos_commit_segundos"].type == "histogram"
        assert sample(families, "pedidos_commit_segundos", "pedidos_commit_segundos_count") == 5
        assert 0 < sample(families, "pedidos_commit_segundos", "pedidos_commit_segundos_sum") < 5
        for name in ("pedidos_worker_reinicios", "pedidos_conexiones_rechazadas", "pedidos_uptime_segundos"):
            assert name in families


def test_ack_histogram_counts_only_new_orders_stored(tmp_path):
    # A duplicado retry and a referencia_en_uso refusal are no new order: the
    # histogram's _count stays equal to pedidos_recibidos_total.
    with running_server(tmp_path, "--work-time", "0", "--panel", "0") as srv:
        url = panel_url(srv)
        with LineClient("127.0.0.1", srv.port) as client:
            for n in range(3):
                assert client.ask(dict(ORDER, referencia=f"r-{n}"))["estado"] == "pendiente"
            assert client.ask(dict(ORDER, referencia="r-0"))["duplicado"] is True
            assert client.ask(dict(ORDER, cliente="Otro", referencia="r-1"))["error"] == "referencia_en_uso"
            assert client.ask({"cliente": "", "productos": ["pan"], "direccion": "x"})["ok"] is False
        families = metric_families(get(url, "/metrics")[2].decode())
        assert sample(families, "pedidos_recibidos", "pedidos_recibidos_total") == 3
        assert sample(families, "pedidos_ack_segundos", "pedidos_ack_segundos_count") == 3
        assert sample(families, "pedidos_ack_segundos", "pedidos_ack_segundos_bucket", le="+Inf") == 3


def test_metrics_on_postgresql_count_each_commit(pg_url, tmp_path):
    with running_server(tmp_path, "--work-time", "0", "--workers", "1", "--panel", "0", db=pg_url) as srv:
        url = panel_url(srv)
        with LineClient("127.0.0.1", srv.port) as client:
            ids = [client.ask(ORDER)["id"] for _ in range(3)]
            for order_id in ids:
                assert client.ask({"accion": "esperar", "id": order_id, "timeout": 30})["ok"]
            stats = client.ask({"accion": "estadisticas"})
            status, _, body = get(url, "/metrics")
    assert status == 200
    families = metric_families(body.decode())
    assert sample(families, "pedidos_recibidos", "pedidos_recibidos_total") == 3
    for estado, count in stats["estados"].items():
        assert sample(families, "pedidos_estado", estado=estado) == count
    assert sample(families, "pedidos_commit_segundos", "pedidos_commit_segundos_count") == 3
    assert 0 < sample(families, "pedidos_commit_segundos", "pedidos_commit_segundos_sum") < 3
    assert sample(families, "pedidos_commit_segundos", "pedidos_commit_segundos_bucket", le="+Inf") == 3


def test_metrics_while_postgresql_is_down(pg_cluster, tmp_path):
    # The scrape that matters most: the server's own figures, not a 500 and a
    # traceback; the counts per estado, unknown, left out until it is back.
    args = ("--work-time", "0", "--workers", "1", "--panel", "0")
    with running_server(tmp_path, *args, db=pg_cluster.url()) as srv:
        url = panel_url(srv)
        with LineClient("127.0.0.1", srv.port) as client:
            order_id = client.ask(ORDER)["id"]
            assert client.ask({"accion": "esperar", "id": order_id, "timeout": 30})["ok"]
        conn, _, messages = stream_messages(url)
        pg_cluster.halt()
        try:
            # A page open through the outage: a picture a second, the database
            # unreadable for each, and one log line for them all (per 10 s).
            next(messages)
            wait_for(lambda: "panel could not read the database" in srv.log, 10)
            for _ in range(4):
                next(messages)
            assert srv.log.count("panel could not read the database") == 1, srv.log
            status, _, body = get(url, "/metrics")
            assert status == 200, body
            families = metric_families(body.decode())
            assert sample(families, "pedidos_recibidos", "pedidos_recibidos_total") == 1
            assert sample(families, "pedidos_workers") == 1
            assert "pedidos_estado" not in families and "pedidos_en_cola" not in families
            assert sample(families, "pedidos_base_legible") == 0
        finally:
            conn.close()
            pg_cluster.boot()

        def counted() -> dict | None:
            families = metric_families(get(url, "/metrics")[2].decode())
            return families if "pedidos_estado" in families else None

        families = wait_for(counted, 20)
        assert sample(families, "pedidos_estado", estado="listo") == 1
        assert sample(families, "pedidos_base_legible") == 1
    assert "Traceback" not in srv.log, srv.log
    assert "/metrics without pedidos_estado" in srv.log


def test_stream_pushes_changes_coalesced(tmp_path):
    with running_server(tmp_path, "--work-time", "0", "--panel", "0") as srv:
        conn, response, messages = stream_messages(panel_url(srv))
        try:
            assert response.status == 200
            assert response.getheader("Content-Type").startswith("text/event-stream")
            first = next(messages)
            assert first["completa"] and first["estados"]["listo"] == 0 and len(first["workers"]) == 2
            total = 3000
            sender = threading.Thread(target=_send_orders, args=(srv.port, total))
            started = time.monotonic()
            sender.start()
            seen = 0
            for message in messages:
                seen += 1
                if message["estados"]["listo"] == total:
                    break
                assert time.monotonic() - started < 60, "the stream never showed every order listo"
            elapsed = time.monotonic() - started
            sender.join(30)
            # At most four pictures a second, however many orders per second.
            assert seen <= 4 * elapsed + 4, (seen, elapsed)
            assert message["recibidos_total"] == total
            assert any(row["estado"] == "listo" for row in message["ultimos"])
        finally:
            conn.close()


def _send_orders(port: int, total: int) -> None:
    with LineClient("127.0.0.1", port) as client:
        line = (json.dumps(ORDER) + "\n").encode()
        for _ in range(total // 500):
            client.send(line * 500)
            for _reply in range(500):
                assert client.read()["ok"]


def test_a_worker_whose_order_failed_is_shown_free(tmp_path):
    # A task that raises: the order ends `fallido` and nothing of the chunk is
    # listo; the worker must not stay shown on that order for ever.
    state = tmp_path / "calls"
    state.mkdir()
    env = {"PYTHONPATH": str(ROOT / "tests"), "PEDIDOS_PRUEBA_DIR": str(state)}
    args = ("--workers", "1", "--tarea", "tareas_prueba:segun_cliente", "--reintentos", "0", "--panel", "0")
    with running_server(tmp_path, *args, env=env) as srv:
        conn, response, messages = stream_messages(panel_url(srv))
        try:
            with LineClient("127.0.0.1", srv.port) as client:
                order_id = client.ask(dict(ORDER, cliente="siempre-falla"))["id"]
                done = client.ask({"accion": "esperar", "id": order_id, "timeout": 30})
                assert done["pedido"]["estado"] == "fallido", done
            deadline = time.monotonic() + 10
            for message in messages:
                if message["estados"]["fallido"] == 1 and message["workers"][0]["pedido"] is None:
                    break
                assert time.monotonic() < deadline, f"worker still shown busy: {message['workers']}"
        finally:
            conn.close()


def test_the_first_picture_has_the_latest_orders(tmp_path):
    # Orders sent while no page was open: a page that opens shows them at once,
    # not an empty table until the next tick.
    with running_server(tmp_path, "--work-time", "0", "--panel", "0") as srv:
        url = panel_url(srv)
        with LineClient("127.0.0.1", srv.port) as client:
            ids = [client.ask(ORDER)["id"] for _ in range(3)]
        for _ in range(2):  # the first page ever, and one after it closed
            conn, _, messages = stream_messages(url)
            try:
                first = next(messages)
                assert first["completa"] and [row["id"] for row in first["ultimos"]] == ids[::-1], first
            finally:
                conn.close()
            with LineClient("127.0.0.1", srv.port) as client:
                ids.append(client.ask(ORDER)["id"])


def test_the_first_picture_on_postgresql_has_the_nodes(pg_url, tmp_path):
    args = ("--work-time", "0", "--workers", "1", "--panel", "0", "--nodo", "tienda-1")
    with running_server(tmp_path, *args, db=pg_url) as srv:
        with LineClient("127.0.0.1", srv.port) as client:
            order_id = client.ask(ORDER)["id"]
        conn, _, messages = stream_messages(panel_url(srv))
        try:
            first = next(messages)
        finally:
            conn.close()
    assert [node["nodo"] for node in first["nodos"]] == ["tienda-1"], first
    assert [row["id"] for row in first["ultimos"]] == [order_id], first
    assert sum(first["estados"].values()) == 1, first


def test_tokens_guard_the_data(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{ADMIN_TOKEN} admin\n{CLIENTE_TOKEN} cliente\n")
    with running_server(tmp_path, "--work-time", "0", "--panel", "0", "--token-file", str(tokens)) as srv:
        url = panel_url(srv)
        for path in ("/metrics", "/eventos"):
            for token in (None, "wrong-token-xyz"):
                status, headers, body = get(url, path, token)
                assert status == 401, (path, token)
                assert headers["WWW-Authenticate"].startswith("Bearer")
                assert b"pedidos_" not in body and b"estados" not in body
            status, _, body = get(url, path, CLIENTE_TOKEN)
            assert status == 403 and b"pedidos_" not in body
        status, _, body = get(url, "/metrics", ADMIN_TOKEN)
        assert status == 200 and b"pedidos_recibidos_total" in body
        conn, response, messages = stream_messages(url, ADMIN_TOKEN)
        try:
            assert response.status == 200
            assert "estados" in next(messages)
        finally:
            conn.close()
        # The page itself carries no data: it asks for the token.
        status, _, body = get(url, "/")
        assert status == 200 and b"Token de administrador" in body
    assert ADMIN_TOKEN not in srv.log and "wrong-token-xyz" not in srv.log
    assert "panel: failed authentication from 127.0.0.1" in srv.log


def test_panel_beyond_loopback_without_tokens_is_warned_about(tmp_path):
    # Every interface only for as long as the server takes to start: it stops at once.
    with running_server(tmp_path, "--work-time", "0", "--panel", "0", "--panel-host", "0.0.0.0") as srv:
        assert panel_url(srv).startswith("http://0.0.0.0:")
    warned = [line for line in srv.lines if "panel listening beyond this machine" in line]
    assert len(warned) == 1 and "WARNING" in warned[0] and "--token-file" in warned[0], srv.log
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{ADMIN_TOKEN} admin\n")
    args = ("--work-time", "0", "--panel", "0", "--panel-host", "0.0.0.0", "--token-file", str(tokens))
    with running_server(tmp_path, *args) as srv:
        panel_url(srv)
    assert "panel listening beyond" not in srv.log
    with running_server(tmp_path, "--work-time", "0", "--panel", "0") as srv:
        panel_url(srv)
    assert "panel listening beyond" not in srv.log


def test_bad_input_on_the_panel_port_never_stops_the_order_port(tmp_path):
    with running_server(tmp_path, "--work-time", "0", "--panel", "0") as srv:
        url = panel_url(srv)
        host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        assert get(url, "/nope")[0] == 404
        assert get(url, "/static/../../pedidos.db")[0] == 404
        assert get(url, "/static/")[0] in (403, 404)
        replies = []
        for junk in (
            b"\x00\xff\xfe garbage \r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
            b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"X-H: 1\r\n" * 10_000 + b"\r\n",
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 100_000,
        ):
            replies.append(_raw(host, port, junk))
        for reply in replies:
            assert reply == b"" or reply.split(b" ", 2)[1][:1] == b"4", reply[:200]
        # Slow clients: half a request each, held open.
        slow = []
        try:
            for _ in range(50):
                sock = socket.create_connection((host, port), timeout=5)
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                slow.append(sock)
            with LineClient("127.0.0.1", srv.port) as client:
                started = time.monotonic()
                reply = client.ask(ORDER)
                assert reply["ok"] and reply["estado"] == "pendiente"
                assert time.monotonic() - started < 5
            assert get(url, "/metrics")[0] == 200
        finally:
            for sock in slow:
                sock.close()
    # Refused requests are answered, not logged with a traceback each.
    assert "Traceback" not in srv.log, srv.log


def test_connections_held_open_on_the_panel_leave_descriptors_for_the_order_port(tmp_path):
    # More half-sent requests than the server has descriptors: the panel holds
    # its share (MAX_CONNECTIONS), the rest wait in the backlog; orders go on.
    from pedidos.panel import MAX_CONNECTIONS

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))  # the server inherits it
    try:
        args = ("--work-time", "0", "--workers", "1", "--max-connections", "100", "--panel", "0")
        with contextlib.ExitStack() as stack:
            srv = stack.enter_context(running_server(tmp_path, *args))
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            url = panel_url(srv)
            host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
            fds = f"/proc/{srv.proc.pid}/fd"
            before = len(os.listdir(fds))
            slow = []
            for _ in range(600):
                try:
                    sock = stack.enter_context(socket.create_connection((host, port), timeout=5))
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                except OSError:
                    break
                slow.append(sock)
            assert len(slow) > MAX_CONNECTIONS
            with LineClient("127.0.0.1", srv.port) as client:
                reply = client.ask(ORDER)
                assert reply["ok"] and reply["estado"] == "pendiente", (reply, srv.log)
            wait_for(lambda: "accepting more as they close" in srv.log, 10)
            # (a few more: the order's connection closing, the database's readers)
            assert len(os.listdir(fds)) <= before + MAX_CONNECTIONS + 8
            for sock in slow:
                sock.close()
            assert wait_for(lambda: get(url, "/metrics")[0] == 200, 10)
            assert len(os.listdir(fds)) <= before + 10
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "Traceback" not in srv.log, srv.log
    assert srv.log.count("accepting more as they close") == 1, srv.log


def test_clients_that_never_finish_a_request_are_cut_and_the_panel_serves_again(tmp_path):
    # A slowloris: more clients than the panel's cap, each holding a request
    # head open (half sent, or trickled a byte at a time). Without a deadline
    # they held the panel shut for everyone for as long as they liked.
    from pedidos.panel import MAX_CONNECTIONS
    from pedidos.panel.site import HEAD_S

    with running_server(tmp_path, "--work-time", "0", "--panel", "0") as srv, contextlib.ExitStack() as stack:
        url = panel_url(srv)
        host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        # Two well-behaved clients, there before: an open stream, and a
        # keep-alive connection idle after its request. Neither has a head in
        # progress, so neither is cut.
        stream, response, messages = stream_messages(url)
        stack.callback(stream.close)
        assert next(messages)["completa"]
        idle = http.client.HTTPConnection(host, port, timeout=10)
        stack.callback(idle.close)
        idle.request("GET", "/metrics")
        assert idle.getresponse().read()
        slow = []
        for _ in range(MAX_CONNECTIONS + 20):
            sock = stack.enter_context(socket.create_connection((host, port), timeout=5))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        trickler = slow[0]
        stop = threading.Event()

        def trickle() -> None:
            with contextlib.suppress(OSError):
                while not stop.wait(0.5):
                    trickler.sendall(b"a")

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        stack.callback(thread.join, 5)
        stack.callback(stop.set)
        wait_for(lambda: "accepting more as they close" in srv.log, 10)
        started = time.monotonic()

        def metrics_answered() -> bool:
            try:
                return get(url, "/metrics", timeout=2)[0] == 200
            except OSError:  # still behind the slow ones
                return False

        wait_for(metrics_answered, HEAD_S + 15)
        assert time.monotonic() - started > HEAD_S - 3  # the slow ones were given their time
        for sock in slow[:30]:  # cut: the panel closed them (the trickler too)
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
        with LineClient("127.0.0.1", srv.port) as client:
            assert client.ask(ORDER)["ok"]
        # The stream goes on: it shows that order (or its read times out).
        assert any(message["recibidos_total"] == 1 for message in messages)
        idle.request("GET", "/metrics")  # the idle connection too
        assert idle.getresponse().status == 200
    assert "Traceback" not in srv.log, srv.log


def test_a_stream_request_reset_at_once_logs_nothing(tmp_path):
    # A client that asks for /eventos and resets the connection before the
    # answer: nothing to log (it was a traceback per request), nothing left open.
    with running_server(tmp_path, "--work-time", "0", "--panel", "0") as srv:
        url = panel_url(srv)
        host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        for _ in range(20):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"GET /eventos HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

        def pages() -> float:
            return sample(metric_families(get(url, "/metrics")[2].decode()), "pedidos_panel_paginas")

        wait_for(lambda: pages() == 0, 10)
        with LineClient("127.0.0.1", srv.port) as client:
            assert client.ask(ORDER)["ok"]
    assert "Traceback" not in srv.log, srv.log


def test_head_of_the_stream_is_headers_only(tmp_path):
    # `curl -I` or a health check on /eventos: the headers, an end, no page counted.
    with running_server(tmp_path, "--work-time", "0", "--panel", "0") as srv:
        url = panel_url(srv)
        host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("HEAD", "/eventos")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Type").startswith("text/event-stream")
            response.read()
            conn.request("GET", "/metrics")  # the same connection: the HEAD ended
            families = metric_families(conn.getresponse().read().decode())
        finally:
            conn.close()
        assert sample(families, "pedidos_panel_paginas") == 0


def _raw(host: str, port: int, data: bytes) -> bytes:
    """Send `data` raw, half-close, and read what the panel answers until it closes."""
    with socket.create_connection((host, port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # The panel may refuse by closing on us mid-way, before our last
            # byte or our half-close (ENOTCONN: its reset came first): that is
            # a refusal too, and what it sent before closing is read below.
            if not isinstance(exc, (BrokenPipeError, ConnectionResetError)) and exc.errno != errno.ENOTCONN:
                raise
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def test_panel_port_taken_is_a_startup_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            [sys.executable, str(ROOT / "servidor.py"), "--port", "0", "--db", str(tmp_path / "p.db")]
            + ["--panel", str(taken.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "cannot listen for the panel on 127.0.0.1" in result.stderr


def test_without_the_extra_panel_is_one_line_and_exit_2(tmp_path):
    code = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "from pedidos.server.cli import main\n"
        f"sys.exit(main(['--panel', '0', '--port', '0', '--db', {str(tmp_path / 'p.db')!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert (
        "pip install 'pedidos[panel]'" in result.stderr
        and "pip install -e '.[panel]' in the pedidos folder" in result.stderr
    )
    assert not (tmp_path / "p.db").exists()  # refused before anything started


def test_without_panel_nothing_of_it_is_imported():
    code = (
        "import sys\n"
        "import pedidos.server.cli, pedidos.server.server, pedidos.server.connection\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'prometheus_client')"
        " or m.startswith('pedidos.panel.')])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_live_follows_the_bus_by_counts_not_by_orders():
    """The panel's subscriber in-process: counts move by whole events, a worker's
    order shows from its STARTED to its FINISHED, and a picture is plain JSON."""
    import asyncio

    from pedidos.events import (
        CANCELLED,
        FAILED,
        FINISHED,
        RECEIVED,
        REQUEUED,
        RETRIED,
        RETRYING,
        STARTED,
        Event,
        EventBus,
    )
    from pedidos.panel.live import Live, LiveSource
    from pedidos.stats import Stats

    async def scenario():
        bus, stats = EventBus(), Stats()
        stats.subscribe(bus)

        reads = []

        async def counts():
            reads.append(time.monotonic())
            return {"pendiente": 0, "en proceso": 0, "listo": 7, "cancelado": 0, "fallido": 0}

        async def latest(n):
            return []

        source = LiveSource(bus, stats, counts, latest, lambda: {"workers": 2, "conexiones": 3}, workers=2)
        live = Live(source)
        viewer = await live.join()  # the first viewer: the counts are read now
        offered = viewer.take()
        assert offered.startswith(b"event: panel\ndata: {")
        # Never a picture of zeros first: the database's counts.
        assert json.loads(offered.split(b"data: ", 1)[1])["estados"]["listo"] == 7
        bus.publish(Event(RECEIVED, tuple(range(8, 1008))))
        bus.publish(Event(STARTED, tuple(range(8, 508)), worker=1, at="2026-12-03T00:00:00+00:00"))
        bus.publish(Event(STARTED, (600,), worker=2, at="2026-12-03T00:00:01+00:00"))
        bus.publish(Event(FINISHED, tuple(range(8, 508)), worker=1))
        bus.publish(Event(CANCELLED, (900, 901)))
        bus.publish(Event(REQUEUED, (600,), worker=2))
        bus.publish(Event(STARTED, (600,), worker=2))
        bus.publish(Event(FAILED, (600,), worker=2))
        bus.publish(Event(STARTED, (700, 701), worker=1))
        bus.publish(Event(RETRYING, (700,), worker=1))  # a task failed: pendiente again, later
        bus.publish(Event(FAILED, (701,), worker=1))
        bus.publish(Event(RETRIED, (701,)))  # reintentar: fallido back to pendiente
        bus.publish(Event(FINISHED, (), worker=1))
        assert live.counts() == {
            "pendiente": 497,
            "en proceso": 0,
            "listo": 507,
            "cancelado": 2,
            "fallido": 1,
        }
        # /metrics takes these, read from the database only every RESYNC_S.
        assert await live.current_counts() == live.counts() and len(reads) == 1
        picture = json.loads(live.picture(full=False).split(b"data: ", 1)[1])
        assert picture["estados"] == live.counts() and picture["en_cola"] == 497
        assert picture["workers"][0] == {"worker": 1, "pedido": None}
        assert picture["workers"][1]["pedido"] == 600  # FAILED alone does not free a live worker
        assert picture["conexiones"] == 3 and picture["workers_vivos"] == 2
        assert picture["nodos"] is None  # alone on its database: no nodes to show
        assert stats.received == 1000 and stats.finished == {"listo": 500, "cancelado": 2, "fallido": 2}
        assert viewer.take() == b""  # nothing new until the ticker offers a picture

    asyncio.run(scenario())


def test_events_during_a_read_of_the_counts_are_not_counted_twice_for_long():
    """A read of the counts that an event overtakes (its change in the read,
    and its move counted since) showed 301 `listo` of 300 orders until the next
    read, 5 s later (an audit). Such a read is read again soon."""
    import asyncio

    from pedidos.events import RECEIVED, Event, EventBus
    from pedidos.panel import live as live_module
    from pedidos.panel.live import Live, LiveSource
    from pedidos.stats import Stats

    async def scenario():
        bus, stats = EventBus(), Stats()
        db = {"pendiente": 0, "en proceso": 0, "listo": 0, "cancelado": 0, "fallido": 0}
        overtaken = []

        async def counts():
            snapshot = dict(db)
            if overtaken:  # the order was committed before the read; its event comes during it
                bus.publish(overtaken.pop())
            return snapshot

        async def latest(n):
            return []

        source = LiveSource(bus, stats, counts, latest, lambda: {"workers": 1, "conexiones": 0}, workers=1)
        live = Live(source)
        assert await live.current_counts() == db
        db["pendiente"] += 1
        overtaken.append(Event(RECEIVED, (1,)))
        live._synced_at -= live_module.RESYNC_S  # a read is due
        twice = await live.current_counts()
        live._synced_at -= 1.0  # a scrape a second later
        again = await live.current_counts()
        return twice, again, dict(db)

    twice, again, db = asyncio.run(scenario())
    assert twice["pendiente"] == 2  # the read that the event overtook
    assert again == db  # read again before RESYNC_S: exact once the events pause


def test_an_event_just_after_a_read_of_the_counts_is_not_counted_twice_for_long():
    """A worker commits, then tells the server through its pipe: a read between
    the two holds the change, and the event that comes after the read moved it
    again (2 of 1 order on the first picture of a page, in CI). Such a read is
    read again soon too; on a shared database the picture is the read itself."""
    import asyncio

    from pedidos.events import STARTED, Event, EventBus
    from pedidos.panel import live as live_module
    from pedidos.panel.live import Live, LiveSource
    from pedidos.stats import Stats

    async def scenario(shared):
        bus, stats = EventBus(), Stats()
        db = {"pendiente": 1, "en proceso": 0, "listo": 0, "cancelado": 0, "fallido": 0}

        async def counts():
            return dict(db)

        async def nothing(*_):
            return []

        extra = {"live_nodes": nothing, "listing": nothing} if shared else {}
        figures = {"workers": 1, "conexiones": 0}
        source = LiveSource(bus, stats, counts, nothing, lambda: figures, workers=1, **extra)
        live = Live(source)
        viewer = await live.join()
        db.update({"pendiente": 0, "en proceso": 1})  # committed by the worker...
        await live._resync()  # ...the ticker reads the counts...
        bus.publish(Event(STARTED, (1,), worker=1))  # ...and the event comes after the read
        right_after = live.counts()
        live._synced_at -= live_module.RESYNC_AGAIN_S  # a second later
        due = live._resync_due(live_module.RESYNC_S)
        first = json.loads(viewer.take().split(b"data: ", 1)[1])["estados"]
        return first, right_after, due, dict(db)

    first, right_after, due, db = asyncio.run(scenario(shared=False))
    assert first["pendiente"] == 1
    assert right_after["en proceso"] == 2  # the read that the event came after
    assert due  # read again before RESYNC_S: exact once the events pause
    _, right_after, _, db = asyncio.run(scenario(shared=True))
    assert right_after == db  # the read as it is


def test_a_late_event_of_a_read_of_the_counts_is_not_counted_twice_once_events_pause(monkeypatch):
    """A worker's report may reach the loop past LATE_S after its commit on a
    busy machine; and after a read that was itself brought forward, a late
    event brings nothing forward. Either way the panel showed one order more
    than there were until the next read, up to RESYNC_S later, though nothing
    happened since. Once the events pause for RESYNC_AGAIN_S, the counts are
    read again."""
    import asyncio
    import types

    from pedidos.events import RECEIVED, STARTED, Event, EventBus
    from pedidos.panel import live as live_module
    from pedidos.panel.live import Live, LiveSource
    from pedidos.stats import Stats

    # A clock of the test's own: how late an event comes is the point, and a
    # busy machine must not decide it.
    now = [1000.0]
    monkeypatch.setattr(live_module, "time", types.SimpleNamespace(monotonic=lambda: now[0], time=time.time))

    async def scenario(early: bool):
        bus = EventBus()
        db = {"pendiente": 0, "en proceso": 0, "listo": 0, "cancelado": 0, "fallido": 0}
        during = []

        async def counts():
            snapshot = dict(db)
            if during:  # an event that overtakes the read: the next read is brought forward
                bus.publish(during.pop())
            return snapshot

        async def nothing(*_):
            return []

        figures = {"workers": 1, "conexiones": 0}
        live = Live(LiveSource(bus, Stats(), counts, nothing, lambda: figures, workers=1))
        assert await live.current_counts() == db
        db["pendiente"] += 1
        if early:
            during.append(Event(RECEIVED, (1,)))
            now[0] += live_module.RESYNC_S
            assert (await live.current_counts())["pendiente"] == 2  # a read the event overtook...
            db.update({"pendiente": 0, "en proceso": 1})  # (the worker commits)
            now[0] += live_module.RESYNC_AGAIN_S  # ...is read again a second later...
            late = 0.1  # ...and an event after that read, within LATE_S, brings nothing forward
        else:
            bus.publish(Event(RECEIVED, (1,)))
            now[0] += live_module.RESYNC_S
            assert await live.current_counts() == db  # a read with no event during or after it
            db.update({"pendiente": 0, "en proceso": 1})  # (the worker commits)
            now[0] += live_module.RESYNC_S
            late = 2 * live_module.LATE_S  # past LATE_S
        held = await live.current_counts()  # the read holds the commit...
        now[0] += late
        bus.publish(Event(STARTED, (1,), worker=1))  # ...and its report comes this late
        twice = live.counts()
        now[0] += live_module.RESYNC_AGAIN_S  # the events have paused
        settled = await live.current_counts()
        return held, twice, settled, dict(db)

    for early in (False, True):
        held, twice, settled, db = asyncio.run(scenario(early))
        assert held == db, early
        assert twice["en proceso"] == 2, early  # the read that the event came after
        assert settled == db, early  # exact once the events pause, not RESYNC_S later


def test_live_reads_a_shared_database_every_second():
    """On PostgreSQL the other nodes publish nothing on this node's bus: while a
    page is open, the counts, the latest orders and the nodes with their busy
    workers are read every second, and this node's row has its figures of now."""
    import asyncio

    from pedidos.events import EventBus
    from pedidos.panel.live import Live, LiveSource
    from pedidos.stats import Stats

    database = {"pendiente": 4, "en proceso": 3, "listo": 0, "cancelado": 0, "fallido": 0}
    reads = {"latest": 0}
    nodes = [
        {"nodo": "a", "workers": 9, "conexiones": 9, "en proceso": 1, "visto": "2026-12-03T04:00:00+00:00"},
        {"nodo": "b", "workers": 2, "conexiones": 1, "en proceso": 2, "visto": "2026-12-03T04:00:00+00:00"},
    ]
    in_process = [
        {"id": 5, "nodo": "b", "worker": 2, "fecha_inicio": "2026-12-03T04:00:01+00:00"},
        {"id": 6, "nodo": "b", "worker": 2, "fecha_inicio": "2026-12-03T04:00:01+00:00"},
        {"id": 7, "nodo": "a", "worker": 1, "fecha_inicio": "2026-12-03T04:00:02+00:00"},
    ]

    async def counts():
        return dict(database)

    async def latest(n):
        reads["latest"] += 1
        return []

    async def live_nodes():
        return [dict(node) for node in nodes]

    async def listing(estado, cliente, desde_id, limite):
        assert (estado, cliente, desde_id) == ("en proceso", None, 0)
        return in_process[:limite]

    async def next_picture(viewer, until, deadline):
        while True:
            await asyncio.wait_for(viewer.wake.wait(), max(0.01, deadline - time.monotonic()))
            picture = json.loads(viewer.take().split(b"data: ", 1)[1])
            if until(picture):
                return picture

    async def scenario():
        bus = EventBus()
        figures = {"workers": 1, "conexiones": 0, "nodo": "a"}
        source = LiveSource(
            bus, Stats(), counts, latest, lambda: figures, workers=1, live_nodes=live_nodes, listing=listing
        )
        live = Live(source)
        viewer = await live.join()
        live.start()
        try:
            picture = await next_picture(viewer, lambda p: p["nodos"], time.monotonic() + 3)
            assert picture["estados"] == database
            a, b = picture["nodos"]
            assert a["nodo"] == "a" and a["este"] and (a["workers"], a["conexiones"]) == (1, 0)
            assert a["trabajando"] == [
                {"worker": 1, "pedido": 7, "mas": 0, "desde": "2026-12-03T04:00:02+00:00"}
            ]
            assert b["nodo"] == "b" and not b["este"] and (b["workers"], b["conexiones"]) == (2, 1)
            assert b["trabajando"] == [
                {"worker": 2, "pedido": 5, "mas": 1, "desde": "2026-12-03T04:00:01+00:00"}
            ]
            # Another node finishes orders and a third one joins: seen within a second
            # (section 10), a read a second and a tick, with room; every 2 s once slipped.
            database.update({"en proceso": 0, "listo": 3})
            nodes.append(dict(nodes[1], nodo="c"))
            latest_reads = reads["latest"]
            picture = await next_picture(
                viewer,
                lambda p: p["estados"]["listo"] == 3 and len(p["nodos"]) == 3,
                time.monotonic() + 1.75,
            )
            assert picture["estados"] == database
            assert reads["latest"] > latest_reads  # the latest orders too, though no event came
        finally:
            await live.stop()

    asyncio.run(scenario())


def test_two_reads_of_the_counts_at_once_are_one_read():
    """The ticker's read and a /metrics scrape's (or a page's) may come at
    once. Two reads in flight counted the table twice, and the later to end
    set the time of the last read back over the bring-forward that an event
    after the earlier one asked for: the figure that event counted twice
    stayed so for RESYNC_S, not RESYNC_AGAIN_S."""
    import asyncio

    from pedidos.events import STARTED, Event, EventBus
    from pedidos.panel import live as live_module
    from pedidos.panel.live import Live, LiveSource
    from pedidos.stats import Stats

    async def scenario():
        bus, stats = EventBus(), Stats()
        db = {"pendiente": 1, "en proceso": 0, "listo": 0, "cancelado": 0, "fallido": 0}
        gates: list[asyncio.Event] = []
        reads = []

        async def counts():
            reads.append(1)
            gate = asyncio.Event()
            gates.append(gate)
            await gate.wait()
            return dict(db)

        async def nothing(*_):
            return []

        source = LiveSource(bus, stats, counts, nothing, lambda: {"workers": 1, "conexiones": 0}, workers=1)
        live = Live(source)
        first = asyncio.ensure_future(live._resync())  # the ticker's read...
        await asyncio.sleep(0)
        second = asyncio.ensure_future(live.current_counts())  # ...and a scrape's, meanwhile
        await asyncio.sleep(0)
        db.update({"pendiente": 0, "en proceso": 1})  # committed by the worker, in the read
        gates.pop().set()  # the later read ends first...
        for _ in range(3):
            await asyncio.sleep(0)
        bus.publish(Event(STARTED, (1,), worker=1))  # ...and the event comes after it
        for gate in gates:
            gate.set()  # then the earlier one ends
        await first
        scraped = await second
        live._synced_at -= live_module.RESYNC_AGAIN_S  # a second later
        return len(reads), scraped, live._resync_due(live_module.RESYNC_S)

    reads, scraped, due = asyncio.run(scenario())
    assert due, "read again before RESYNC_S"  # exact once the events pause
    assert reads == 1  # one read: the second caller waits for the one under way
    assert scraped["pendiente"] == 0  # the read's figures, the one read's
