"""The soak tool itself (`python3 -m pedidos.soak`): a short run on one server,
and on two nodes of one PostgreSQL with PostgreSQL restarted meanwhile, ends
with the audit line, `lost 0, duplicated 0, stuck 0`, and exit 0; a problem it
saw on the way (here: a restart command that fails) makes it exit 1 whatever
the audit says. Every process it started ends."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest
from conftest import ROOT, assert_nothing_left

AUDIT = re.compile(r"^acknowledged (\d+), lost 0, duplicated 0, stuck 0$", re.M)


def soak(seed: int, *args: str) -> tuple[int, str, str]:
    marker = f"soak-{uuid.uuid4()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pedidos.soak", "--seed", str(seed), *args],
        cwd=ROOT,
        env={**os.environ, "PEDIDOS_SOAK_TEST": marker},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        assert_nothing_left(marker)
    return proc.returncode, stdout, stderr


def test_a_short_soak_on_one_server_loses_nothing():
    code, stdout, stderr = soak(7, "--minutes", "0.15")
    assert code == 0, stderr
    assert AUDIT.search(stdout) and int(AUDIT.search(stdout).group(1)) > 0, (stdout, stderr)


@pytest.mark.parametrize("restart, code", [("true", 0), ("false", 1)])
def test_a_short_soak_on_two_nodes_loses_nothing_and_fails_on_a_problem(pg_url, restart, code):
    # Seed 36's chaos runs the restart command first, 3.3 s in ("true" stands for
    # a restart: tests/test_pg_nodes.py restarts a real PostgreSQL under load).
    got, stdout, stderr = soak(
        36, "--db", pg_url, "--nodos", "2", "--minutes", "0.1", "--reiniciar-pg", restart
    )
    assert AUDIT.search(stdout), (stdout, stderr)
    assert got == code, stderr
    assert ("--reiniciar-pg failed" in stderr) == (code == 1), stderr
