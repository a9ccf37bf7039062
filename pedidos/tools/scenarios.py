"""The benchmark's scenarios on one server: intake, the panel's cost, end to
end, many clients, work time; and how each is measured, which the baselines
(baselines.py) and the PostgreSQL scenarios (pgnodes.py) share.

Each scenario starts what it measures (a fresh server), drives it with the load
generator (`pedidos.tools.drive`), stops it, and adds its rows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pedidos.domain import Estado
from pedidos.panel import panel_missing
from pedidos.server import rapido
from pedidos.tools import pgdb, slices
from pedidos.tools.drive import drive
from pedidos.tools.load import BenchError
from pedidos.tools.panelwatch import PanelWatcher, panel_url
from pedidos.tools.procs import Child, ask, cpu_share, cpu_snapshot, peak_rss_mb, stats, wait_quiet
from pedidos.tools.report import Row

ORDER = {"cliente": "Banco de pruebas", "productos": ["pan", "agua"], "direccion": "Av. Siempre Viva 742"}
LINE = (json.dumps(ORDER, ensure_ascii=False) + "\n").encode()
BUSY_WARNING = 30  # % of a core used by other programs, or stolen by the host, during a window
BUSY_PARTS = {"other": "other programs used", "steal": "the host stole from this machine"}
WARM_UP_CONNS = 50


def warm_up(args: argparse.Namespace, child: Any, line: bytes = LINE, greeting: bool = True) -> None:
    """A short untimed load on a server just started, before its first window.
    A fresh echo served its first connections at a third of its later rate for
    as long as they lasted (31k against 95k replies/s in the next window, with
    one load process or three; why is not known, and a server of ours did not
    show it), so a baseline's first window measured it cold and the headroom
    check's second window warm: "one more load process" seemed to double it.
    Every server measured gets the same warm-up, in the measured request/response
    shape (two connections for half a second left a streams echo cold once),
    so that no row is taken cold. It lasts `--warm` seconds, as the untimed
    start of each window does (1 by default; the tests' tiny runs shorten both)."""
    if args.warm > 0:
        options = {"procs": 1, "greeting": greeting, "check": False, "engine": args.generator}
        drive(child.port, line, conns=WARM_UP_CONNS, seconds=args.warm, **options)


def window(child: Child, probe: Any = None, parts: int = 1) -> Any:
    """A `during` hook for `drive`: CPU shares over the window, and `probe()` at
    both ends and at the boundaries of `parts` equal slices (`pedidos.tools.slices`)."""
    writer = child.writer_pid()

    def during(start: float, end: float, pids: list[int]) -> dict[str, Any]:
        snapshot = lambda: cpu_snapshot(child.pid, pids, writer)  # noqa: E731
        before, after, seconds, samples = slices.run_window(start, end, parts, snapshot, probe)
        cpu = cpu_share(before, after, seconds)
        return {"cpu": cpu, "samples": samples, "start": start, "end": end}

    return during


def measure(args: argparse.Namespace, child: Any, pipelined: bool, line: bytes = LINE, **kw: Any) -> Any:
    """The request/response or pipelined load on `child` (a `Child`, or anything with
    `port`, a port or a list of them, and `tail()`); CPU shares over the window."""
    shape = {"conns": args.pipeline_conns, "depth": args.depth} if pipelined else {"conns": args.connections}
    options = {"seconds": args.seconds, "warm": args.warm, "procs": args.load_procs, "engine": args.generator}
    quiet(args)
    during = kw.pop("during", None) or window(child)
    result = drive(child.port, line, **{**shape, "during": during, **options, **kw})
    warn(result, child)
    cpu = result["during"]["cpu"]
    for part, who in BUSY_PARTS.items():
        if cpu[part] > BUSY_WARNING:
            print(f"  warning: {who} {cpu[part]}% of a core meanwhile; figures low", file=sys.stderr)
    return result


def quiet(args: argparse.Namespace) -> None:
    if args.quiet_wait > 0 and wait_quiet(args.quiet_wait) >= 0.25:
        print(
            f"  warning: the machine stayed busy for {args.quiet_wait:g} s; measuring anyway", file=sys.stderr
        )


def warn(result: dict[str, Any], child: Any) -> None:
    """Say so when replies were refused or connections lost: the figures may mean little."""
    failed = {k: result.get(k) for k in ("bad", "lost", "unanswered", "refused", "connect_failed")}
    if any(failed.values()):
        print(f"  warning: {failed}; e.g. {result['sample_bad']!r}; server log:", file=sys.stderr)
        print("    " + child.tail().replace("\n", "\n    "), file=sys.stderr)


def row_of(result: dict[str, Any], **extra: Any) -> Row:
    cpu = (result.get("during") or {}).get("cpu", {})
    row = {k: result[k] for k in ("rate", "p50_ms", "p99_ms", "bad", "lost")}
    return {**row, **{f"cpu_{k}": v for k, v in cpu.items()}, **extra}


def start_server(
    args: argparse.Namespace,
    tmp: Path,
    name: str,
    work_time: str,
    max_conns: int = 10_000,
    *extra: str,
    uvloop: bool = False,
    sqlite: bool = False,
    warm: bool = True,
) -> Child:
    """A server on the standard library's event loop, as a bare install runs it,
    unless `uvloop` (the rapido extra, measured in rows of its own); on `--db`,
    unless `sqlite` (a file of its own); warmed up (`warm_up`) unless `warm` is
    false (a scenario whose count of orders the warm-up would change)."""
    db = str(tmp / f"{name}.db")
    if args.db and not sqlite:  # a shared database: each scenario starts from an empty table
        db = args.db
        pgdb.empty(db)
    argv = ["-m", "pedidos", "--host", "127.0.0.1", "--port", "0", "--db", db, *extra]
    argv += ["--workers", str(args.workers), "--work-time", work_time]
    argv += ["--max-connections", str(max_conns), "--shutdown-timeout", "10"]
    argv += [] if uvloop else ["--sin-rapido"]
    child = Child(argv, tmp / f"{name}.log", ready_text=" ready: ")
    if args.verbose:
        print(f"  {name}: server pid {child.pid}, port {child.port}", file=sys.stderr)
    if warm:
        try:
            warm_up(args, child)
        except BaseException:
            child.stop()
            raise
    return child


def intake_rows(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    # Workers nearly idle (1 s an order): this measures taking orders in. The
    # standard library's loop first (what a bare install runs); then, when the
    # rapido extra is installed, the same on uvloop, in rows of its own.
    loops = [("intake", False)] + ([("intake_uv", True)] if rapido.installed() else [])
    for name, uvloop in loops:
        child = start_server(args, tmp, name, "1", uvloop=uvloop)
        try:
            expected = f"loop {rapido.UVLOOP if uvloop else rapido.ASYNCIO}"
            if expected not in child.log.read_text("utf-8", "replace"):  # never a row under the wrong name
                raise BenchError(f"the {name} server did not say {expected!r}: {child.tail()}")
            rows[f"{name}_rr"] = row_of(measure(args, child, False))
            rows[f"{name}_pipe"] = row_of(measure(args, child, True))
        finally:
            child.stop()


def in_turns(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[list[Any], Row]:
    """Two measurements taken in turn, first, second, second, first, so that a
    machine getting busier or quieter weighs on both alike: the four results, and
    the two mean rates, their ratio, and the spread (how far apart the two windows
    of one same server came, the larger of the two: a ratio nearer 1 than that
    is within this run's noise)."""
    turns = [first(), second(), second(), first()]
    pairs = ((turns[0]["rate"], turns[3]["rate"]), (turns[1]["rate"], turns[2]["rate"]))
    rate, other = ((a + b) / 2 for a, b in pairs)
    spread = max(abs(a - b) / ((a + b) / 2) if a + b else 0.0 for a, b in pairs)
    ratio = rate / other if other else 0.0
    return turns, {"rate": rate, "other_rate": other, "ratio": ratio, "spread": spread}


def panel_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    """Intake as in `intake_rr` on two servers side by side, one with a page open on its
    panel and /metrics scraped every second, measured in turn (`in_turns`)."""
    missing = panel_missing()
    if missing:
        print(f"  skipping the panel scenario: {missing}", file=sys.stderr)
        return
    plain = start_server(args, tmp, "plain", "1")
    try:
        panel = start_server(args, tmp, "panel", "1", 10_000, "--panel", "0")
        try:
            with PanelWatcher(panel_url(panel.log)) as watcher:
                turns, figures = in_turns(
                    lambda: measure(args, panel, False), lambda: measure(args, plain, False)
                )
        finally:
            panel.stop()
    finally:
        plain.stop()
    # The rates move with whatever else the machine runs; the event loop's CPU time
    # per ack much less so: both say what the panel costs.
    loop_us = [t["during"]["cpu"]["loop"] * 1e4 / t["rate"] if t["rate"] else 0.0 for t in turns]
    rows["intake_panel_rr"] = {
        **row_of(turns[0], panel_messages=watcher.messages, scrapes=watcher.scrapes),
        "rate": figures["rate"],
        "plain_rate": figures["other_rate"],
        "vs_plain": figures["ratio"],
        "spread": figures["spread"],
        "loop_us": (loop_us[0] + loop_us[3]) / 2,
        "plain_loop_us": (loop_us[1] + loop_us[2]) / 2,
    }


def e2e_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    child = start_server(args, tmp, "e2e", "0")
    try:
        probe = lambda: slices.counts(stats(child.port))  # noqa: E731
        result = measure(args, child, False, during=window(child, probe, args.slices or 1))
        rows["e2e"] = e2e_figures(args, child.port, result)
    finally:
        child.stop()


def e2e_figures(args: argparse.Namespace, port: int, result: dict[str, Any], **extra: Any) -> Row:
    """The end-to-end row: listo/s over the window (from `estadisticas` at both
    ends, over the time between the two as they ran: a probe that ran late, on a
    busy machine or behind the load, counted orders past the window's end), how
    long the backlog took to drain once the load stopped, and with `--slices` the
    figures of each slice."""
    during = result["during"]
    (began, first), (ended, last) = during["samples"][0], during["samples"][-1]
    listo_rate = (last["listo"] - first["listo"]) / max(ended - began, 1e-9)
    if args.slices:
        extra.update(slices.figures(during["samples"], during["start"]))
    deadline = time.monotonic() + max(60.0, 20 * args.seconds)
    while True:
        figures = stats(port)
        backlog = figures["en_cola"] + figures["estados"][Estado.EN_PROCESO]
        if not backlog or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    drain = time.time() - during["end"]
    return row_of(result, listo_rate=listo_rate, drain_s=drain, left=backlog, **extra)


def many_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    child = start_server(args, tmp, "many", "1", max_conns=max(10_000, args.many + 100), warm=False)
    try:
        quiet(args)
        options = {"procs": args.load_procs, "engine": args.generator}
        result = drive(child.port, LINE, conns=args.many, limit=1, seconds=60, **options)
        warn(result, child)
        rss = peak_rss_mb(child.pid)
        ok = result["count"]  # the replies that said "ok": true; the others are "bad"
        fields = ("p50_ms", "p99_ms", "bad", "lost", "refused", "connect_failed", "connected", "connect_s")
        rows["many"] = {"acked": ok, **{k: result[k] for k in fields}, "rss_mb": rss}
    finally:
        child.stop()


def worktime_row(args: argparse.Namespace, tmp: Path, rows: dict[str, Row]) -> None:
    t = args.work_time_check
    child = start_server(args, tmp, "worktime", f"{t:g}", warm=False)
    try:
        expected = args.workers / t
        total = math.ceil(expected * (args.seconds + 3))  # never lets the workers run dry
        quiet(args)
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
