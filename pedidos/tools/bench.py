"""`python3 -m pedidos.bench`: how fast the order server takes and processes orders.

Starts the real server (`python -m pedidos`, a free port, a temporary
database) and, in the same run, the baselines (two bare asyncio echo servers,
streams and Protocol, and redis-server where installed: baselines.py), drives
each from separate load processes with the same load generator (`drive()`:
the C one of cload.py, or load.py's), and prints one table. The ratio of a server figure to the
matching echo figure is what counts: it says how close the server comes to
what one Python process can move over a socket on this machine.

    python3 -m pedidos.bench [--seconds 5] [--connections 50] [--workers 2] [--runs 3] [--json FILE]
    python3 -m pedidos.bench --db postgresql://... [--nodos N] [--only intake,e2e,sqlite,notify,...]
    python3 -m pedidos.bench [--db postgresql://...] --only e2e --seconds 600 --slices 10

With `--db`, intake and end to end run over N nodes of one PostgreSQL database
(`pedidos.tools.pgnodes`), beside the database's own limit from a bare script.
With `--slices N`, end to end also reports its rates in N equal slices of the
window, to show whether throughput holds (`pedidos.tools.slices`).

Loopback only. Every process it starts is stopped before it returns, on error
and on Ctrl-C too. Figures over several runs are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from pedidos.tools import baselines, cload, pgnodes, pgtiming, scenarios
from pedidos.tools.load import BenchError
from pedidos.tools.report import BASELINES, ECHO_BUSY_MIN, HEADROOM_LIMIT, Row, ceilings, medians, table

GROUPS = (
    "echo",
    "redis",
    "intake",
    "panel",
    "e2e",
    "sqlite",
    "notify",
    "failover",
    "esperar",
    "many",
    "worktime",
)
PG_GROUPS = ("sqlite", "notify", "failover", "esperar")  # many nodes of one PostgreSQL: only with --db
MAX_NODES = 26  # named A to Z


def _steps(args: argparse.Namespace) -> dict[str, Any]:
    steps = {"echo": baselines.echo_rows, "redis": baselines.redis_rows, "panel": scenarios.panel_row}
    steps.update(many=scenarios.many_row, worktime=scenarios.worktime_row)
    steps.update(sqlite=pgnodes.sqlite_row, notify=pgnodes.notify_row)
    steps.update(failover=pgtiming.failover_row, esperar=pgtiming.esperar_row)
    nodes = bool(args.db)  # intake and end to end over the nodes of the database
    steps["intake"] = pgnodes.intake_rows if nodes else scenarios.intake_rows
    steps["e2e"] = pgnodes.e2e_row if nodes else scenarios.e2e_row
    return steps


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Row] = {}
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pedidos-bench-") as tmp:
        steps = _steps(args)
        for group in args.only:
            steps[group](args, Path(tmp), rows)
    for kind in ("rr", "pipe"):
        for base in BASELINES:
            for intake_name in (f"intake_{kind}", f"intake_uv_{kind}"):
                # A window with no reply at all (a machine busy enough to stall a server
                # that long) has no ratio; the row shows its rate of 0.
                if rows.get(intake_name) and rows.get(f"{base}_{kind}", {}).get("rate"):
                    intake, baseline = rows[intake_name], rows[f"{base}_{kind}"]
                    intake[f"vs_{base}"] = intake["rate"] / baseline["rate"]
    if "e2e" in rows and rows.get("intake_rr", {}).get("rate"):
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
    p.add_argument(
        "--warm",
        type=float,
        default=1.0,
        help="untimed seconds before each window, and of each server's warm-up as it starts (default 1)",
    )
    p.add_argument("--connections", type=count, default=50, help="req/resp connections (default 50)")
    p.add_argument("--workers", type=count, default=2, help="server worker processes (default 2)")
    p.add_argument(
        "--db",
        metavar="URL",
        help="a postgresql:// database for the servers (emptied before each scenario); default: SQLite files",
    )
    nodos = "with --db: intake and end to end over N nodes (A, B, ...) of the database (default 1)"
    p.add_argument("--nodos", type=count, default=None, metavar="N", help=nodos)
    lease = "with --db: the nodes' --lease in the failover scenario (default 2)"
    p.add_argument("--lease", type=seconds, default=2.0, metavar="S", help=lease)
    samples = "with --db: orders of the cross-node esperar scenario (default 20)"
    p.add_argument("--samples", type=count, default=20, metavar="K", help=samples)
    sliced = "end to end: cut the window into N equal slices, rates of each (steadiness; default off)"
    p.add_argument("--slices", type=count, default=None, metavar="N", help=sliced)
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
    procs = "load generator processes (default 2)"
    p.add_argument("--load-procs", type=count, default=2, help=procs)
    only = f"comma-separated subset of {','.join(GROUPS)} (default all; {','.join(PG_GROUPS)} need --db)"
    p.add_argument("--only", type=_groups, default=None, help=only)
    quiet = "before each scenario, wait up to S s for other programs to leave the CPUs idle (default 0)"
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="S", help=quiet)
    p.add_argument("-v", "--verbose", action="store_true", help="say what runs, with server pids")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked together: the PostgreSQL-only groups and `--nodos`
    need `--db`; by default every group that applies to the backend runs."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.db:
        if args.nodos is not None:
            parser.error("argument --nodos: needs --db postgresql://... (SQLite is one node)")
        if args.only and set(args.only) & set(PG_GROUPS):
            parser.error(f"argument --only: {','.join(PG_GROUPS)} need --db postgresql://...")
    if args.nodos is not None and args.nodos > MAX_NODES:
        parser.error(f"argument --nodos: at most {MAX_NODES}, not {args.nodos}")
    args.nodos = args.nodos or 1
    if args.only is None:
        args.only = [g for g in GROUPS if args.db or g not in PG_GROUPS]
    fewest = min(args.connections, args.pipeline_conns)
    if {"echo", "redis"} & set(args.only) and args.load_procs >= fewest:
        # A load process gets one connection at least: with as many processes as
        # connections, "one more" would run the very same processes, and the check
        # that the generator is not the baselines' ceiling would pass unmeasured.
        parser.error(
            f"argument --load-procs: the baselines are measured again with one more load process, "
            f"which needs more connections than processes: {args.load_procs} processes, {fewest} connections"
        )
    if args.slices is not None and "e2e" not in args.only:
        parser.error("argument --slices: only end to end is sliced: add e2e to --only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generator == "c":
        try:
            cload.build()
        except cload.LoadgenUnavailable as exc:
            print(f"bench: {exc}; using the Python load generator", file=sys.stderr)
            args.generator = "python"
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
    if len(runs) > 1:
        # The verdict is the medians'; a run that crossed alone is said, not hidden.
        for number, run in enumerate(runs, 1):
            for line in ceilings(run["rows"]):
                print(f"bench: in run {number} alone, {line}", file=sys.stderr)
    if args.json:
        command = ["python3", "-m", "pedidos.bench", *(sys.argv[1:] if argv is None else argv)]
        machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
        document = {"command": command, "config": vars(args), "machine": machine, "runs": runs}
        Path(args.json).write_text(json.dumps({**document, "median": result}, indent=2) + "\n")
    if bound:
        limit = f"{100 * HEADROOM_LIMIT:.0f}%"
        print(
            f"bench: a baseline was not at its own limit (+{limit} or more with one more load "
            f"process, or an echo's loop under {ECHO_BUSY_MIN:.0f}% of a core: its load or other "
            "programs held it back):",
            file=sys.stderr,
        )
        print("  " + "\n  ".join(bound), file=sys.stderr)
        print("  the ratios against those baselines flatter the server; figures not valid", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
