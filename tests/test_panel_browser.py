"""The panel's page in a real browser (issue 12): Debian's Chromium driven by
Playwright from pip. Orders go in over TCP; the page must show them without a
reload, come back by itself after a server restart, and ask for a token.

`pytest tests/test_panel_browser.py --panel-screenshot docs/panel.png`
regenerates the README's screenshot.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import LineClient, panel_url, running_server, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_TOKEN = "panel-admin-token-1"
CLIENTE_TOKEN = "panel-cliente-token-2"
CLIENTES = ["Juan Pérez", "Ana García", "Luis Martínez", "Sofía López", "Carmen Ruiz", "Diego Torres"]
PRODUCTOS = [["pan", "agua"], ["leche"], ["café", "azúcar", "galletas"], ["arroz", "aceite"]]


@pytest.fixture(autouse=True)
def _no_pedidos_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("PEDIDOS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests need Debian's Chromium at {CHROMIUM}: run `bash scripts/test`, "
            "which installs it, or `apt-get install -y chromium`"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install -e '.[test]'")
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="es-ES")
    try:
        yield context.new_page()
    finally:
        context.close()


def order(n: int) -> dict:
    return {
        "cliente": CLIENTES[n % len(CLIENTES)],
        "productos": PRODUCTOS[n % len(PRODUCTOS)],
        "direccion": f"Calle Mayor {n % 90 + 1}",
    }


def send(port: int, count: int) -> list[int]:
    with LineClient("127.0.0.1", port) as client:
        return [client.ask(order(n))["id"] for n in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chart_peak(page) -> float:
    """The highest point of the 'recibidos' line, as a share of the chart's height."""
    points = page.locator("#linea-recibidos").get_attribute("points") or ""
    ys = [float(p.split(",")[1]) for p in points.split()]
    return max((200 - y) / 200 for y in ys) if ys else 0.0


def test_page_follows_orders_live(tmp_path, page):
    from playwright.sync_api import expect

    with running_server(tmp_path, "--work-time", "1", "--workers", "2", "--panel", "0") as srv:
        page.goto(panel_url(srv))
        expect(page.locator("#conexion")).to_have_text("en vivo")
        expect(page.locator("#n-listo")).to_have_text("0")
        page.evaluate("window.sinRecarga = true")
        with LineClient("127.0.0.1", srv.port) as client:
            ids = [client.ask(order(n))["id"] for n in range(6)]
            expect(page.locator("#conexiones")).to_have_text("1")
            last = page.locator(f'#ultimos tr[data-id="{ids[-1]}"] .estado')
            expect(last).to_have_text("pendiente")
            expect(last).to_have_text("en proceso", timeout=10_000)
            expect(page.locator("#workers")).to_contain_text(f"#{ids[-1]}")
            expect(last).to_have_text("listo", timeout=10_000)
        expect(page.locator("#n-listo")).to_have_text("6")
        expect(page.locator("#n-pendiente")).to_have_text("0")
        expect(page.locator("#recibidos-total")).to_have_text("6")
        expect(page.locator("#conexiones")).to_have_text("0")
        wait_for(lambda: chart_peak(page) > 0.1, timeout=5)
        assert page.evaluate("window.sinRecarga") is True  # all of it without a reload
        expect(page.locator("#nodos")).to_be_hidden()  # one server on SQLite: no nodes
        # A phone: nothing wider than the screen.
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_on_a_phone_a_long_name_leaves_the_state_in_sight(tmp_path, page):
    from playwright.sync_api import expect

    args = ("--work-time", "30", "--shutdown-timeout", "1", "--workers", "1", "--panel", "0")
    with running_server(tmp_path, *args) as srv:
        with LineClient("127.0.0.1", srv.port) as client:
            order_id = client.ask(dict(order(0), cliente="Juan Pérez de la Cruz y Montoya " * 3))["id"]
        page.set_viewport_size({"width": 375, "height": 800})
        page.goto(panel_url(srv))
        state = page.locator(f'#ultimos tr[data-id="{order_id}"] .estado')
        expect(state).to_have_text("en proceso", timeout=10_000)
        card = page.locator("#ultimos").locator("xpath=..")
        # Both boxes from one moment: each tick redraws the table, and a row read in
        # between has no box (None, once in a CI run).
        box, seen = wait_for(lambda: _both(state.bounding_box(), card.bounding_box()), timeout=10)
        assert box["x"] + box["width"] <= seen["x"] + seen["width"], (box, seen)  # not cut off


def _both(a, b):
    return (a, b) if a is not None and b is not None else None


def test_page_recovers_after_a_server_restart(tmp_path, page):
    from playwright.sync_api import expect

    args = ["--work-time", "0", "--port", str(free_port()), "--panel", str(free_port())]
    db = tmp_path / "pedidos.db"
    with running_server(tmp_path, *args, db=db) as srv:
        page.goto(panel_url(srv))
        expect(page.locator("#conexion")).to_have_text("en vivo")
        page.evaluate("window.sinRecarga = true")
        send(srv.port, 2)
        expect(page.locator("#n-listo")).to_have_text("2")
        assert srv.stop() == 0
    expect(page.locator("#conexion")).to_have_text("reconectando…")
    with running_server(tmp_path, *args, db=db) as srv:
        expect(page.locator("#conexion")).to_have_text("en vivo", timeout=15_000)
        send(srv.port, 1)
        expect(page.locator("#n-listo")).to_have_text("3")
        assert page.evaluate("window.sinRecarga") is True


def test_page_asks_for_an_admin_token_once(tmp_path, page):
    from playwright.sync_api import expect

    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{ADMIN_TOKEN} admin\n{CLIENTE_TOKEN} cliente\n")
    with running_server(tmp_path, "--work-time", "0", "--panel", "0", "--token-file", str(tokens)) as srv:
        page.goto(panel_url(srv))
        expect(page.locator("#acceso")).to_be_visible()
        expect(page.locator("#panel")).to_be_hidden()
        for token, message in (
            ("wrong-token-xyz", "Token no válido."),
            (CLIENTE_TOKEN, "no es de administrador"),
        ):
            page.fill("#token", token)
            page.click("#acceso button")
            expect(page.locator("#acceso-error")).to_contain_text(message)
            expect(page.locator("#panel")).to_be_hidden()
        page.fill("#token", ADMIN_TOKEN)
        page.click("#acceso button")
        expect(page.locator("#conexion")).to_have_text("en vivo")
        expect(page.locator("#acceso")).to_be_hidden()
        expect(page.locator("#n-listo")).to_have_text("0")
        assert ADMIN_TOKEN not in page.url
        assert page.evaluate("sessionStorage.getItem('pedidos.token')") == ADMIN_TOKEN
        page.reload()  # asked once: the tab remembers it
        expect(page.locator("#conexion")).to_have_text("en vivo")
        expect(page.locator("#acceso")).to_be_hidden()
    assert ADMIN_TOKEN not in srv.log


def test_page_lists_every_node_on_postgresql(pg_url, tmp_path, page):
    from playwright.sync_api import expect

    # One worker a node, each order outlasting the test: both workers are seen
    # holding one, and the counts stay put while the page is read.
    args = ("--work-time", "60", "--workers", "1", "--lease", "2", "--shutdown-timeout", "1")
    with (
        running_server(tmp_path, *args, "--nodo", "nodo-a", "--panel", "0", db=pg_url) as a,
        running_server(tmp_path, *args, "--nodo", "nodo-b", db=pg_url) as b,
    ):
        page.goto(panel_url(a))
        expect(page.locator("#conexion")).to_have_text("en vivo")
        nodos = page.locator("#tabla-nodos")
        expect(page.locator("#nodos")).to_be_visible()
        expect(page.locator("#nodos-vivos")).to_have_text("2 vivos")
        expect(nodos.locator('tr.nodo[data-nodo="nodo-a"] td').first).to_have_text("nodo-a (este)")
        expect(nodos.locator('tr.nodo[data-nodo="nodo-b"] td').first).to_have_text("nodo-b")
        with LineClient("127.0.0.1", b.port) as client:
            ids = [client.ask(order(n))["id"] for n in range(4)]
            for nodo in ("nodo-a", "nodo-b"):
                row = nodos.locator(f'tr.nodo[data-nodo="{nodo}"] td')
                expect(row.nth(1)).to_have_text("1")  # workers
                expect(row.nth(3)).to_have_text("1", timeout=10_000)  # en proceso
                held = nodos.locator(f'tr.worker-nodo[data-nodo="{nodo}"][data-worker="1"]')
                expect(held).to_contain_text("#")
                assert int(held.locator("td.pedido").inner_text().split()[0].lstrip("#")) in ids
            # The whole service's counts and orders, though they all came in on B.
            expect(page.locator("#n-en-proceso")).to_have_text("2", timeout=3_000)
            expect(page.locator("#n-pendiente")).to_have_text("2", timeout=3_000)
            expect(page.locator('#ultimos .estado[data-estado="en proceso"]')).to_have_count(2, timeout=3_000)
            # Each one's worker with its node: "1" alone would not say which.
            for nodo in ("nodo-a", "nodo-b"):
                expect(page.locator("#ultimos td", has_text=f"1 · {nodo}")).to_have_count(1)
            # Node B's connection, counted on B and shown on A's page.
            expect(nodos.locator('tr.nodo[data-nodo="nodo-b"] td').nth(2)).to_have_text("1")
            expect(nodos.locator('tr.nodo[data-nodo="nodo-a"] td').nth(2)).to_have_text("0")


class SteadyLoad:
    """Orders at a rising, then falling rate from one connection, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with LineClient("127.0.0.1", self.port) as client:
            for second in itertools.count():
                if self._stop.is_set():
                    return
                # Three times the rate of a small shop: the chart has as many
                # orders to draw after six seconds as it would after twelve.
                rate = 3 * (20 + 12 * min(second, 14 - second if second < 14 else 0))
                started = time.monotonic()
                batch = [order(self.sent + n) for n in range(max(rate, 20))]
                client.send("".join(json.dumps(o) + "\n" for o in batch))
                for _ in batch:
                    assert client.read()["ok"]
                self.sent += len(batch)
                if second % 3 == 1:  # a few customers change their minds
                    client.ask({"accion": "cancelar", "id": client.ask(order(0))["id"]})
                    self.sent += 1
                self._stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))  # a stop ends it at once


def test_screenshot_under_load(tmp_path, page, request):
    from playwright.sync_api import expect

    with running_server(tmp_path, "--work-time", "0.02-0.15", "--workers", "4", "--panel", "0") as srv:
        page.goto(panel_url(srv))
        expect(page.locator("#conexion")).to_have_text("en vivo")
        with SteadyLoad(srv.port) as load:
            wait_for(lambda: load.sent > 900, timeout=60, interval=0.2)
            expect(page.locator("#workers")).to_contain_text("#")
            shot = tmp_path / "panel.png"
            page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert chart_peak(page) > 0.2
        assert int(page.locator("#n-pendiente").inner_text().replace(".", "")) > 0
    target = request.config.getoption("--panel-screenshot")
    if target:
        shutil.copyfile(shot, target)
