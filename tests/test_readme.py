"""The README's examples work as written: its telnet session replayed against the
real server, its files present, its commands run, and `cliente.py --help`'s
examples naming only programs and files that exist."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import CLIENTE, ROOT, LineClient, running_server

from pedidos.client.cli.args import EXAMPLES

README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else len(README)]


def blocks(text: str, lang: str = "") -> list[str]:
    """The fenced blocks of `text` marked `lang` (none: unmarked)."""
    found = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)
    return [body for mark, body in found if mark == lang]


def json_values(text: str) -> list[object]:
    decoder, values, pos = json.JSONDecoder(), [], 0
    while (pos := len(text) - len(text[pos:].lstrip())) < len(text):
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)
    return values


def same_outcome(shown: dict, got: dict) -> bool:
    """A reply as the README shows it, give or take the times and the worker."""
    keys = ("ok", "error", "id", "estado")
    if any(shown.get(k) != got.get(k) for k in keys):
        return False
    if "pedido" in shown:
        fields = ("id", "cliente", "productos", "direccion", "estado")
        return all(shown["pedido"][f] == got.get("pedido", {}).get(f) for f in fields)
    return True


def test_the_telnet_session_works_as_written(tmp_path: Path):
    telnet = section("Try it with telnet")
    session = [v for block in blocks(telnet) if not block.startswith("$") for v in json_values(block)]
    inline = [json.loads(c) for c in re.findall(r"`(\{\"accion\".*?\})`", telnet)]
    assert len(session) >= 4 and len(inline) >= 3
    with running_server(tmp_path, "--work-time", "0.2") as srv, LineClient("127.0.0.1", srv.port) as line:
        expected = None
        for value in session:
            if isinstance(value, dict) and "ok" in value:
                assert expected is not None and same_outcome(value, expected), (value, expected)
                expected = None
            else:
                expected = line.ask(json.dumps(value, indent=1))  # pasted over several lines
        for command in inline:
            assert line.ask(command)["ok"] is True, command


def test_the_client_examples_name_files_and_programs_that_exist(tmp_path: Path):
    client = section("The client")
    created = set(re.findall(r"> (\S+\.jsonl)", client))
    named = re.findall(r"--archivo (\S+)", client + EXAMPLES)
    assert "ejemplos/pedidos.jsonl" in named
    for path in named:
        assert path in ("-",) or path in created or (ROOT / path).exists(), path
    for example in EXAMPLES.splitlines():
        for command in example.split("|")[:-1]:  # what feeds a pipe must exist
            program = shlex.split(command)[0]
            assert shutil.which(program), f"{program!r} in cliente.py --help does not exist"
    (maker,) = [b for b in blocks(client, "bash") if "pedidos-100k.jsonl" in b]
    make = maker[: maker.index("> pedidos-100k.jsonl") + len("> pedidos-100k.jsonl")]
    subprocess.run(
        ["bash", "-c", make.replace("python3", shlex.quote(sys.executable))], cwd=tmp_path, check=True
    )
    lines = (tmp_path / "pedidos-100k.jsonl").read_text().splitlines()
    assert len(lines) == 100_000 and json.loads(lines[-1])["cliente"] == "Cliente 99999"


def test_the_example_file_sent_twice_stores_five_orders(tmp_path: Path):
    command = ["--archivo", "ejemplos/pedidos.jsonl", "--referencias-auto"]
    assert f"python3 cliente.py {shlex.join(command)}" in section("The client")
    with running_server(tmp_path, "--work-time", "0") as srv:
        for again in ("", " (5 ya estaban: no se duplicaron)"):
            done = subprocess.run(
                [sys.executable, str(CLIENTE), "--port", str(srv.port), *command],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0 and f"  aceptados:  5{again}\n" in done.stdout, (
                done.stdout + done.stderr
            )
        with LineClient("127.0.0.1", srv.port) as line:
            found = line.ask({"accion": "listar", "contiene": "pérez", "orden": "desc"})["pedidos"]
    assert [o["cliente"] for o in found] == ["JUAN PÉREZ", "Juan Pérez"]
