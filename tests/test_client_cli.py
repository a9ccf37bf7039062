"""`cliente.py`: `main(argv)` against the real server, and the real script on a
pseudo-terminal for what only a terminal shows (questions, the progress bar, Ctrl-C)."""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import os
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CLIENTE, ROOT, LineClient, ServerProcess, esperando, listed, running_server, wait_for

from pedidos import __version__
from pedidos.client.blocking import Client, Order
from pedidos.client.cli.args import EXAMPLES, build_parser
from pedidos.client.cli.bulk import Outcome
from pedidos.client.cli.entries import read_entries
from pedidos.client.cli.invocation import Typed
from pedidos.client.cli.main import main
from pedidos.client.cli.resume import auto_referencias, interruption_lines
from pedidos.client.cli.show import count, state_line

_names = itertools.count(1)


def unique(prefix: str = "cli") -> str:
    """A client name no other test uses, since the servers are shared."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


def run(capsys, *argv: object, stdin: str | None = None) -> tuple[int, str, str]:
    """`main(argv)`: its exit status, stdout and stderr."""
    stream = io.TextIOWrapper(io.BytesIO((stdin or "").encode())) if stdin is not None else io.StringIO()
    try:
        code = main([str(a) for a in argv], stdin=stream)
    except SystemExit as exit_:
        code = exit_.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    return code, out, err


def one_line_reason(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) >= 1 and "Traceback" not in err
    return lines[-1]


def order_args(port: int, cliente: str, *more: str) -> list[object]:
    return [
        "--port",
        port,
        "--cliente",
        cliente,
        "--productos",
        "pan",
        "agua",
        "--direccion",
        "Calle 1",
        *more,
    ]


# --- one order, queries --------------------------------------------------------------------


def test_an_order_from_the_command_line(quick_server, capsys):
    name = unique()
    code, out, err = run(capsys, *order_args(quick_server.port, name))
    assert code == 0 and err == ""
    order_id = int(re.fullmatch(r"Pedido recibido: número (\d+), estado pendiente\.\n", out).group(1))
    with Client("127.0.0.1", quick_server.port) as client:
        assert client.get(order_id).cliente == name


def test_json_prints_the_server_replies(quick_server, capsys):
    name = unique()
    code, out, _ = run(capsys, *order_args(quick_server.port, name, "--referencia", name, "--json"))
    receipt = json.loads(out)
    assert code == 0 and receipt["ok"] is True and receipt["estado"] == "pendiente"
    code, out, _ = run(capsys, *order_args(quick_server.port, name, "--referencia", name, "--json"))
    again = json.loads(out)
    # The same order, as it stands now: a quick worker may already be on it.
    assert again["estado"] in ("pendiente", "en proceso", "listo")
    assert again == {**receipt, "duplicado": True, "estado": again["estado"]}
    for argv in (["--consultar", receipt["id"]], ["--listar", "--cliente", name], ["--estadisticas"]):
        code, out, _ = run(capsys, "--port", quick_server.port, "--json", *argv)
        assert code == 0 and all(json.loads(line)["ok"] for line in out.splitlines())


def test_a_refused_order_exits_1_with_the_server_reason(quick_server, capsys):
    code, out, err = run(
        capsys, "--port", quick_server.port, "--cliente", " ", "--productos", "pan", "--direccion", "d"
    )
    assert code == 1 and out == ""
    assert one_line_reason(err) == "cliente.py: rechazado (pedido_invalido): 'cliente' está vacío."
    code, out, err = run(capsys, "--port", quick_server.port, "--consultar", 10**12, "--json")
    assert code == 1 and json.loads(out)["error"] == "no_encontrado"
    assert one_line_reason(err).startswith("cliente.py: rechazado (no_encontrado)")


def test_consultar_shows_every_field(quick_server, capsys):
    name = unique()
    with Client("127.0.0.1", quick_server.port) as client:
        done = client.wait(client.submit(name, ["pan", "agua"], "Av. Siempre Viva 742", name).id, 20)
    code, out, _ = run(capsys, "--port", quick_server.port, "--consultar", done.id)
    assert code == 0
    for label, value in [
        ("cliente", name),
        ("productos", "pan, agua"),
        ("dirección", "Av. Siempre Viva 742"),
        ("referencia", name),
        ("estado", "listo"),
    ]:
        assert re.search(rf"^  {label}: +{re.escape(value)}$", out, re.M), (label, out)
    assert re.search(rf"^  inicio: +\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \(worker {done.worker}\)$", out, re.M)
    assert re.search(r"^  duración: +\d+\.\d\d s$", out, re.M)


def test_listar_is_an_aligned_table_and_pages_past_the_server_limit(quick_server, capsys):
    name = unique()
    with Client("127.0.0.1", quick_server.port) as client:
        orders = ({"cliente": name, "productos": ["p"], "direccion": "d"} for _ in range(1030))
        ids = [r.id for r in client.submit_many(orders)]
        # Workers need not finish in order: wait for each, pipelined.
        waits = client.pipeline({"accion": "esperar", "id": i, "timeout": 20} for i in ids)
        assert all(reply["pedido"]["estado"] == "listo" for reply in waits)
    code, out, _ = run(capsys, "--port", quick_server.port, "--listar", "--cliente", name, "--limite", 1020)
    assert code == 0
    header, *rows, footer = out.splitlines()
    assert header.split() == ["id", "cliente", "estado", "recibido", "inicio", "fin", "duración"]
    assert [int(row.split()[0]) for row in rows] == ids[:1020]
    for row in rows:
        assert row[header.index("cliente") :].startswith(name)
        assert row[header.index("estado") :].startswith("listo")
        assert re.match(r"\d\d:\d\d:\d\d", row[header.index("fin") :])
        assert row.endswith(" s") and len(row) == len(rows[0])
    more = f"--port {quick_server.port} --listar --cliente {name} --limite 1020 --desde-id {ids[1019]}"
    assert footer == f"(límite de 1020 alcanzado; puede haber más: python3 cliente.py {more})"
    code, out, _ = run(capsys, *more.split())  # the rest, with the same filters
    assert [int(row.split()[0]) for row in out.splitlines()[1:]] == ids[1020:]
    code, out, _ = run(
        capsys, "--port", quick_server.port, "--listar", "--cliente", name, "--estado", "pendiente"
    )
    assert (code, out) == (0, "No hay pedidos que coincidan.\n")


def test_estadisticas(quick_server, capsys):
    code, out, _ = run(capsys, "--port", quick_server.port, "--host", "::1", "--estadisticas")
    assert code == 0
    for line in (
        "Pedidos por estado:",
        "  en proceso ",
        "En cola: ",
        "Workers vivos: 2",
        "Conexiones abiertas: ",
        "Esperas en curso: ",
    ):
        assert line in out


def test_esperar_follows_the_order_until_it_is_listo(slow_server, capsys):
    code, out, _ = run(capsys, *order_args(slow_server.port, unique(), "--esperar"))
    assert code == 0
    lines = out.splitlines()
    order_id = re.match(r"Pedido recibido: número (\d+)", lines[0]).group(1)  # type: ignore[union-attr]
    clock = r"\d\d:\d\d:\d\d"
    assert any(
        re.fullmatch(rf"Pedido {order_id}: en proceso en el worker [12] desde las {clock}\.", x)
        for x in lines
    )
    assert re.fullmatch(
        rf"Pedido {order_id}: listo a las {clock}; tardó \d+\.\d\d s \(worker [12], empezó a las {clock}\)\.",
        lines[-1],
    )
    code, out, _ = run(capsys, "--port", slow_server.port, "--consultar", order_id, "--esperar", "--json")
    assert code == 0 and [json.loads(x)["pedido"]["estado"] for x in out.splitlines()] == ["listo"]


def test_cancelar(slow_server, capsys):
    with Client("127.0.0.1", slow_server.port) as client:
        receipts = list(
            client.submit_many({"cliente": unique(), "productos": ["p"], "direccion": "d"} for _ in range(4))
        )
    code, out, _ = run(capsys, "--port", slow_server.port, "--cancelar", receipts[-1].id)
    assert (code, out) == (0, f"Pedido {receipts[-1].id} cancelado.\n")
    code, _, err = run(capsys, "--port", slow_server.port, "--cancelar", receipts[-1].id)
    assert code == 1 and "rechazado (no_cancelable)" in one_line_reason(err)
    code, out, err = run(capsys, "--port", slow_server.port, "--consultar", receipts[-1].id, "--esperar")
    assert code == 4 and out.startswith(f"Pedido {receipts[-1].id}: cancelado")
    assert one_line_reason(err) == f"cliente.py: el pedido {receipts[-1].id} terminó 'cancelado', no 'listo'"


# --- many orders ---------------------------------------------------------------------------


def test_archivo_json_lines_sends_all_and_reports_refused_lines(quick_server, capsys, tmp_path):
    name = unique()
    lines = [
        json.dumps({"cliente": name, "productos": ["pan"], "direccion": "d", "referencia": f"{name}-{n}"})
        for n in range(500)
    ]
    lines[16] = json.dumps({"cliente": name, "productos": [], "direccion": "d"})
    lines[41] = '{"cliente": "sin comillas", productos: 1}'
    lines[99] = '{"accion": "estadisticas"}'
    lines[199] = "{\n" + f'  "cliente": "{name}",\n  "productos": ["pan"],\n  "direccion": "d"\n' + "}"
    path = tmp_path / "pedidos.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    code, out, err = run(capsys, "--port", quick_server.port, "--archivo", path)
    assert code == 1 and "\r" not in err
    assert one_line_reason(err) == "cliente.py: 3 pedidos rechazados, detallados en el resumen"
    assert out.startswith(f"500 pedidos de {path} en ")
    assert "  aceptados:  497\n  rechazados: 3\n" in out
    assert "    línea 17: pedido_invalido: 'productos' debe tener entre 1 y 100 productos; tiene 0.\n" in out
    quotes = "se esperaba un nombre de campo entre comillas"  # the server's words for it
    assert f"    línea 42: json_invalido: no es JSON válido (columna 29: {quotes})\n" in out
    assert "    línea 100: mensaje_invalido: lleva 'accion'" in out
    # One line has no referencia: the corrected file sent again would store that one twice.
    assert "Corrija las líneas rechazadas en un archivo aparte y envíe solo ese" in out
    with Client("127.0.0.1", quick_server.port) as client:
        assert len(client.list(cliente=name, limite=1000)) == 497
    # Every line but the pretty-printed one carries a referencia: sending again adds one order.
    code, out, _ = run(capsys, "--port", quick_server.port, "--archivo", path)
    assert code == 1 and "  aceptados:  497 (496 ya estaban: no se duplicaron)\n" in out
    with Client("127.0.0.1", quick_server.port) as client:
        assert len(client.list(cliente=name, limite=1000)) == 498


def test_archivo_lines_python_cannot_read_or_send_as_written_are_refused_and_the_rest_go(
    quick_server, capsys, tmp_path
):
    # Were tracebacks (exit 1): RecursionError for a deep nesting, ValueError for
    # an integer past 4300 digits, UnicodeEncodeError for a lone surrogate when
    # the order was written. And a key given twice went as the last value alone,
    # where the server refuses it naming the key.
    name = unique()
    good = json.dumps({"cliente": name, "productos": ["pan"], "direccion": "d"})
    lines = [
        '{"cliente": ' + "[" * 100_000,
        good[:-1] + ', "n": 1' + "0" * 5000 + "}",
        '{"cliente": "A", "productos": ["pan"], "direccion": "d", "cliente": "B"}',
        '{"cliente": "\\ud800", "productos": ["pan"], "direccion": "d"}',
        '{"cliente": "\\ud83d\\ude00 ' + name + '", "productos": ["pan"], "direccion": "d"}',  # a pair: fine
        good,
    ]
    path = tmp_path / "raros.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "--port", quick_server.port, "--archivo", path)
    assert code == 1 and "Traceback" not in err
    assert one_line_reason(err) == "cliente.py: 4 pedidos rechazados, detallados en el resumen"
    assert "  aceptados:  2\n  rechazados: 4\n" in out
    assert "    línea 1: json_invalido: no es JSON válido (anida demasiados niveles)\n" in out
    assert "    línea 3: pedido_invalido: El campo 'cliente' aparece más de una vez" in out
    assert "    línea 4: json_invalido: JSON inválido: texto con un sustituto UTF-16 suelto.\n" in out
    assert "línea 2: " in out and "línea 5" not in out and "línea 6" not in out
    with Client("127.0.0.1", quick_server.port) as client:
        assert len(client.list(contiene=name)) == 2
    # The same in a JSON array: the array cannot be read, nothing is sent (exit 2).
    array = tmp_path / "raros.json"
    array.write_text("[" + good + ", " + "[" * 100_000 + "]" * 100_000 + "]")
    code, out, err = run(capsys, "--port", quick_server.port, "--archivo", array)
    assert (code, out) == (2, "")
    assert one_line_reason(err) == (
        f"cliente.py: {array}: la lista JSON no es válida: anida demasiados niveles "
        f"(línea 1, columna {len(good) + 4})"
    )


def test_archivo_an_order_over_the_size_limit_is_one_refused_line_and_the_rest_go(
    quick_server, capsys, tmp_path
):
    # The server closes the connection after `demasiado_grande`, reading
    # nothing behind it: the lines after it go again on a new connection.
    name = unique()
    lines = [json.dumps({"cliente": name, "productos": ["pan"], "direccion": f"d{n}"}) for n in range(300)]
    lines[1] = json.dumps({"cliente": "x" * 70_000, "productos": ["pan"], "direccion": "d"})
    path = tmp_path / "grande.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "--port", quick_server.port, "--archivo", path)
    assert code == 1, err
    assert "  aceptados:  299\n  rechazados: 1\n" in out
    assert "    línea 2: demasiado_grande: " in out
    with Client("127.0.0.1", quick_server.port) as client:
        assert sorted(o.direccion for o in client.list(cliente=name, limite=1000)) == sorted(
            f"d{n}" for n in range(300) if n != 1
        )


def test_desde_linea_sends_only_the_orders_from_that_line_with_the_same_auto_keys(
    quick_server, capsys, tmp_path
):
    name = unique()
    path = tmp_path / "lote.jsonl"
    order = {"productos": ["pan"], "direccion": "d"}
    path.write_text("".join(json.dumps({"cliente": f"{name}-{n}", **order}) + "\n" for n in range(1, 6)))
    code, out, _ = run(capsys, "--port", quick_server.port, "--archivo", path, "--desde-linea", 4)
    assert code == 0 and out.startswith(f"2 pedidos de {path} desde la línea 4 en ")
    stored = [o for o in listed(quick_server.port) if o["cliente"].startswith(name)]
    assert sorted(o["cliente"] for o in stored) == [f"{name}-4", f"{name}-5"]
    # With --referencias-auto the keys are the whole file's: the rest later, none twice.
    argv = ("--port", quick_server.port, "--archivo", path, "--referencias-auto")
    code, out, _ = run(capsys, *argv, "--desde-linea", 2)
    assert code == 0 and "  aceptados:  4\n" in out
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "  aceptados:  5 (4 ya estaban: no se duplicaron)\n" in out


def test_a_line_that_is_no_json_is_told_why_in_the_servers_words():
    # Only "(columna 57)" was said: a comma left at the end of each line, or
    # a CSV file given by mistake, had to be guessed from a column number.
    data = (
        b'{"cliente": "a", "productos": ["p"], "direccion": "d"},\n'
        b"Ana,pan,Calle 1\n"
        b'{"cliente": "a", "productos": [pan], "direccion": "d"}\n'
    )
    said = [entry.problem[1] for entry in read_entries(data) if entry.problem]
    assert said == [
        "no es JSON válido (columna 55: hay más texto después del pedido: ¿una coma al final de la línea?)",
        "no es JSON válido (columna 1: se esperaba un valor)",
        "no es JSON válido (columna 32: se esperaba un valor)",
    ]


def test_the_advice_after_a_cut_names_the_command_for_what_was_not_sent():
    entries = read_entries(b'{"cliente": "a", "productos": ["p"], "direccion": "d"}\n' * 6)
    outcome = Outcome(len(entries))
    outcome.sent, outcome.done, outcome.answered, outcome.accepted = 4, 2, 2, 2  # 2 unconfirmed, 2 unsent
    again = Typed("python3 cliente.py", ("--archivo", "a b.jsonl", "--desde-linea", "2", "--port", "9000"))
    lines = interruption_lines(outcome, entries, "a b.jsonl", again)
    assert lines[-1] == "Lo no enviado: python3 cliente.py --archivo 'a b.jsonl' --port 9000 --desde-linea 5"
    assert "compruebe con --listar los sin confirmar" in lines[-2]
    # Six orders in a JSON array on one line: no line to start from without resending some.
    order = b'{"cliente": "a", "productos": ["p"], "direccion": "d"}'
    one_line = read_entries(b"[" + b", ".join([order] * 6) + b"]")
    lines = interruption_lines(outcome, one_line, "a b.jsonl", again)
    assert "sin enviar: 2 (desde la línea 1)" in lines[-2] and not lines[-1].startswith("Lo no enviado")


def test_a_command_to_run_next_keeps_quoted_values_whole():
    argv = ("--listar", "--cliente", "Ana --desde-id 5", "--desde-id=3", "--limite", "2")
    typed = Typed("pedidos-cliente", argv)
    assert str(typed.with_option("--desde-id", 9)) == (
        "pedidos-cliente --listar --cliente 'Ana --desde-id 5' --limite 2 --desde-id 9"
    )


def test_a_refused_line_without_referencia_does_not_make_resending_unsafe(quick_server, capsys, tmp_path):
    name = unique()
    good = [{"cliente": name, "productos": ["p"], "direccion": "d", "referencia": f"{name}{n}"} for n in "ab"]
    path = tmp_path / "lote.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in [*good, {"cliente": name}]) + "\n")
    code, out, _ = run(capsys, "--port", quick_server.port, "--archivo", path)
    assert code == 1 and "reenviar el archivo no duplica: cada pedido lleva su 'referencia'" in out


def test_a_file_whose_every_line_is_refused_credits_no_referencia(quick_server, capsys, tmp_path):
    # No line carries a referencia: nothing was stored, so say that, not that keys make resending safe.
    array = json.dumps([{"cliente": unique(), "productos": []}, {"cliente": unique()}])  # two on one line
    for text in (
        "hola\n",
        json.dumps({"cliente": unique(), "productos": [], "direccion": "d"}) + "\nhola\n",
        array,
    ):
        path = tmp_path / "rechazadas.jsonl"
        path.write_text(text)
        code, out, _ = run(capsys, "--port", quick_server.port, "--archivo", path)
        assert code == 1 and "  aceptados:  0\n" in out
        assert "'referencia'" not in out
        assert out.endswith(
            "Ningún pedido se guardó: corregidas las líneas rechazadas, reenvíe el archivo entero.\n"
        )


def test_archivo_array_from_stdin_with_json_replies(quick_server, capsys):
    name = unique()
    text = json.dumps(
        [{"cliente": name, "productos": ["p"], "direccion": "d"}] * 3 + [{"cliente": name}], indent=2
    )
    code, out, err = run(capsys, "--port", quick_server.port, "--archivo", "-", "--json", stdin=text)
    replies = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [r["ok"] for r in replies] == [True, True, True, False]
    assert (
        "la entrada estándar" in err and "    línea 23: pedido_invalido: Falta el campo 'productos'." in err
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            '[{"cliente": "A"},\n {"cliente": "B"}',
            "la lista JSON no es válida: falta el ']' final (línea 2, columna 18)",
        ),
        (
            '[{"cliente": "A"} {"cliente": "B"}]',
            "la lista JSON no es válida: se esperaba ',' o ']' (línea 1, columna 19)",
        ),
        (None, "no se puede leer {path}: no existe"),
    ],
)
def test_archivo_that_cannot_be_read_exits_2_and_sends_nothing(
    quick_server, capsys, tmp_path, content, reason
):
    path = tmp_path / "pedidos.json"
    if content is not None:
        path.write_text(content)
    code, out, err = run(capsys, "--port", quick_server.port, "--archivo", path)
    assert (code, out) == (2, "")
    assert one_line_reason(err).endswith(reason.format(path=path))


# --- usage, unreachable, silent --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], "opción --port: '0' no es un puerto (1 a 65535)"),
        (["--listar", "--estadisticas"], "elija una sola acción; se pidieron --listar, --estadisticas"),
        (["--listar", "--productos", "pan"], "--productos solo sirve para enviar un pedido, no con --listar"),
        (
            ["--estadisticas", "--esperar"],
            "--esperar sigue un pedido enviado o --consultar, no --estadisticas",
        ),
        (["--estado", "listo"], "--estado solo sirve con --listar"),
        (["--listar", "--estado", "hecho"], "'hecho' no es un estado"),
        (["--cliente", "Ana"], "al pedido le falta --productos, --direccion"),
        ([], "sin terminal, indique el pedido con --cliente, --productos y --direccion"),
        (["--consultar", "-3"], "opción --consultar: '-3' no es un número de pedido"),
        (["--nada"], "opciones desconocidas: --nada"),
        (["--listar", "--desde-linea", "3"], "--desde-linea solo sirve con --archivo"),
        (["--archivo", "-", "--desde-linea", "0"], "'0' no es un número de línea (1 o más)"),
    ],
)
def test_usage_errors_exit_2_in_spanish(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("uso: cliente.py") and message in one_line_reason(err)


def test_help_lists_every_option_with_an_example(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "uso: cliente.py" in out and "opciones:" in out
    assert "usage" not in out and "show this help" not in out and "show program" not in out
    options = [s for action in build_parser()._actions for s in action.option_strings if s.startswith("--")]
    assert len(options) == 28  # with tasks: --consultar-referencia and --reintentar; --desde-linea
    for option in options:
        assert option in out and (option == "--help" or option in EXAMPLES), option


def test_unreachable_or_silent_server_exits_3(capsys, fake_server, dead_port):
    code, _, err = run(capsys, "--port", dead_port, "--estadisticas")
    assert code == 3 and one_line_reason(err).startswith(
        f"cliente.py: no se puede conectar con localhost:{dead_port}"
    )
    silent = fake_server("silent")
    code, _, err = run(capsys, "--port", silent.port, "--timeout", "0.3", *order_args(silent.port, "Ana")[2:])
    assert code == 3 and one_line_reason(err) == (
        "cliente.py: el servidor dejó de responder (nada en 0.3 s); "
        "si el servidor usa TLS, conéctese con --tls"
    )
    mute = fake_server("mute")
    code, _, err = run(capsys, "--port", mute.port, "--timeout", "0.3", "--consultar", "1", "--esperar")
    assert code == 3 and "dejó de responder" in one_line_reason(err)
    code, _, err = run(
        capsys, "--port", fake_server("hangup").port, "--archivo", "-", stdin='{"cliente": "A"}\n' * 5
    )
    assert code == 3 and re.search("cerró|perdió", one_line_reason(err))
    code, _, err = run(capsys, "--port", fake_server("busy").port, "--listar")
    assert code == 1 and "rechazado (servidor_ocupado)" in one_line_reason(err)


@pytest.mark.parametrize(
    ("reply", "argv", "why"),
    [
        (b'{"ok": true}', ["--consultar", "1"], "'pedido' falta"),
        (b'{"ok": true}', ["--listar"], "'pedidos' falta"),
        (b'{"ok": true}', ["--estadisticas"], "'estados' falta"),
        (
            b'{"ok": true, "estado": "pendiente"}',
            ["--cliente", "A", "--productos", "p", "--direccion", "d"],
            "'id' falta",
        ),
        (  # was a KeyError's traceback: --json printed the reply unchecked, --esperar took its id
            b'{"ok": true, "estado": "pendiente"}',
            ["--cliente", "A", "--productos", "p", "--direccion", "d", "--json", "--esperar"],
            "'id' falta",
        ),
        (b'{"ok": true, "pedido": {"id": "7"}}', ["--consultar", "7"], "'id' no es un número entero"),
        (b'{"ok": true, "pedidos": [1]}', ["--listar"], "'pedidos' no es una lista de objetos"),
        (b'{"ok": false, "error": 5, "mensaje": null}', ["--consultar", "1"], "'error' no es un texto"),
        (b'{"ok": "yes"}', ["--consultar", "1"], 'b\'{"ok": "yes"}\''),
    ],
)
def test_a_reply_not_shaped_as_the_contract_says_is_one_line_and_exit_3(
    capsys, fake_server, reply, argv, why
):
    # Was a KeyError's traceback, exit 1 (which says "refused"), or "rechazado (5): None".
    fake = fake_server("answer", reply + b"\n")
    code, out, err = run(capsys, "--port", fake.port, *argv)
    assert (code, out) == (3, "")
    assert one_line_reason(err) == f"cliente.py: respuesta inesperada del servidor: {why}"


def test_what_a_terminal_would_obey_in_a_stored_order_is_shown_escaped(quick_server, capsys):
    # Any client may store these; an administrator's `--listar` must not have
    # its screen cleared, its window retitled or a line overwritten by them.
    cliente = unique("Evil\x1b[2J\x1b]0;pwned\x07")
    stored = {"cliente": cliente, "productos": ["p\x1b[31mred\u202e"], "direccion": "d\rOVERWRITE"}
    with LineClient("127.0.0.1", quick_server.port) as conn:
        order_id = conn.ask(stored)["id"]
    code, out, _ = run(capsys, "--port", quick_server.port, "--consultar", order_id)
    assert code == 0
    assert (
        "Evil\\x1b[2J\\x1b]0;pwned\\x07" in out and "p\\x1b[31mred\\u202e" in out and "d\\rOVERWRITE" in out
    )
    code, out, _ = run(capsys, "--port", quick_server.port, "--listar", "--cliente", cliente)
    assert code == 0 and "Evil\\x1b[2J" in out
    for shown in (out, run(capsys, "--port", quick_server.port, "--consultar", order_id)[1]):
        assert not any(c in shown for c in "\x1b\x07\r\u202e"), shown
    # A program asking for JSON gets the values as stored.
    code, out, _ = run(capsys, "--port", quick_server.port, "--consultar", order_id, "--json")
    assert json.loads(out)["pedido"]["cliente"] == cliente


# --- the real script on a terminal -------------------------------------------------------------


class Terminal:
    """The real `cliente.py` with its stdin and stderr (and stdout, unless piped) on a
    pseudo-terminal; what it writes there is collected in `screen`."""

    def __init__(
        self, *argv: object, stdout_to_pipe: bool = False, env: dict[str, str] | None = None
    ) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, str(CLIENTE), *map(str, argv)],
            stdin=slave,
            stdout=subprocess.PIPE if stdout_to_pipe else slave,
            stderr=slave,
            cwd=ROOT,
            env={**os.environ, "TERM": "dumb", "COLUMNS": "100", **(env or {})},
        )
        os.close(slave)
        # A wide window, so that readline never scrolls a long answer sideways.
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 1000, 0, 0))
        self.screen = ""
        self._seen = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def _read(self, timeout: float) -> bytes | None:
        """What the script wrote within `timeout` (b"" if nothing), None once it closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the script ended and closed the terminal
            return None
        # A character may come in two reads: the decoder keeps its first half.
        self.screen += self._decoder.decode(data)
        return data or None

    def expect(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while (found := self.screen.find(text, self._seen)) < 0:
            if time.monotonic() > deadline or self._read(0.1) is None:
                raise AssertionError(f"{text!r} not shown; the terminal shows:\n{self.screen}")
        self._seen = found + len(text)

    def interrupt(self, timeout: float = 20) -> int:
        """Ctrl-C, as many times as it takes: a SIGINT that lands in the instant
        between a prompt and the wait for input is only seen at the next key, for
        a person as for a test. Returns the exit status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1)
        return self.finish()

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def answer_the_rest(self, cliente: str) -> None:
        """Answer the questions from the customer's name on, with one bread to Calle 1."""
        self.type(f"{cliente}\r")
        self.expect("Productos, separados por comas")
        self.type("pan\r")
        self.expect("Dirección (hasta 500 caracteres): ")
        self.type("Calle 1\r")

    def finish(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0):
            pass
        return self.proc.wait(max(0.1, deadline - time.monotonic()))  # raises past the deadline

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        os.close(self.master)


@pytest.fixture
def terminal():
    opened: list[Terminal] = []

    def _open(*argv: object, **kwargs: Any) -> Terminal:
        opened.append(Terminal(*argv, **kwargs))
        return opened[-1]

    yield _open
    for term in opened:
        term.close()


def test_interactive_asks_again_until_each_answer_is_valid(quick_server, terminal):
    name = unique()
    term = terminal("--port", quick_server.port, "--referencia", name)
    term.expect("Cliente (hasta 200 caracteres): ")
    term.type("   \r")
    term.expect("'cliente' está vacío. Inténtelo de nuevo.")
    term.expect("Cliente (hasta 200 caracteres): ")
    term.type(f"  {name}  \r")
    term.expect("Productos, separados por comas")
    term.type("pan,, agua\r")
    term.expect("El producto 2 de 'productos' está vacío. Inténtelo de nuevo.")
    term.expect("Productos, separados por comas")
    term.type("pan, agua\r")
    term.expect("Dirección (hasta 500 caracteres): ")
    term.type("x" * 501 + "\r")
    term.expect("'direccion' tiene 501 caracteres; el máximo es 500. Inténtelo de nuevo.")
    term.expect("Dirección (hasta 500 caracteres): ")
    term.type("Av. Siempre Viva 742\r")
    term.expect(f"Pedido a enviar:\r\n  cliente:   {name}\r\n  productos: pan, agua\r\n")
    term.expect("  dirección: Av. Siempre Viva 742\r\n")
    term.expect("Pedido recibido: número ")
    assert term.finish() == 0
    with Client("127.0.0.1", quick_server.port) as client:
        (stored,) = client.list(cliente=name)
    assert (stored.productos, stored.direccion, stored.referencia) == (
        ("pan", "agua"),
        "Av. Siempre Viva 742",
        name,
    )


@pytest.mark.parametrize("env", [{"LC_ALL": "C.UTF-8"}, {"PYTHONIOENCODING": "utf-8:strict"}])
def test_interactive_an_answer_that_is_no_utf8_is_asked_again(quick_server, terminal, env):
    # Was UnicodeEncodeError's traceback once the order was sent (the C locale
    # hands such bytes over as lone surrogates), or UnicodeDecodeError's at the
    # question (a strict UTF-8 stdin).
    name = unique()
    term = terminal("--port", quick_server.port, "--referencia", name, env=env)
    term.expect("Cliente (hasta 200 caracteres): ")
    os.write(term.master, b"Jos\xff\xfe\r")  # bytes UTF-8 never uses
    term.expect("La respuesta no es texto UTF-8 (¿la terminal usa otra codificación?). Inténtelo de nuevo.")
    term.expect("Cliente (hasta 200 caracteres): ")
    term.answer_the_rest(name)
    term.expect("Pedido recibido: número ")
    assert term.finish() == 0 and "Traceback" not in term.screen
    with Client("127.0.0.1", quick_server.port) as client:
        assert [o.cliente for o in client.list(cliente=name)] == [name]


def test_interactive_ctrl_c_and_end_of_input_send_nothing(quick_server, terminal):
    term = terminal("--port", quick_server.port)
    term.expect("Cliente (hasta 200 caracteres): ")
    assert term.interrupt() == 130
    assert "cliente.py: interrumpido; pedido no enviado" in term.screen and "Traceback" not in term.screen
    term = terminal("--port", quick_server.port, "--cliente", "Ana")
    term.expect("Productos, separados por comas")
    term.type("\x04")  # Ctrl-D on an empty line: end of input
    assert term.finish() == 2
    # On a line of its own, not after the question.
    assert re.search(
        r"caracteres\): \r?\ncliente\.py: pedido no enviado \(se acabó la entrada\)", term.screen
    )


def test_interactive_questions_stay_on_the_terminal_when_stdout_is_redirected(quick_server, terminal):
    # `cliente.py > recibo.txt`: the questions went into the file with the answer, and the
    # person at the terminal typed into a blank screen
    name = unique()
    term = terminal("--port", quick_server.port, "--referencia", name, stdout_to_pipe=True)
    term.expect("Cliente (hasta 200 caracteres): ")
    term.answer_the_rest(name)
    assert term.finish() == 0
    assert term.proc.stdout is not None
    out = term.proc.stdout.read().decode()
    assert "Cliente (" not in out and "Dirección (" not in out
    assert out.startswith(f"Pedido a enviar:\n  cliente:   {name}\n") and "Pedido recibido: número " in out
    term = terminal("--port", quick_server.port, "--cliente", "Ana", stdout_to_pipe=True)
    term.expect("Productos, separados por comas")
    term.type("\x04")  # Ctrl-D: the reason on a line of its own, not after the question
    assert term.finish() == 2
    assert re.search(r"caracteres\): \r?\ncliente\.py: pedido no enviado", term.screen), term.screen


def test_ctrl_c_while_following_an_order(tmp_path: Path, terminal):
    # One worker busy for a minute: the order followed stays pendiente throughout.
    args = ("--workers", "1", "--work-time", "60", "--shutdown-timeout", "1")
    with running_server(tmp_path, *args) as srv:
        with Client("127.0.0.1", srv.port) as client:
            client.submit(unique(), ["p"], "d")  # the worker's
            last = client.submit(unique(), ["p"], "d").id
        term = terminal("--port", srv.port, "--consultar", last, "--esperar")
        term.expect(f"Pedido {last}: pendiente")
        assert term.interrupt() == 130
    assert f"cliente.py: interrumpido; el pedido {last} sigue su curso" in term.screen
    assert "Traceback" not in term.screen


def test_esperar_cut_short_by_a_stop_names_the_order_and_exits_3(tmp_path: Path, terminal):
    # One worker busy for a minute: only the stop can end these two esperar.
    args = ("--workers", "1", "--work-time", "60", "--shutdown-timeout", "1")
    with running_server(tmp_path, *args) as srv, LineClient("127.0.0.1", srv.port) as line:
        with Client("127.0.0.1", srv.port) as client:
            first, second = (client.submit(unique(), ["pan"], "Calle 1").id for _ in range(2))
        line.send({"accion": "esperar", "id": first, "timeout": 600})
        term = terminal("--port", srv.port, "--consultar", second, "--esperar")
        term.expect(f"Pedido {second}: pendiente")
        wait_for(lambda: esperando(srv.port) == 2)  # both read and waiting
        assert srv.stop() == 0
        reply = line.read()
    assert (reply["error"], reply["apagando"], reply["pedido"]["id"]) == ("tiempo_agotado", True, first)
    assert "apagando" in reply["mensaje"] and "después de" not in reply["mensaje"]
    assert term.finish() == 3
    # The terminal follows with short esperar, one after another: the stop
    # answers the one open ("se detuvo"), or comes between two and closes the
    # connection before the next is read. Either way: the order, and how to go on.
    screen = term.screen.replace("\r\n", "")
    stopped = (
        f"cliente.py: el servidor se detuvo mientras se esperaba el pedido {second}, que sigue 'pendiente'; "
        f"cuando vuelva a estar en marcha, --consultar {second} --esperar lo sigue"
    )
    closed = f"; el pedido {second} sigue su curso (--consultar {second} --esperar lo sigue)"
    assert stopped in screen or screen.endswith(closed), screen
    assert "Traceback" not in term.screen


def test_esperar_cut_short_by_a_lost_connection_says_how_to_follow_the_order_again(tmp_path: Path, terminal):
    with running_server(tmp_path, "--workers", "1", "--work-time", "60") as srv:
        with Client("127.0.0.1", srv.port) as client:
            client.submit(unique(), ["pan"], "Calle 1")  # the worker's
            order_id = client.submit(unique(), ["pan"], "Calle 1").id
        term = terminal("--port", srv.port, "--consultar", order_id, "--esperar")
        term.expect(f"Pedido {order_id}: pendiente")
        srv.kill()
        assert term.finish() == 3
    assert term.screen.replace("\r\n", "").endswith(
        f"; el pedido {order_id} sigue su curso (--consultar {order_id} --esperar lo sigue)"
    ), term.screen
    assert "Traceback" not in term.screen


def test_progress_bar_on_a_terminal_and_summary_on_stdout(quick_server, terminal, tmp_path: Path):
    path = tmp_path / "muchos.jsonl"
    order = json.dumps({"cliente": unique(), "productos": ["pan"], "direccion": "Calle 1"})
    path.write_text((order + "\n") * 3000)
    term = terminal("--port", quick_server.port, "--archivo", path, stdout_to_pipe=True)
    assert term.finish() == 0
    assert term.proc.stdout is not None
    out = term.proc.stdout.read().decode()
    bars = re.findall(r"\r\[[#.]+\] ([\d ]+)/3000 +(\d+)%  [\d ]+ pedidos/s  faltan ", term.screen)
    assert bars and bars[-1] == ("3000", "100")
    assert term.screen.endswith("\r\x1b[K")  # the bar is cleared at the end
    assert "\r" not in out and out.startswith(f"3000 pedidos de {path} en ") and "aceptados:  3000\n" in out


# --- what a person reads ------------------------------------------------------------------------


def test_an_order_waiting_for_a_retry_says_the_error_the_time_and_the_tries_so_far():
    order = Order.from_reply(
        {
            "id": 7,
            "cliente": "Ana",
            "productos": ["pan"],
            "direccion": "d",
            "estado": "pendiente",
            "fecha_recibido": "2026-12-03T00:18:14.000000+00:00",
            "intentos": 2,
            "fallos": 2,
            "error": "ValueError: no vendemos eso",
            "reintentar_despues": "2026-12-03T00:18:18.000000+00:00",
        }
    )
    at = order.retry_at.astimezone().strftime("%H:%M:%S")  # type: ignore[union-attr]
    assert state_line(order) == (
        f"Pedido 7: pendiente; la tarea falló (ValueError: no vendemos eso), se reintenta a las {at}"
        " (2 intentos hasta ahora)."
    )


@pytest.mark.parametrize(
    ("n", "shown"),
    [(0, "0"), (999, "999"), (2000, "2000"), (9999, "9999"), (12000, "12 000"), (1234567, "1 234 567")],
)
def test_counts_group_thousands_only_from_five_digits(n, shown):
    # RAE: "2000 pedidos", "12 000 pedidos"; a script greps a four-digit count as it is.
    assert count(n) == shown


# --- a file cut short, and sent again -----------------------------------------------------------


def _stored(srv: ServerProcess) -> int:
    with LineClient("127.0.0.1", srv.port) as client:
        return sum(client.ask({"accion": "estadisticas"})["estados"].values())


def test_archivo_interrupted_says_what_is_stored_and_how_to_finish_without_duplicates(tmp_path: Path):
    lines = 20_000
    path = tmp_path / "muchos.jsonl"
    orders = (json.dumps({"cliente": f"C{n}", "productos": ["pan"], "direccion": "d"}) for n in range(lines))
    path.write_text("\n".join(orders) + "\n")
    with running_server(tmp_path, "--work-time", "0") as srv:
        argv = ["--port", str(srv.port), "--archivo", str(path), "--referencias-auto"]
        proc = subprocess.Popen(
            [sys.executable, str(CLIENTE), *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            wait_for(lambda: proc.poll() is not None or _stored(srv) >= 1000, timeout=60)
            # Freezing the server holds the client mid-file however fast the
            # machine is, so the file can be small; what it has sent and not
            # seen acknowledged must then be counted as unsure, never as stored.
            os.kill(srv.pid, signal.SIGSTOP)
            try:
                proc.send_signal(signal.SIGINT)
                out, err = (stream.decode() for stream in proc.communicate(timeout=30))
            finally:
                os.kill(srv.pid, signal.SIGCONT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, out + err
        saved = int(
            re.search(r"guardados \(confirmados por el servidor\): ([\d ]+)\n", out).group(1).replace(" ", "")
        )
        unsure = re.search(r"sin confirmar: ([\d ]+) \(", out)
        maybe = int(unsure.group(1).replace(" ", "")) if unsure else 0
        assert 0 < saved < lines and "Traceback" not in err
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith(f"cliente.py: interrumpido; {count(saved)} pedidos guardados")
        )
        # What it says is stored is, and nothing beyond what it says may be.
        wait_for(lambda: _stored(srv) >= saved)
        assert _stored(srv) <= saved + maybe
        again = re.search(r"Para terminar sin duplicar nada, repita la misma orden: (.+)\n", out).group(1)
        command = shlex.split(again)
        assert command[:2] == ["python3", str(CLIENTE)] and command[2:] == argv  # as it was run
        done = subprocess.run(
            [sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"aceptados:  {count(lines)} (" in done.stdout
        stored = listed(srv.port)
        rows = (len(stored), len({o["referencia"] for o in stored}), min(o["cliente"] for o in stored))
        assert rows == (lines, lines, "C0")  # one order per line, none twice
        sample = listed(srv.port, cliente="C41")
        assert len(sample) == 1 and re.fullmatch(r"auto-[0-9a-f]{16}-42", sample[0]["referencia"])


def test_auto_referencias_follow_the_content_not_the_name():
    data = b'{"cliente": "A", "productos": ["p"], "direccion": "d"}\n\n[1]\n'
    data += b'{"cliente": "B", "referencia": "mia"}\n'
    keys = [
        e.order.get("referencia") if e.problem is None and isinstance(e.order, dict) else None
        for e in auto_referencias(read_entries(data), data)
    ]
    digest = hashlib.sha256(data).hexdigest()[:16]
    assert keys == [f"auto-{digest}-1", None, "mia"]  # [1] is no order: the server refuses it as it is
    assert auto_referencias(read_entries(data), data) == auto_referencias(read_entries(data), bytes(data))
    other = data.replace(b'"A"', b'"a"')  # another file, even at the same path: other keys
    assert auto_referencias(read_entries(other), other)[0].order["referencia"] != keys[0]
    one_line = b'[{"cliente": "A"}, {"cliente": "A"}]'
    refs = [e.order["referencia"] for e in auto_referencias(read_entries(one_line), one_line)]
    assert len(set(refs)) == 2 and all(len(r) <= 100 for r in refs)


def test_one_refused_order_is_singular(quick_server, capsys, tmp_path: Path):
    path = tmp_path / "uno.jsonl"
    name = unique()
    good = {"cliente": name, "productos": ["p"], "direccion": "d", "referencia": name}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "productos": []}) + "\n")
    code, out, err = run(capsys, "--port", quick_server.port, "--archivo", path)
    assert code == 1 and one_line_reason(err) == "cliente.py: 1 pedido rechazado, detallado en el resumen"
    assert out.startswith(f"2 pedidos de {path} en ")
    code, out, err = run(capsys, "--port", quick_server.port, "--archivo", path)
    assert "  aceptados:  1 (1 ya estaba: no se duplicó)\n" in out


def test_the_console_script_calls_itself_by_its_name_and_both_tell_the_version(capsys, dead_port):
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, f"pedidos {__version__}\n")
    script = Path(sys.executable).with_name("pedidos-cliente")
    assert script.exists(), "the [test] install puts the console script beside python"
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30).stdout
    assert shown.startswith("uso: pedidos-cliente [opciones]") and "cliente.py" not in shown
    assert "\n  pedidos-cliente --archivo ejemplos/pedidos.jsonl " in shown
    failed = subprocess.run(
        [script, "--port", str(dead_port), "--estadisticas"], capture_output=True, text=True, timeout=30
    )
    assert failed.returncode == 3 and failed.stderr.startswith("pedidos-cliente: no se puede conectar")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert version.stdout == f"pedidos {__version__}\n"
