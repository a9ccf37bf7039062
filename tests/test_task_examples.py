"""The tasks of `ejemplos/` work as the README says: run by a real server from
the repository root, with nothing on PYTHONPATH."""

from __future__ import annotations

import re
import shlex
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, running_server, wait_for

from ejemplos import albaran, aviso_http
from ejemplos.servicio_avisos import Service
from pedidos.client import Client


@pytest.fixture
def avisos() -> Iterator[Service]:
    service = Service(("127.0.0.1", 0))
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.shutdown()
        service.server_close()
        thread.join(10)


def test_delivery_notes_one_file_per_order_rewritten_on_a_retry(tmp_path: Path, monkeypatch):
    folder = tmp_path / "albaranes"
    args = ["--tarea", "ejemplos.albaran:escribir", "--workers", "1"]
    with (
        running_server(tmp_path, *args, env={"PEDIDOS_ALBARANES": str(folder)}) as srv,
        Client("127.0.0.1", srv.port) as client,
    ):
        ids = [client.submit("Ana Pérez", ["pan", "agua"], "Calle 1", f"ana-{i}").id for i in (1, 2)]
        done = [client.wait(i, timeout=20) for i in ids]
    for order in done:
        path = folder / f"albaran-{order.id:06d}.txt"
        assert order.estado == "listo" and order.resultado == {"albaran": str(path), "lineas": 11}
        assert "Cliente:    Ana Pérez" in path.read_text(encoding="utf-8")
    # Done again (at least once): the same file, not a second note.
    monkeypatch.setenv("PEDIDOS_ALBARANES", str(folder))
    again = albaran.escribir({**done[0].as_dict(), "cliente": "Ana P."})
    assert again["albaran"] == str(folder / f"albaran-{done[0].id:06d}.txt")
    assert sorted(p.name for p in folder.iterdir()) == [f"albaran-{i:06d}.txt" for i in ids]
    assert "Cliente:    Ana P." in Path(again["albaran"]).read_text(encoding="utf-8")


def test_the_http_call_is_retried_until_the_service_answers(tmp_path: Path, avisos: Service, monkeypatch):
    url = f"http://127.0.0.1:{avisos.server_address[1]}/avisos"
    avisos.fallos = 1.0  # every request answered 503 for now
    args = ["--tarea", "ejemplos.aviso_http:avisar", "--reintentos", "20", "--reintento-base", "0.1"]
    with (
        running_server(tmp_path, *args, env={"PEDIDOS_AVISOS_URL": url}) as srv,
        Client("127.0.0.1", srv.port) as client,
    ):
        order_id = client.submit("Ana", ["pan"], "Calle 1").id
        waiting = wait_for(lambda: (order := client.get(order_id)).reintentar_despues and order, timeout=20)
        assert waiting.estado == "pendiente"
        assert waiting.error.startswith("HTTPError: HTTP Error 503")
        avisos.fallos = 0.0
        done = client.wait(order_id, timeout=30)
    assert done.estado == "listo" and done.resultado == {"aviso": 1, "repetido": False}
    assert done.fallos >= 1 and done.error.startswith("HTTPError")
    # A repeat of the same order is recognised by its key, not counted again.
    monkeypatch.setenv("PEDIDOS_AVISOS_URL", url)
    assert aviso_http.avisar(done.as_dict()) == {"aviso": 1, "repetido": True}


def test_the_readme_task_of_ones_own_works_as_written(tmp_path: Path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Your own processing")
    section = readme[start : readme.index("\n## ", start + 1)]
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    commands = re.findall(r"^\s*python3 servidor.py (--tarea mitarea:procesar .*)$", section, re.M)
    assert len(code) == 1 and len(commands) == 1
    (tmp_path / "mitarea.py").write_text(textwrap.dedent(code[0]), encoding="utf-8")
    args = [*shlex.split(commands[0]), "--reintento-base", "0.05"]  # the waits, shortened
    with (
        running_server(tmp_path, *args) as srv,  # from tmp_path, where mitarea.py is
        Client("127.0.0.1", srv.port) as client,
    ):
        good = client.wait(client.submit("Ana", ["pan", "agua"], "Calle 1").id, timeout=20)
        bad = client.wait(client.submit("Ana", ["veneno"], "Calle 1").id, timeout=20)
    assert good.estado == "listo" and good.resultado == {"total": 5.0}
    assert bad.estado == "fallido" and bad.error == "ValueError: no vendemos eso"
    assert bad.fallos == 3  # --reintentos 2: three calls
