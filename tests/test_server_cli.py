"""`servidor.py`'s command line (contract §8): what it takes, and what it refuses
with argparse's own exit status 2 before starting anything."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLIENTE, ROOT, SERVIDOR, clean_environ

from pedidos import pyversion
from pedidos.protocol.framing import DEFAULT_MAX_REQUEST_BYTES
from pedidos.server.cli import build_parser, main
from pedidos.server.optvalues import parse_work_time


@pytest.mark.parametrize(
    ("text", "bounds"),
    [
        ("0", (0.0, 0.0)),
        ("2", (2.0, 2.0)),
        ("0.05", (0.05, 0.05)),
        ("1-3", (1.0, 3.0)),
        ("0-0", (0.0, 0.0)),
        ("0.5-1.5", (0.5, 1.5)),
        ("2-2", (2.0, 2.0)),
        ("3600", (3600.0, 3600.0)),
        ("0-3600", (0.0, 3600.0)),
    ],
)
def test_parse_work_time_accepts_fixed_or_range(text, bounds):
    assert parse_work_time(text) == bounds


@pytest.mark.parametrize(
    "text",
    ["", "abc", "3-1", "3601", "0-3601", "-1", "1-2-3", "1-x", "x-1", "nan", "inf", "1-inf", "nan-1", "--"],
)
def test_parse_work_time_refuses_the_rest(text):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse_work_time(text)
    assert repr(text) in str(info.value) or text in str(info.value)


def test_parse_work_time_refuses_a_range_without_its_end():
    with pytest.raises(argparse.ArgumentTypeError):
        parse_work_time("1-")


def test_defaults_are_the_contract(monkeypatch):
    monkeypatch.delenv("PEDIDOS_DB", raising=False)  # a caller's own default must not count here
    args = build_parser().parse_args([])
    assert args.host is None  # main() reads that as localhost: 127.0.0.1 and ::1
    assert args.port == 8888
    assert args.workers == 2
    assert args.db == "pedidos.db"
    assert args.work_time == (1.0, 3.0)
    assert args.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES == 64 * 1024


def test_every_contract_flag():
    args = build_parser().parse_args(
        ["--host", "::", "--host", "127.0.0.1", "--port", "0", "--workers", "4", "--db", "x.db"]
        + ["--work-time", "0.5-2"]
    )
    assert args.host == ["::", "127.0.0.1"]
    assert (args.port, args.workers, args.db, args.work_time) == (0, 4, "x.db", (0.5, 2.0))
    assert build_parser().parse_args(["--port", "65535"]).port == 65535


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["--host"],
        ["--port"],
        ["--port", "70000"],
        ["--port", "65536"],
        ["--port", "-1"],
        ["--port", "http"],
        ["--workers", "0"],
        ["--workers", "-2"],
        ["--workers", "two"],
        ["--workers", "1.5"],
        ["--work-time", "3-1"],
        ["--work-time", "slow"],
        ["--work-time", "5000"],
        ["--max-request-bytes", "0"],
        ["--max-connections", "0"],
        ["--idle-timeout", "soon"],
        ["--shutdown-timeout", "x"],
        ["--log-level", "TRACE"],
        ["stray-positional"],
    ],
)
def test_bad_flags_exit_2_with_a_usage_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag", [["--nodo", "a"], ["--lease", "3"], ["--lease", "5"], ["--sin-notify"]])
def test_postgresql_flags_on_a_sqlite_file_exit_2(flag, tmp_path, capsys):
    # Ignored without a word, they would let an operator believe them in effect.
    with pytest.raises(SystemExit) as info:
        main(["--db", str(tmp_path / "p.db"), *flag])
    assert info.value.code == 2
    assert f"{flag[0]} only applies with a PostgreSQL --db" in capsys.readouterr().err
    assert not (tmp_path / "p.db").exists()


@pytest.mark.parametrize("name", ["", "  "])
def test_a_blank_node_name_is_a_usage_error(name, capsys):
    # `--nodo "$NODE"` with NODE unset quietly became HOST:PORT.
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--db", "postgresql://u@h/db", "--nodo", name])
    assert info.value.code == 2
    assert "--nodo" in capsys.readouterr().err
    assert build_parser().parse_args(["--nodo", "tienda-1"]).nodo == "tienda-1"


def test_a_node_name_is_trimmed():
    # Stored trimmed like every value, or " a " and "a" would be two nodes.
    assert build_parser().parse_args(["--nodo", " tienda 1 "]).nodo == "tienda 1"


def test_panel_host_without_the_panel_is_a_usage_error(tmp_path, capsys):
    # Ignored without a word, it would let an operator believe the panel listens there.
    with pytest.raises(SystemExit) as info:
        main(["--db", str(tmp_path / "p.db"), "--panel-host", "0.0.0.0"])
    assert info.value.code == 2
    assert "--panel-host only applies with --panel" in capsys.readouterr().err
    assert not (tmp_path / "p.db").exists()


@pytest.mark.parametrize("lease", ["0", "0.1", "0.99", "-1", "nan"])
def test_a_lease_under_a_second_is_a_usage_error(lease, capsys):
    # `--lease 0.1` was taken: renewals thirty times a second per node, and
    # live nodes declared dead at the first hiccup.
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--db", "postgresql://u@h/db", "--lease", lease])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--lease" in err and ("1 second or more" in err or "seconds" in err), err
    assert build_parser().parse_args(["--lease", "1"]).lease == 1.0


@pytest.mark.parametrize("argv", [["--idle-timeout", "-1"], ["--shutdown-timeout", "-5"]])
def test_negative_timeouts_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2


def test_real_command_line_usage_error_and_help(tmp_path):
    bad = subprocess.run(
        [sys.executable, str(SERVIDOR), "--workers", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "usage:" in bad.stderr and "--workers" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
    assert not (tmp_path / "pedidos.db").exists()  # refused before touching anything
    shown = subprocess.run(
        [sys.executable, str(SERVIDOR), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0
    for flag in ("--host", "--port", "--workers", "--db", "--work-time"):
        assert flag in shown.stdout


def servidor_with_db(db: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`servidor.py --port 0 --db DB` run in `cwd`, with no PEDIDOS_* variable."""
    return subprocess.run(
        [sys.executable, str(SERVIDOR), "--port", "0", "--db", db],
        cwd=cwd,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_empty_db_is_a_usage_error_that_touches_nothing(tmp_path):
    # `--db "$DB"` with DB unset: the empty path named the working directory, the start
    # failed with "cannot create <cwd>: Is a directory" and left <cwd>.lock beside it
    cwd = tmp_path / "tienda"
    cwd.mkdir()
    bad = servidor_with_db("", cwd)
    assert bad.returncode == 2, bad.stderr
    assert "--db" in bad.stderr and "empty" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tienda"]
    assert not any(cwd.iterdir())


def test_blank_pedidos_db_means_the_default(monkeypatch):
    monkeypatch.setenv("PEDIDOS_DB", "  ")
    assert build_parser().parse_args([]).db == "pedidos.db"


@pytest.mark.parametrize(
    ("text", "said"), [("nan", "not a number of seconds: 'nan'"), ("-1", "1 second or more")]
)
def test_a_lease_out_of_bounds_says_its_own_bound(text, said, capsys):
    # "nan" and "-1" were told "must be 0 or more seconds", a bound --lease does not have.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--db", "postgresql://u@h/db", "--lease", text])
    assert said in capsys.readouterr().err


PYTHON_3_9 = Path("/root/.pyenv/versions/3.9.18/bin/python")


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ([str(SERVIDOR), "--port", "0"], "servidor.py: pedidos needs Python 3.10 or newer; this is 3.9.18"),
        (
            [str(CLIENTE), "--estadisticas"],
            "cliente.py: pedidos necesita Python 3.10 o posterior; este es 3.9.18",
        ),
        (
            ["-m", "pedidos", "--port", "0"],
            "python3 -m pedidos: pedidos needs Python 3.10 or newer; this is 3.9.18",
        ),
    ],
)
def test_an_older_python_is_told_in_one_line_before_anything_starts(entry, said, tmp_path, monkeypatch):
    # On 3.9 the server logged `ready`, then crashed with a traceback.
    if PYTHON_3_9.exists():
        ran = subprocess.run(
            [str(PYTHON_3_9), *entry],
            cwd=tmp_path,
            env=clean_environ({"PYTHONPATH": str(ROOT)}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (ran.returncode, ran.stdout, ran.stderr) == (1, "", said + "\n")
        assert not any(tmp_path.iterdir())  # no database, no lock file
        return
    # No 3.9 here (pyenv's): the same line from the check itself, on a Python made to look old.
    program, _, _ = said.partition(": ")
    monkeypatch.setattr(pyversion.sys, "version_info", (3, 9, 18, "final", 0))
    assert pyversion.too_old(program, spanish=entry[0] == str(CLIENTE)) == said


@pytest.mark.parametrize(("db", "scheme"), [("mysql://u:secreto@h/x", "mysql"), ("sqlite:///p.db", "sqlite")])
def test_a_url_of_another_database_is_a_usage_error_that_touches_nothing(db, scheme, tmp_path):
    # `--db mysql://x` was taken for a path: "the folder <cwd>/mysql: does not exist".
    bad = servidor_with_db(db, tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.splitlines()[-1] == (
        f"servidor.py: error: argument --db: a {scheme}:// URL is not supported; "
        "give a SQLite file (pedidos.db) or a postgresql:// URL"
    )
    assert "secreto" not in bad.stderr + bad.stdout  # a password in the URL is not echoed
    assert not any(tmp_path.iterdir())
    assert build_parser().parse_args(["--db", "postgres://u@h/db"]).db == "postgres://u@h/db"


def test_small_slips_get_a_hint_of_what_was_meant(capsys):
    # From a new user's walkthrough: each was refused with no clue to the fix.
    import errno
    import socket

    from pedidos.client.cli.args import build_parser as client_parser
    from pedidos.client.problems import unresolved
    from pedidos.server.preflight import StartupError, listen_addresses
    from pedidos.wording import port_advice

    assert (
        build_parser().parse_args(["--log-format", "JSON"]).log_format == "json"
    )  # any case, as --log-level
    with pytest.raises(StartupError, match="the port goes in --port"):
        listen_addresses("nohay.invalid:8888", 0)
    missing = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert "el puerto va aparte: --port" in str(unresolved("localhost:8888", missing))
    assert "puerto" not in str(unresolved("nohay.invalid", missing))  # no colon, no hint
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    assert port_advice(in_use, "--panel").endswith("stop it, or choose another --panel")
    with pytest.raises(SystemExit):
        client_parser().parse_args(["estadisticas"])
    assert "(¿quiso decir --estadisticas?)" in capsys.readouterr().err
