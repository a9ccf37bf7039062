"""The benchmark runs end to end in a tiny configuration, and every process it
starts ends, after a normal run and after Ctrl-C. No speed is asserted here:
speed lives in the benchmark's own output (docs/benchmarks.md)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pedidos.tools.bench import GROUPS, build_parser

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--seconds", "0.3", "--warm", "0.1", "--connections", "5", "--pipeline-conns", "2", "--depth", "5"]
TINY += ["--many", "200", "--work-time-check", "0.02", "--load-procs", "1"]
ROWS = {
    "echo_streams_rr",
    "echo_protocol_rr",
    "echo_streams_pipe",
    "echo_protocol_pipe",
    "intake_rr",
    "intake_pipe",
    "e2e",
    "many",
    "worktime",
}


def _marked(marker: str) -> dict[int, str]:
    """Processes that inherited the marker from the benchmark: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "environ").read_bytes():
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def _bench(marker: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pedidos.bench", *args],
        cwd=ROOT,
        env={**os.environ, "PEDIDOS_BENCH_TEST": marker},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_nothing_left(marker: str) -> None:
    deadline = time.monotonic() + 15
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _marked(marker)
    for pid in left:  # do not leave them running for the next test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def test_tiny_run_measures_every_scenario_and_leaves_nothing(tmp_path):
    marker = f"bench-{uuid.uuid4()}"
    out = tmp_path / "bench.json"
    bench = _bench(marker, *TINY, "--json", str(out))
    try:
        stdout, stderr = bench.communicate(timeout=300)
    finally:
        bench.kill()
        _assert_nothing_left(marker)
    assert bench.returncode == 0, stderr
    assert "pedidos intake, req/resp" in stdout and "echo, Protocol, pipelined" in stdout
    document = json.loads(out.read_text())
    median = document["median"]
    assert set(median) == ROWS
    for name in ROWS - {"many", "worktime"}:
        assert median[name]["rate"] > 0, name
        assert median[name]["bad"] == 0 and median[name]["lost"] == 0, (name, stderr)
    for kind in ("rr", "pipe"):
        assert median[f"intake_{kind}"]["vs_streams"] > 0 and median[f"intake_{kind}"]["vs_protocol"] > 0
    assert median["e2e"]["left"] == 0  # the backlog drained
    many = median["many"]
    assert (many["acked"], many["refused"], many["connect_failed"], many["lost"]) == (200, 0, 0, 0)
    assert many["rss_mb"] > 0
    assert median["worktime"]["rate"] > 0
    assert len(document["runs"]) == 1


def test_ctrl_c_stops_the_servers_and_the_load(tmp_path):
    marker = f"bench-{uuid.uuid4()}"
    bench = _bench(marker, "--only", "intake", "--seconds", "60", "--connections", "5")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = " ".join(_marked(marker).values())
            if "-m pedidos " in running and running.count("spawn_main") >= 4:  # 2 workers, 2 load
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the benchmark did not start its load: {_marked(marker)}")
        bench.send_signal(signal.SIGINT)
        _, stderr = bench.communicate(timeout=60)
        assert bench.returncode == 130, stderr
        assert "interrupted" in stderr
    finally:
        bench.kill()
        _assert_nothing_left(marker)


@pytest.mark.parametrize(
    "args",
    [["--only", "bogus"], ["--only", "intake,bogus"], ["--only", ","], ["--runs", "0"], ["--seconds", "0"]],
)
def test_arguments_that_would_measure_nothing_are_refused(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(args)
    assert exit_info.value.code == 2
    assert f"argument {args[0]}" in capsys.readouterr().err


def test_only_keeps_the_groups_in_their_running_order():
    args = build_parser().parse_args(["--only", "many, echo"])
    assert args.only == ["echo", "many"]
    assert build_parser().parse_args([]).only == list(GROUPS)
