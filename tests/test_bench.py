"""The benchmark runs end to end in a tiny configuration, and every process it
starts ends, after a normal run and after Ctrl-C. No speed is asserted here:
speed lives in the benchmark's own output (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import assert_nothing_left, marked_processes, stop_tool

from pedidos.tools import baselines, redis, slices
from pedidos.tools.bench import GROUPS, PG_GROUPS, build_parser, parse_args
from pedidos.tools.drive import drive
from pedidos.tools.load import BenchError
from pedidos.tools.procs import TICK, Child, machine_times
from pedidos.tools.report import CPU_PARTS, ceilings, medians, table
from pedidos.tools.scenarios import LINE

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--seconds", "0.3", "--warm", "0.1", "--connections", "5", "--pipeline-conns", "2", "--depth", "5"]
TINY += ["--many", "200", "--work-time-check", "0.02", "--load-procs", "1"]
ROWS = {
    "echo_streams_rr",
    "echo_protocol_rr",
    "echo_streams_pipe",
    "echo_protocol_pipe",
    "redis_rr",
    "redis_pipe",
    "intake_rr",
    "intake_pipe",
    "intake_uv_rr",  # [test] installs the rapido extra: its uvloop is measured too
    "intake_uv_pipe",
    "intake_panel_rr",
    "e2e",
    "many",
    "worktime",
}


def _bench(marker: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pedidos.bench", *args],
        cwd=ROOT,
        env={**os.environ, "PEDIDOS_BENCH_TEST": marker, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_tiny_run_measures_every_scenario_and_leaves_nothing(tmp_path):
    marker = f"bench-{uuid.uuid4()}"
    out = tmp_path / "bench.json"
    bench = _bench(marker, *TINY, "--json", str(out))
    try:
        stdout, stderr = bench.communicate(timeout=300)
    finally:
        stop_tool(bench)
        assert_nothing_left(marker)
    # On a busy machine a baseline can rise with one more load process; the benchmark
    # then says so and exits 1. Either way every row is measured and reported.
    bound = "a baseline was not at its own limit" in stderr
    assert bench.returncode == (1 if bound else 0), stderr
    assert "pedidos intake, req/resp" in stdout and "echo, Protocol, pipelined" in stdout
    assert "Redis RPUSH, fsync always, pipelined" in stdout
    document = json.loads(out.read_text())
    median = document["median"]
    assert set(median) == ROWS
    for name in ROWS - {"many", "worktime"}:
        assert median[name]["rate"] > 0, name
        assert median[name]["bad"] == 0 and median[name]["lost"] == 0, (name, stderr)
    for kind in ("rr", "pipe"):
        for base in ("echo_streams", "echo_protocol", "redis"):
            assert median[f"intake_{kind}"][f"vs_{base}"] > 0
            assert median[f"intake_uv_{kind}"][f"vs_{base}"] > 0
            assert median[f"{base}_{kind}"]["headroom"] > -1  # measured again with one more load process
            assert median[f"{base}_{kind}"]["spread"] >= 0  # between two windows of the usual load
    assert median["e2e"]["left"] == 0  # the backlog drained
    # CPU shares of every part, the host's steal among them, in the JSON and the table.
    assert "CPU % loop/threads/writer/workers/load/other/steal" in stdout
    assert all(median["intake_rr"][f"cpu_{part}"] >= 0 for part in CPU_PARTS)
    many = median["many"]
    assert (many["acked"], many["refused"], many["connect_failed"], many["lost"]) == (200, 0, 0, 0)
    assert many["rss_mb"] > 0
    assert median["worktime"]["rate"] > 0
    assert len(document["runs"]) == 1


def test_without_a_c_compiler_every_window_runs_on_the_python_generator(tmp_path):
    # No cc on PATH and no binary built yet: the benchmark says it falls back to
    # Python. The servers' warm-up asked for the C generator all the same, and the
    # run ended at once: "bench: no C compiler (cc) on this machine", exit 1.
    marker = f"bench-{uuid.uuid4()}"
    env = {"PATH": str(tmp_path / "nothing"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    bench = _bench(marker, *TINY, "--only", "e2e", env=env)
    try:
        stdout, stderr = bench.communicate(timeout=120)
    finally:
        stop_tool(bench)
        assert_nothing_left(marker)
    assert "using the Python load generator" in stderr
    assert bench.returncode == 0, stderr
    assert "| pedidos end to end, 2 workers " in stdout
    assert not (tmp_path / "cache").exists()  # nothing was built


def test_ctrl_c_stops_the_servers_and_the_load(tmp_path):
    marker = f"bench-{uuid.uuid4()}"
    bench = _bench(marker, "--only", "intake", "--seconds", "60", "--connections", "5")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = " ".join(marked_processes(marker).values())
            if "-m pedidos " in running and running.count("spawn_main") >= 4:  # 2 workers, 2 load
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the benchmark did not start its load: {marked_processes(marker)}")
        bench.send_signal(signal.SIGINT)
        _, stderr = bench.communicate(timeout=60)
        assert bench.returncode == 130, stderr
        assert "interrupted" in stderr
    finally:
        stop_tool(bench)
        assert_nothing_left(marker)


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
    assert parse_args(["--db", "postgresql://x/y"]).only == list(GROUPS)
    assert parse_args([]).only == [g for g in GROUPS if g not in PG_GROUPS]  # SQLite: one node
    assert parse_args([]).nodos == 1 and parse_args(["--db", "postgresql://x/y", "--nodos", "3"]).nodos == 3


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--nodos", "2"], "--nodos"),
        (["--only", "intake,failover"], "--only"),
        (["--only", "esperar"], "--only"),
        (["--db", "postgresql://x/y", "--nodos", "27"], "--nodos"),
        (["--db", "postgresql://x/y", "--nodos", "0"], "--nodos"),
    ],
)
def test_node_options_without_a_postgresql_database_are_refused(args, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    assert exit_info.value.code == 2
    assert f"argument {named}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["--pipeline-conns", "2", "--load-procs", "2"], ["--connections", "3", "--load-procs", "4"]]
)
def test_a_baseline_whose_one_more_load_process_would_add_none_is_refused(args, capsys):
    # Each load process drives one connection at least: with 2 pipelined connections,
    # "2 + 1" processes were the same 2, and the generator check passed unmeasured.
    for only in (["--only", "echo"], ["--only", "redis,intake"], []):
        with pytest.raises(SystemExit) as exit_info:
            parse_args([*args, *only])
        assert exit_info.value.code == 2
        assert "argument --load-procs" in capsys.readouterr().err
    assert parse_args([*args, "--only", "intake,e2e"]).load_procs > 1  # no baseline: nothing to check
    assert parse_args(["--pipeline-conns", "3", "--load-procs", "2"]).load_procs == 2


def test_time_the_host_stole_is_counted_apart_from_other_programs(tmp_path):
    # /proc/stat's first line, in clock ticks: user nice system idle iowait irq softirq steal ...
    stat = tmp_path / "stat"
    stat.write_text(f"cpu  {3 * TICK} {TICK} {2 * TICK} 900 5 0 {4 * TICK} {7 * TICK} 0 0\ncpu0 1 2 3\n")
    # Busy: user, nice, system, irq (softirq is mostly the benchmark's own loopback traffic).
    assert machine_times(str(stat)) == (6.0, 7.0)


def test_failures_of_one_run_are_not_hidden_by_the_median_of_three():
    runs = [
        {"rows": {"intake_rr": {"rate": 100.0, "bad": 0, "lost": 0}, "e2e": {"left": 0}}},
        {"rows": {"intake_rr": {"rate": 90.0, "bad": 7, "lost": 2}, "e2e": {"left": 40}}},
        {"rows": {"intake_rr": {"rate": 95.0, "bad": 0, "lost": 0}, "e2e": {"left": 0}}},
    ]
    many = [{"acked": 200, "refused": 0, "connect_failed": 0}]
    many.append({"acked": 150, "refused": 50, "connect_failed": 3})
    runs += [{"rows": {"many": row}} for row in many + many[:1]]
    result = medians(runs)
    assert result["intake_rr"] == {"rate": 95.0, "bad": 7, "lost": 2}
    assert result["e2e"]["left"] == 40
    assert result["many"] == {"acked": 200, "refused": 50, "connect_failed": 3}


def test_a_baseline_raised_by_one_more_load_process_fails_the_run():
    rows = {
        "echo_streams_rr": {"rate": 100.0, "headroom": 0.04},
        "redis_pipe": {"rate": 100.0, "headroom": 0.05},
        "intake_rr": {"rate": 50.0},
    }
    assert ceilings(rows) == ["redis_pipe: +5% with one more load process"]
    assert ceilings({"echo_streams_rr": {"rate": 1.0, "headroom": -0.2}}) == []


def test_an_echo_whose_loop_waits_fails_the_run_whatever_one_more_process_did():
    # With the cores full (other programs, a slow generator), one more load
    # process cannot raise anything: an audit saw "-8 %", valid, with the
    # echo's loop at 29 % of a core. An echo not at its own limit is no
    # baseline. Redis waits for its fsync by design: not judged by its loop.
    rows = {
        "echo_streams_rr": {"rate": 100.0, "headroom": -0.08, "cpu_loop": 29.0},
        "echo_protocol_rr": {"rate": 100.0, "headroom": 0.0, "cpu_loop": 97.0},
        "redis_rr": {"rate": 50.0, "headroom": 0.0, "cpu_loop": 70.0},
    }
    assert ceilings(rows) == ["echo_streams_rr: its loop at 29% of a core, under 90%"]
    shown = table(rows, build_parser().parse_args([]))
    assert "-8% NOT AT ITS LIMIT" in shown and shown.count("NOT AT ITS LIMIT") == 1


def test_a_run_that_crossed_the_limit_alone_is_named(monkeypatch, capsys):
    # The verdict is the medians' (here valid: +1 %); the run that was not
    # must not vanish into them.
    from pedidos.tools import bench

    rises = iter([0.01, 0.12, -0.02])
    monkeypatch.setattr(
        bench, "one_run", lambda args: {"rows": {"redis_rr": {"rate": 50.0, "headroom": next(rises)}}}
    )
    assert bench.main(["--runs", "3", "--only", "redis"]) == 0
    err = capsys.readouterr().err
    assert "bench: in run 2 alone, redis_rr: +12% with one more load process" in err
    assert "run 1 alone" not in err and "run 3 alone" not in err


def test_one_more_load_process_is_compared_with_the_windows_either_side_of_it(monkeypatch):
    # Three windows: the usual load, one more process, the usual load again. The
    # baseline is the mean of its two usual windows, and how far apart they came
    # is shown next to the verdict: a drift no longer reads as headroom.
    rates = iter([100.0, 102.0, 104.0, 200.0, 230.0, 202.0])
    calls = []

    def fake_measure(args, child, pipelined, line, **kw):
        calls.append((pipelined, kw.get("procs")))
        return {"rate": next(rates), "p50_ms": 1.0, "p99_ms": 2.0, "bad": 0, "lost": 0, "latencies": [0.001]}

    monkeypatch.setattr(baselines, "measure", fake_measure)
    monkeypatch.setattr(baselines, "warm_up", lambda *a, **kw: None)
    args = build_parser().parse_args(["--load-procs", "2"])
    rows: dict = {}
    baselines._baseline(args, None, "echo_streams", rows, b"x\n")
    # Both rows' windows came within 5 %: one bracket each settles them.
    assert calls == [(False, None), (False, 3), (False, None), (True, None), (True, 3), (True, None)]
    rr, pipe = rows["echo_streams_rr"], rows["echo_streams_pipe"]
    assert rr["rate"] == 102.0 and rr["headroom"] == pytest.approx(0) and rr["brackets"] == 1
    assert rr["spread"] == pytest.approx(4 / 102)
    assert pipe["rate"] == 201.0 and pipe["headroom"] == pytest.approx(230 / 201 - 1)
    assert pipe["brackets"] == 1 and pipe["spread"] == pytest.approx(2 / 201)
    assert [c.split(":")[0] for c in ceilings(rows)] == ["echo_streams_pipe"]
    shown = table(rows, args)
    assert "+0% (4% apart)" in shown and "+14% GENERATOR-BOUND (1% apart)" in shown


def _noisy(monkeypatch, rr_rates: list[float]) -> dict:
    """The rows of a baseline whose request/response windows are `rr_rates`
    and whose pipelined ones are steady."""
    rates = iter([*rr_rates, 500.0, 490.0, 500.0])
    window = {"p50_ms": 1.0, "p99_ms": 2.0, "bad": 0, "lost": 1, "latencies": [0.001]}
    monkeypatch.setattr(baselines, "measure", lambda *a, **kw: {**window, "rate": next(rates)})
    monkeypatch.setattr(baselines, "warm_up", lambda *a, **kw: None)
    rows: dict = {}
    baselines._baseline(build_parser().parse_args([]), None, "redis", rows, b"x\n")
    assert rows["redis_pipe"]["brackets"] == 1
    return rows


def test_a_noisy_baseline_is_measured_in_three_brackets_pooled(monkeypatch):
    # One bracket of a row whose usual windows came 20 % apart says "+10 %":
    # under its own resolution. It gets three, whatever the first one said,
    # and they are pooled: here the rise goes.
    rows = _noisy(monkeypatch, [90.0, 99.0, 110.0, 100.0, 96.0, 100.0, 100.0, 97.0, 100.0])
    rr = rows["redis_rr"]
    assert rr["brackets"] == 3 and rr["rate"] == 100.0 and rr["lost"] == 9
    assert rr["headroom"] == pytest.approx(97.33 / 100 - 1, abs=1e-4)
    assert rr["spread"] == pytest.approx(0.2 / 3)  # the brackets' mean: 20 %, 0, 0
    assert ceilings(rows) == []
    # And where it stays, the pooled rise flags the row.
    rows = _noisy(monkeypatch, [90.0, 120.0, 110.0, 100.0, 110.0, 100.0, 100.0, 112.0, 100.0])
    assert rows["redis_rr"]["headroom"] == pytest.approx(114 / 100 - 1)
    assert [c.split(":")[0] for c in ceilings(rows)] == ["redis_rr"]
    assert "GENERATOR-BOUND (3 brackets, 7% apart)" in table(rows, build_parser().parse_args([]))


@pytest.mark.skipif(not redis.available(), reason="redis-server not installed")
def test_a_redis_that_answers_errors_is_no_baseline(redis_answering_errors, tmp_path):
    # Redis answering every RPUSH with an error made rows of replies/s: the generator
    # counts its lines without reading them. The benchmark now asks Redis afterwards, and stops.
    args = parse_args([*TINY, "--seconds", "0.2", "--warm", "0.05", "--only", "redis"])
    rows: dict = {}
    with pytest.raises(BenchError, match=r"error replies .*WRONGTYPE"):
        baselines.redis_rows(args, tmp_path, rows)
    assert rows["redis_rr"]["rate"] > 0  # what the rows said of it


def _drive_echo(tmp_path, ports, line: bytes, generator: str, **kw):
    """`drive` against a Protocol echo: `ports(echo_port)` says where to connect."""
    echo = Child(["-m", "pedidos.tools.echo", "protocol"], tmp_path / "echo.log")
    try:
        # An echo says no "ok": true: every reply counts (check=False), as for the baselines.
        options = {"seconds": 30, "greeting": False, "check": False, "engine": generator, "procs": 2}
        return drive(ports(echo.port), line, **options, **kw)
    finally:
        echo.stop()


@pytest.mark.parametrize("generator", ["c", "python"])
def test_both_generators_count_every_reply_of_an_echo(generator, tmp_path):
    line = b"x" * 90 + b"\n"
    result = _drive_echo(tmp_path, lambda port: port, line, generator, conns=4, depth=3, limit=50)
    assert (result["count"], result["lost"], result["unanswered"], result["requests"]) == (200, 0, 0, 200)


@pytest.mark.parametrize("generator", ["c", "python"])
def test_a_list_of_ports_spreads_the_connections_evenly_over_them(generator, tmp_path):
    with socket.socket() as closed:  # a port nothing listens on: its share fails to connect
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    result = _drive_echo(tmp_path, lambda port: [port, dead], b"x\n", generator, conns=5, limit=4)
    assert (result["connected"], result["connect_failed"]) == (3, 2)
    assert (result["count"], result["lost"], result["unanswered"]) == (12, 0, 0)


@pytest.mark.parametrize("generator", ["c", "python"])
def test_replies_that_refuse_the_order_are_not_counted_as_acks(generator, tmp_path):
    # An order the server refuses (here pedido_invalido: no productos) is answered at
    # once with "ok": false: a reply, not an ack. It was counted in the rate and timed.
    server = Child(["-m", "pedidos", "--port", "0", "--db", str(tmp_path / "p.db")], tmp_path / "p.log")
    try:
        refused = json.dumps({"cliente": "x", "productos": [], "direccion": "y"}).encode() + b"\n"
        options = {"conns": 2, "limit": 10, "seconds": 30, "engine": generator, "procs": 2}
        result = drive(server.port, refused, **options)
        assert (result["count"], result["bad"], result["requests"]) == (0, 20, 20)
        assert result["p50_ms"] != result["p50_ms"]  # no latency of an ack: nan
        result = drive(server.port, LINE, **options)
        assert (result["count"], result["bad"], result["requests"]) == (20, 0, 20)
    finally:
        server.stop()


def test_nodes_of_one_postgresql_database_measure_every_node_scenario_and_leave_nothing(pg_url, tmp_path):
    marker = f"bench-{uuid.uuid4()}"
    out = tmp_path / "bench.json"
    only = "intake,e2e,sqlite,notify,failover,esperar"
    # Windows a little longer than TINY's: a busy machine can stall a node for a few tenths.
    args = [*TINY, "--seconds", "0.5", "--db", pg_url, "--nodos", "2", "--only", only, "--samples", "3"]
    args += ["--json", str(out)]
    bench = _bench(marker, *args)
    try:
        stdout, stderr = bench.communicate(timeout=300)
    finally:
        stop_tool(bench)
        assert_nothing_left(marker)
    assert bench.returncode == 0, stderr  # no baseline here, so no generator ceiling either
    assert "50 conns" not in stdout and "5 conns, 2 nodes" in stdout, stdout
    median = json.loads(out.read_text())["median"]
    assert set(median) == {"intake_rr", "intake_pipe", "dblimit_1", "dblimit_100", "e2e"} | set(PG_GROUPS)
    for name in ("intake_rr", "intake_pipe", "e2e"):
        row = median[name]
        assert row["rate"] > 0 and row["bad"] == 0 and row["lost"] == 0, (name, stderr)
        # The session's cluster runs here: its postmaster's tree is measured too (a
        # tiny window may see no clock tick of it, but never "n/a", a missing figure).
        assert row["nodes"] == 2 and row["us_node"] > 0 and row["us_pg"] >= 0, (name, row)
        assert row["cpu_steal"] >= 0 and row["cpu_other"] >= 0, (name, row)
    assert median["e2e"]["left"] == 0  # every order acknowledged reached listo
    for batch in (1, 100):
        assert median[f"dblimit_{batch}"]["rate"] > 0 and median[f"dblimit_{batch}"]["pg_us"] >= 0
    notify = median["notify"]
    assert notify["rate"] > 0 and notify["sin_rate"] > 0 and notify["ratio"] > 0
    assert 0 <= notify["spread"] < 2  # how far apart one node's two windows came
    versus = median["sqlite"]  # one node against a server on a SQLite file, in turns
    assert versus["rate"] > 0 and versus["sqlite_rate"] > 0 and versus["bad"] == 0 and versus["lost"] == 0
    assert versus["ratio"] == pytest.approx(versus["rate"] / versus["sqlite_rate"], rel=0.5)
    assert versus["us_node"] > 0 and versus["sqlite_us"] > 0
    failover = median["failover"]
    assert failover["nodes"] == 2 and failover["handed_back"] >= 1 and failover["took_s"] > 0
    assert median["esperar"]["samples"] == 3 and median["esperar"]["p50_ms"] > 0


def test_postgresql_cpu_is_read_from_the_local_postmaster_and_is_na_for_a_remote_one(pg_url):
    from pedidos.tools.pgdb import postmaster_pid

    pid = postmaster_pid(pg_url)
    assert pid is not None
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert Path(f"/proc/{parent}/comm").read_text().strip() != "postgres"  # the root of its tree
    assert postmaster_pid("postgresql://u@db.example.com:5432/x") is None  # not even connected to
    args = build_parser().parse_args([])
    shown = table({"intake_rr": {"rate": 10.0, "p50_ms": 1.0, "p99_ms": 2.0, "us_node": 50.0}}, args)
    assert "CPU/order: nodes 50 µs, PostgreSQL n/a" in shown


def _sliced(document: dict, slices: int, seconds: float) -> dict:
    """The end-to-end row of `--slices`: every slice in the run, in order, covering
    the window, with its rates; the summary made of them."""
    row = document["runs"][0]["rows"]["e2e"]
    pieces = row["slices"]
    assert len(pieces) == slices == row["slices_n"]
    # Each probe runs once its boundary has come (a busy machine only makes it later).
    assert pieces[0]["from_s"] >= 0 and pieces[-1]["to_s"] < seconds + 5, pieces
    for k, piece in enumerate(pieces):
        assert piece["from_s"] < piece["to_s"] and piece["to_s"] >= (k + 1) * seconds / slices - 0.001, pieces
    assert [p["to_s"] for p in pieces[:-1]] == [p["from_s"] for p in pieces[1:]], pieces
    for key in ("listo", "acks"):
        rates = [p[f"{key}_per_s"] for p in pieces]
        # Workers may starve; and on a machine busy enough to run the first probe only after
        # the load's window (0.7 s late once, under the whole suite), no slice has its acks.
        late = pieces[0]["from_s"] >= seconds
        assert min(rates) >= 0 and (sum(rates) > 0 or key == "listo" or late), (key, pieces)
        assert (row[f"slice_{key}_first"], row[f"slice_{key}_last"]) == (rates[0], rates[-1])
        assert (row[f"slice_{key}_min"], row[f"slice_{key}_max"]) == (min(rates), max(rates))
    return row


def test_slices_show_the_end_to_end_rates_of_each_part_of_the_window(tmp_path):
    marker = f"bench-{uuid.uuid4()}"
    out = tmp_path / "bench.json"
    bench = _bench(marker, *TINY, "--seconds", "0.6", "--only", "e2e", "--slices", "3", "--json", str(out))
    try:
        stdout, stderr = bench.communicate(timeout=120)
    finally:
        stop_tool(bench)
        assert_nothing_left(marker)
    assert bench.returncode == 0, stderr  # no baseline, so no generator ceiling
    row = _sliced(json.loads(out.read_text()), 3, 0.6)
    assert "n_dead_tup" not in row  # SQLite: no dead tuples to count
    # 0.2 s each, give or take how late a busy machine let each probe run (_sliced checks the bounds).
    assert f"| pedidos end to end, steadiness | 3 slices of {row['slice_s']:,.1f} s " in stdout, stdout
    assert "listo/s: first slice " in stdout and "; acks/s: first slice " in stdout


def test_slices_on_postgresql_add_the_tables_dead_tuples(pg_url, tmp_path):
    marker = f"bench-{uuid.uuid4()}"
    out = tmp_path / "bench.json"
    args = [*TINY, "--seconds", "0.6", "--db", pg_url, "--nodos", "2", "--only", "e2e", "--slices", "2"]
    bench = _bench(marker, *args, "--json", str(out))
    try:
        stdout, stderr = bench.communicate(timeout=120)
    finally:
        stop_tool(bench)
        assert_nothing_left(marker)
    assert bench.returncode == 0, stderr
    row = _sliced(json.loads(out.read_text()), 2, 0.6)
    # Read at each slice's end; statistics lag up to a second behind, so only their presence is sure.
    for piece in row["slices"]:
        assert {"n_live_tup", "n_dead_tup", "autovacuum_count"} <= set(piece) and piece["n_dead_tup"] >= 0
    assert row["n_dead_tup"] == row["slices"][-1]["n_dead_tup"] and row["autovacuums"] >= 0
    assert " dead / " in stdout and " autovacuum runs in the window" in stdout, stdout


def test_listo_per_second_is_over_the_time_between_its_two_counts(monkeypatch):
    # The count at the window's end came 0.3 s late (a busy machine, or estadisticas
    # waiting behind the load): 800 orders listo in 0.8 s are 1,000/s, not 1,600/s.
    from pedidos.domain import Estado
    from pedidos.tools import scenarios

    drained = {"en_cola": 0, "estados": {Estado.EN_PROCESO: 0}}
    monkeypatch.setattr(scenarios, "stats", lambda port: drained)
    samples = [(100.0, {"listo": 200, "acks": 300}), (100.8, {"listo": 1000, "acks": 900})]
    during = {"samples": samples, "start": 100.0, "end": 100.5, "cpu": {}}
    result = {"rate": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "bad": 0, "lost": 0, "during": during}
    args = build_parser().parse_args(["--seconds", "0.5"])
    row = scenarios.e2e_figures(args, 0, result)
    assert row["listo_rate"] == pytest.approx(1000.0) and row["left"] == 0


@pytest.mark.parametrize(
    ("args", "named"), [(["--slices", "0"], "--slices"), (["--only", "intake", "--slices", "2"], "--slices")]
)
def test_slices_that_would_slice_nothing_are_refused(args, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    assert exit_info.value.code == 2
    assert f"argument {named}" in capsys.readouterr().err
    assert parse_args(["--only", "e2e", "--slices", "2"]).slices == 2 and parse_args([]).slices is None


def test_a_baseline_row_pools_its_windows_replies_and_counts_every_windows_failures():
    # Two usual windows: one steady at 1 ms, one with two slow replies in 100.
    # The row's p99 is that of all 200 replies (50 ms), not the mean of each
    # window's own (25.5 ms); and a reply lost in the window with one more load
    # process is the row's too.
    steady = {"rate": 100.0, "p50_ms": 1.0, "p99_ms": 1.0, "bad": 0, "lost": 0, "latencies": [0.001] * 100}
    slow = {**steady, "p99_ms": 50.0, "latencies": [0.001] * 98 + [0.05] * 2}
    more = {**steady, "rate": 104.0, "lost": 2}
    row = baselines.pooled_row([steady, slow], [more])
    assert row["p99_ms"] == pytest.approx(50.0) and row["p50_ms"] == pytest.approx(1.0)
    assert row["rate"] == 100.0 and row["lost"] == 2 and row["bad"] == 0


def test_a_baseline_row_pools_its_windows_replies_without_a_list_of_them_all():
    """Six windows of a fast echo hold millions of replies: a list of them all
    (~32 bytes each) took hundreds of MB; their sorted arrays are read in place."""
    import random
    import tracemalloc
    from array import array

    from pedidos.tools.drive import percentile

    rng = random.Random(7)
    parts = [array("d", sorted(rng.random() for _ in range(n))) for n in (300_000, 200_000, 1, 0, 250_000)]
    empty = {"rate": 1.0, "p50_ms": 0.0, "p99_ms": 0.0, "bad": 0, "lost": 0}
    windows = [{**empty, "latencies": p} for p in parts]
    every = sorted(x for p in parts for x in p)
    tracemalloc.start()
    try:
        row = baselines.pooled_row(windows, [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert row["p50_ms"] == percentile(every, 0.50) * 1000
    assert row["p99_ms"] == percentile(every, 0.99) * 1000
    assert peak < 1_000_000, peak
    pooled = baselines.Pooled([array("d", [1, 2, 2, 5]), array("d", [2, 3])])
    assert [pooled[k] for k in range(len(pooled))] == [1, 2, 2, 2, 3, 5]


def test_cpu_shares_are_of_the_time_between_the_snapshots_as_they_ran():
    # A snapshot that ends late (a busy machine reading /proc) has counted CPU
    # past the window's planned end: the share is of the time the two
    # snapshots actually span, not of the planned window.
    calls = []

    def snapshot():
        calls.append(time.time())
        if len(calls) == 2:
            time.sleep(0.4)
        return len(calls)

    start = time.time() + 0.05
    before, after, seconds, samples = slices.run_window(start, start + 0.1, 1, snapshot, None)
    assert (before, after) == (1, 2) and samples == [None, None]
    # From the first snapshot to halfway through the second's 0.4 s, as they
    # ran (either may wake late), far past the planned 0.1 s.
    assert abs(seconds - (calls[1] + 0.2 - calls[0])) < 0.05, (seconds, calls)
    assert seconds > 0.1 + 0.1
