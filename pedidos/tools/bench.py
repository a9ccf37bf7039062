"""`python3 -m pedidos.bench`: how fast the order server takes and processes orders.

Starts the real server (`servidor.py`, a free port, a temporary database) and,
in the same run, two bare asyncio echo servers (streams and Protocol), drives
each from separate load processes with the same load generator
(`bench_load`), and prints one table. The ratio of a server figure to the
matching echo figure is what counts: it says how close the server comes to
what one Python process can move over a socket on this machine.

    python3 -m pedidos.bench [--seconds 5] [--connections 50] [--workers 2] [--runs 3] [--json FILE]

Loopback only. Every process it starts is stopped before it returns, on error
and on Ctrl-C too. Figures over several runs are medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pedidos.domain import Estado
from pedidos.panel import panel_missing
from pedidos.tools import cload, redis
from pedidos.tools.load import BenchError, drive
from pedidos.tools.panelwatch import PanelWatcher, panel_url
from pedidos.tools.procs import Child, ask, cpu_share, cpu_snapshot, peak_rss_mb, stats, wait_quiet
from pedidos.tools.report import BASELINES, HEADROOM_LIMIT, Row, ceilings, medians, table

ORDER = {"cliente": "Banco de pruebas", "productos": ["pan", "agua"], "direccion": "Av. Siempre Viva 742"}
LINE = (json.dumps(ORDER, ensure_ascii=False) + "\n").encode()
BUSY_WARNING = 30  # % of a core used by other programs during a window
GROUPS = ("echo", "redis", "intake", "panel", "e2e", "many", "worktime")


def _sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def _window(child: Child, probe: Any = None) -> Any:
    """A `during` hook for `drive`: CPU shares over the window, and `probe()` at both ends."""
    writer = child.writer_pid()

    def during(start: float, end: float, pids: list[int]) -> dict[str, Any]:
        _sleep_until(start)
        before, first = cpu_snapshot(child.pid, pids, writer), probe() if probe else None
        _sleep_until(end)
        after, last = cpu_snapshot(child.pid, pids, writer), probe() if probe else None
        return {"cpu": cpu_share(before, after, end - start), "probe": (first, last), "end": end}

    return during


def _load(args: argparse.Namespace, child: Child, pipelined: bool, line: bytes = LINE, **kw: Any) -> Any:
    shape = {"conns": args.pipeline_conns, "depth": args.depth} if pipelined else {"conns": args.connections}
    options = {"seconds": args.seconds, "warm": args.warm, "procs": args.load_procs, "engine": args.generator}
    _quiet(args)
    result = drive(child.port, line, **{**shape, "during": _window(child), **options, **kw})
    _warn(result, child)
    other = result["during"]["cpu"]["other"]
    if other > BUSY_WARNING:
        print(f"  warning: other programs used {other}% of a core meanwhile; figures low", file=sys.stderr)
    return result


def _quiet(args: argparse.Namespace) -> None:
    if args.quiet_wait > 0 and wait_quiet(args.quiet_wait) >= 0.25:
        print(
            f"  warning: the machine stayed busy for {args.quiet_wait:g} s; measuring anyway", file=sys.stderr
        )


def _warn(result: dict[str, Any], child: Child) -> None:
    """Say so when replies were refused or connections lost: the figures may mean little."""
    failed = {k: result.get(k) for k in ("bad", "lost", "unanswered", "refused", "connect_failed")}
    if any(failed.values()):
        print(f"  warning: {failed}; e.g. {result['sample_bad']!r}; server log:", file=sys.stderr)
        print("    " + child.tail().replace("\n", "\n    "), file=sys.stderr)


def _row(result: dict[str, Any], **extra: Any) -> Row:
    cpu = (result.get("during") or {}).get("cpu", {})
    row = {k: result[k] for k in ("rate", "p50_ms", "p99_ms", "bad", "lost")}
    return {**row, **{f"cpu_{k}": v for k, v in cpu.items()}, **extra}


def _server(
    args: argparse.Namespace, tmp: Path, name: str, work_time: str, max_conns: int = 10_000, *extra: str
) -> Child:
    db = str(tmp / f"{name}.db")
    if args.db:  # a shared database: each scenario starts from an empty table
        db = args.db
        _empty_postgres(db)
    argv = ["-m", "pedidos", "--host", "127.0.0.1", "--port", "0", "--db", db, *extra]
    argv += ["--workers", str(args.workers), "--work-time", work_time]
    argv += ["--max-connections", str(max_conns), "--shutdown-timeout", "10"]
    child = Child(argv, tmp / f"{name}.log", ready_text=" ready: ")
    if args.verbose:
        print(f"  {name}: server pid {child.pid}, port {child.port}", file=sys.stderr)
    return child


def _empty_postgres(url: str) -> None:
    import psycopg  # the postgres extra: only when --db names PostgreSQL

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN IF to_regclass('pedidos') IS NOT NULL THEN "
            "TRUNCATE pedidos, nodos RESTART IDENTITY; END IF; END $$"
        )


def _baseline(args: argparse.Namespace, child: Child, name: str, rows: dict[str, Row], line: bytes) -> None:
    """A baseline's two rows, each measured again with one more load process: if
    that raises its rate, the generator, not the baseline, was the ceiling."""
    for kind, pipelined in (("rr", False), ("pipe", True)):
        result = _load(args, child, pipelined, line, greeting=False, check=False)
        more = _load(args, child, pipelined, line, greeting=False, check=False, procs=args.load_procs + 1)
        rows[f"{name}_{kind}"] = _row(result, headroom=more["rate"] / result["rate"] - 1)


def echo_rows(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    for mode in ("streams", "protocol"):
        child = Child(["-m", "pedidos.tools.echo", mode], tmp / f"echo-{mode}.log")
        try:
            _baseline(args, child, f"echo_{mode}", rows, LINE)
        finally:
            child.stop()


def redis_rows(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    if not redis.available():
        print(
            "  redis: skipped: redis-server not installed (apt-get install -y redis-server)", file=sys.stderr
        )
        return
    child = redis.start(tmp)
    try:
        _baseline(args, child, "redis", rows, redis.rpush(LINE))
    finally:
        child.stop()


def intake_rows(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    # Workers nearly idle (1 s an order): this measures taking orders in.
    child = _server(args, tmp, "intake", "1")
    try:
        rows["intake_rr"] = _row(_load(args, child, False))
        rows["intake_pipe"] = _row(_load(args, child, True))
    finally:
        child.stop()


def panel_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    """Intake as in `intake_rr` on two servers side by side, one with a page open on its
    panel and /metrics scraped every second, measured in turn (plain, panel, panel,
    plain) so that a machine getting busier or quieter weighs on both alike."""
    missing = panel_missing()
    if missing:
        print(f"  skipping the panel scenario: {missing}", file=sys.stderr)
        return
    plain = _server(args, tmp, "plain", "1")
    try:
        panel = _server(args, tmp, "panel", "1", 10_000, "--panel", "0")
        try:
            with PanelWatcher(panel_url(panel.log)) as watcher:
                results = [_load(args, child, False) for child in (plain, panel, panel, plain)]
        finally:
            panel.stop()
    finally:
        plain.stop()
    # The rates move with whatever else the machine runs; the event loop's CPU time
    # per ack much less so: both say what the panel costs.
    loop_us = [r["during"]["cpu"]["loop"] * 1e4 / r["rate"] if r["rate"] else 0.0 for r in results]
    plain_rate = (results[0]["rate"] + results[3]["rate"]) / 2
    row = _row(results[1], panel_messages=watcher.messages, scrapes=watcher.scrapes)
    row["rate"] = (results[1]["rate"] + results[2]["rate"]) / 2
    rows["intake_panel_rr"] = {
        **row,
        "plain_rate": plain_rate,
        "vs_plain": row["rate"] / plain_rate,
        "loop_us": (loop_us[1] + loop_us[2]) / 2,
        "plain_loop_us": (loop_us[0] + loop_us[3]) / 2,
    }


def e2e_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    child = _server(args, tmp, "e2e", "0")
    try:
        listo = lambda: stats(child.port)["estados"][Estado.LISTO]  # noqa: E731
        result = _load(args, child, False, during=_window(child, listo))
        first, last = result["during"]["probe"]
        deadline = time.monotonic() + max(60.0, 20 * args.seconds)
        while True:
            figures = stats(child.port)
            backlog = figures["en_cola"] + figures["estados"][Estado.EN_PROCESO]
            if not backlog or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        drain = time.time() - result["during"]["end"]
        rows["e2e"] = _row(result, listo_rate=(last - first) / args.seconds, drain_s=drain, left=backlog)
    finally:
        child.stop()


def many_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    child = _server(args, tmp, "many", "1", max_conns=max(10_000, args.many + 100))
    try:
        _quiet(args)
        options = {"procs": args.load_procs, "engine": args.generator}
        result = drive(child.port, LINE, conns=args.many, limit=1, seconds=60, **options)
        _warn(result, child)
        rss = peak_rss_mb(child.pid)
        ok = result["count"] - result["bad"]
        fields = ("p50_ms", "p99_ms", "bad", "lost", "refused", "connect_failed", "connected", "connect_s")
        rows["many"] = {"acked": ok, **{k: result[k] for k in fields}, "rss_mb": rss}
    finally:
        child.stop()


def worktime_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    t = args.work_time_check
    child = _server(args, tmp, "worktime", f"{t:g}")
    try:
        expected = args.workers / t
        total = math.ceil(expected * (args.seconds + 3))  # never lets the workers run dry
        _quiet(args)
        for start in range(0, total, 200):
            ask(child.port, [ORDER] * min(200, total - start))
        time.sleep(0.5)
        first, began = stats(child.port)["estados"][Estado.LISTO], time.monotonic()
        time.sleep(args.seconds)
        figures, ended = stats(child.port), time.monotonic()
        rate = (figures["estados"][Estado.LISTO] - first) / (ended - began)
        if not figures["en_cola"]:
            print("  warning: the work-time backlog ran dry; the rate is low", file=sys.stderr)
        rows["worktime"] = {"rate": rate, "expected": expected, "ratio": rate / expected}
    finally:
        child.stop()


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Row] = {}
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pedidos-bench-") as tmp:
        steps = {"echo": echo_rows, "redis": redis_rows, "intake": intake_rows, "panel": panel_row}
        steps["e2e"] = e2e_row
        steps.update(many=many_row, worktime=worktime_row)
        for group in args.only:
            steps[group](args, Path(tmp), rows)
    for kind in ("rr", "pipe"):
        for base in BASELINES:
            if f"intake_{kind}" in rows and f"{base}_{kind}" in rows:
                intake, baseline = rows[f"intake_{kind}"], rows[f"{base}_{kind}"]
                intake[f"vs_{base}"] = intake["rate"] / baseline["rate"]
    if "e2e" in rows and "intake_rr" in rows:
        rows["e2e"]["keep_up"] = rows["e2e"]["listo_rate"] / rows["intake_rr"]["rate"]
    return {"loadavg": loadavg, "rows": rows}


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse


def _groups(text: str) -> list[str]:
    chosen = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in chosen if g not in GROUPS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose among {','.join(GROUPS)}, not {text!r}")
    return [g for g in GROUPS if g in chosen]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m pedidos.bench", description=__doc__.split("\n\n")[0])
    seconds, count = _positive(float), _positive(int)
    p.add_argument("--seconds", type=seconds, default=5.0, help="measured seconds per scenario (default 5)")
    p.add_argument("--warm", type=float, default=1.0, help="warm-up seconds before each window (default 1)")
    p.add_argument("--connections", type=count, default=50, help="req/resp connections (default 50)")
    p.add_argument("--workers", type=count, default=2, help="server worker processes (default 2)")
    p.add_argument(
        "--db",
        metavar="URL",
        help="a postgresql:// database for the servers (emptied before each scenario); default: SQLite files",
    )
    p.add_argument("--runs", type=count, default=1, help="runs; figures are medians (default 1)")
    p.add_argument("--json", metavar="FILE", help="write every run, the medians and the configuration here")
    p.add_argument("--pipeline-conns", type=count, default=4, help="pipelined connections (default 4)")
    depth = "requests in flight per pipelined connection (default 100)"
    p.add_argument("--depth", type=count, default=100, help=depth)
    many = "connections of the many-clients scenario (default 10000)"
    p.add_argument("--many", type=count, default=10_000, help=many)
    work = "work time of the work-time scenario, against N/T (default 0.05)"
    p.add_argument("--work-time-check", type=seconds, default=0.05, metavar="T", help=work)
    gen = "load generator: c (built with the machine's cc; python where there is none) or python (default c)"
    p.add_argument("--generator", choices=("c", "python"), default="c", help=gen)
    procs = "load generator processes (default 1 for c, 2 for python)"
    p.add_argument("--load-procs", type=count, default=None, help=procs)
    only = f"comma-separated subset of {','.join(GROUPS)} (default all)"
    p.add_argument("--only", type=_groups, default=list(GROUPS), help=only)
    quiet = "before each scenario, wait up to S s for other programs to leave the CPUs idle (default 0)"
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="S", help=quiet)
    p.add_argument("-v", "--verbose", action="store_true", help="say what runs, with server pids")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.generator == "c":
        try:
            cload.build()
        except cload.LoadgenUnavailable as exc:
            print(f"bench: {exc}; using the Python load generator", file=sys.stderr)
            args.generator = "python"
    if args.load_procs is None:
        args.load_procs = 1 if args.generator == "c" else 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: every child is stopped
    runs = []
    try:
        for number in range(1, args.runs + 1):
            if args.verbose or args.runs > 1:
                print(f"run {number}/{args.runs} (load average {os.getloadavg()[0]:.2f})", file=sys.stderr)
            runs.append(one_run(args))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    result = medians(runs)
    print(table(result, args))
    bound = ceilings(result)
    if args.json:
        command = ["python3", "-m", "pedidos.bench", *(sys.argv[1:] if argv is None else argv)]
        machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
        document = {"command": command, "config": vars(args), "machine": machine, "runs": runs}
        Path(args.json).write_text(json.dumps({**document, "median": result}, indent=2) + "\n")
    if bound:
        limit = f"{100 * HEADROOM_LIMIT:.0f}%"
        print(f"bench: the load generator was the ceiling (+{limit} or more with one more):", file=sys.stderr)
        print("  " + "\n  ".join(bound), file=sys.stderr)
        print("  the ratios against those baselines flatter the server; figures not valid", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
