"""The benchmark's report: medians over runs, and the Markdown table that docs/benchmarks.md shows."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from pedidos.tools import slices

CPU_PARTS = ("loop", "threads", "writer", "workers", "load", "other", "steal")
NODE_CPU_PARTS = ("nodes", "pg", "load", "other", "steal")
HEADROOM_LIMIT = 0.05  # one more load process may raise a baseline by less than this
# An echo's loop must be at least this busy (% of a core): an echo that waits
# is held back by its load (the generator, or other programs on the machine's
# cores), and one more load process cannot show it when the cores are full.
# Not Redis: it waits for the disk's fsync by design (~70 %).
ECHO_BUSY_MIN = 90.0
Row = dict[str, Any]
BASELINES = ("echo_streams", "echo_protocol", "redis")


# Counts of what went wrong: over several runs, the sum (a failure in any run is
# one too many; a median would hide a run that had them, as a mean would a window).
FAILURES = ("bad", "lost", "refused", "connect_failed", "left")


def medians(runs: list[dict[str, Any]]) -> dict[str, Row]:
    """Every figure as its median over the runs, but the failures' sum."""
    out: dict[str, Row] = {}
    for run in runs:
        for name, row in run["rows"].items():
            for key, value in row.items():
                if isinstance(value, (int, float)):
                    out.setdefault(name, {}).setdefault(key, []).append(value)
    return {
        name: {k: sum(v) if k in FAILURES else statistics.median(v) for k, v in row.items()}
        for name, row in out.items()
    }


def _n(value: Any, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _us(r: Row, key: str) -> str:
    return f"{r[key]:,.0f} µs" if key in r else "n/a"


def _per_order(r: Row) -> str:
    """CPU per order of the nodes and of PostgreSQL (n/a: not on this machine)."""
    return f"; CPU/order: nodes {_us(r, 'us_node')}, PostgreSQL {_us(r, 'us_pg')}" if "us_node" in r else ""


def _result(name: str, r: Row) -> str:
    if name == "e2e":
        keep_up = f" = {r['keep_up']:.2f} of intake r/r" if "keep_up" in r else ""
        listo = f"{_n(r['rate'])} acks/s; {_n(r['listo_rate'])} listo/s{keep_up}; drain {r['drain_s']:.1f} s"
        return listo + _per_order(r)
    if name.startswith("dblimit_"):
        return f"{_n(r['rate'])} rows/s; CPU/row: client {_us(r, 'client_us')}, PostgreSQL {_us(r, 'pg_us')}"
    if name == "notify":
        pg = f"; PostgreSQL {_us(r, 'us_pg')}/order, {_us(r, 'sin_us_pg')} without" if "us_pg" in r else ""
        return _side_by_side(r, f"{_n(r['sin_rate'])} with --sin-notify", pg)
    if name == "sqlite":
        cpu = f"; CPU/order: node {_us(r, 'us_node')}, SQLite server {_us(r, 'sqlite_us')}"
        return _side_by_side(r, f"{_n(r['sqlite_rate'])} on SQLite", cpu)
    if name == "failover":
        back = f"{_n(r['handed_back'])} handed back"
        return f"**{r['took_s']:.2f} s** to the last handed-back order `listo` ({back})"
    if name == "esperar":
        return f"{_n(r['samples'])} orders, reply to the other node after its finish"
    if name == "many":
        refused = f"{_n(r['refused'])} refused, {_n(r['connect_failed'] + r['lost'])} failed"
        return f"{_n(r['acked'])} acked, {refused}; RSS {_n(r['rss_mb'])} MB; connect {r['connect_s']:.1f} s"
    if name == "intake_panel_rr":
        plain = f"{_n(r['rate'])} acks/s, {_n(r['plain_rate'])} without: {r['vs_plain']:.3f}"
        loop = f"loop {r['loop_us']:.0f} µs/ack, {r['plain_loop_us']:.0f} without"
        return f"{plain}; {loop}; {_n(r['scrapes'])} scrapes, {_n(r['panel_messages'])} pictures{_spread(r)}"
    if name == "worktime":
        return f"{r['rate']:.1f} listo/s = {r['ratio']:.2f} of N/T = {r['expected']:g}/s"
    unit = "acks" if name.startswith("intake") else "replies"
    return f"{_n(r['rate'])} {unit}/s" + _per_order(r)


def _side_by_side(r: Row, other: str, extra: str) -> str:
    """A row of two servers measured in turn: both rates, the ratio, the spread."""
    return f"{_n(r['rate'])} acks/s, {other}: **{r['ratio']:.2f}**{extra}{_spread(r)}"


def _spread(r: Row) -> str:
    """How far apart one server's two windows of a side-by-side pair came."""
    return f"; windows of one server {100 * r['spread']:.0f}% apart" if "spread" in r else ""


def _headroom(name: str, r: Row) -> str:
    """What one more load process did to a baseline: a rise of 5% or more means
    the generator was its ceiling, and the ratios against it flatter the server.
    With it, how far apart the baseline's own usual windows came (the check's
    resolution), and how many brackets it took (baselines._baseline)."""
    if "headroom" not in r:
        return ""
    flag = (
        " GENERATOR-BOUND"
        if r["headroom"] >= HEADROOM_LIMIT
        else " NOT AT ITS LIMIT"
        if _echo_waits(name, r)
        else ""
    )
    brackets = r.get("brackets", 1)
    times = f"{brackets:g} brackets, " if brackets > 1 else ""  # a median over 2 runs may be 2.5
    spread = f" ({times}{100 * r['spread']:.0f}% apart)" if "spread" in r else ""
    return f"{100 * r['headroom']:+.0f}%{flag}{spread}"


def table(rows: dict[str, Row], args: argparse.Namespace) -> str:
    """The medians as a Markdown table, ready for docs/benchmarks.md."""
    rr, pipe = f"{args.connections} conns", f"{args.pipeline_conns} conns x {args.depth}"
    scenarios = (
        ("echo_streams_rr", "echo, streams, req/resp", rr),
        ("echo_protocol_rr", "echo, Protocol, req/resp", rr),
        ("redis_rr", "Redis RPUSH, fsync always, req/resp", rr),
        ("intake_rr", "pedidos intake, req/resp", rr),
        ("intake_uv_rr", "pedidos intake, req/resp, uvloop", rr),
        ("intake_panel_rr", "pedidos intake, panel open", rr + ", /metrics every 1 s"),
        ("echo_streams_pipe", "echo, streams, pipelined", pipe),
        ("echo_protocol_pipe", "echo, Protocol, pipelined", pipe),
        ("redis_pipe", "Redis RPUSH, fsync always, pipelined", pipe),
        ("intake_pipe", "pedidos intake, pipelined", pipe),
        ("intake_uv_pipe", "pedidos intake, pipelined, uvloop", pipe),
        ("dblimit_1", "PostgreSQL bare script, 1 row per commit", "1 client, no server"),
        ("dblimit_100", "PostgreSQL bare script, 100 rows per commit", "1 client, no server"),
        ("e2e", f"pedidos end to end, {args.workers} workers", rr + ", work time 0"),
        ("e2e_slices", "pedidos end to end, steadiness", ""),
        ("sqlite", "pedidos intake, PostgreSQL vs SQLite", rr + ", 1 node, 1 SQLite server"),
        ("notify", "pedidos intake, NOTIFY vs --sin-notify", rr + ", 1 node each"),
        ("failover", "failover, kill -9 of a node", f"--lease {args.lease:g}, work time 1 s"),
        ("esperar", "esperar on another node", "2 nodes, 1 worker each, work time 0.2 s"),
        ("many", "pedidos many clients", f"{args.many} conns x 1 order"),
        ("worktime", f"pedidos work time {args.work_time_check:g} s", f"{args.workers} workers"),
    )
    head = ("scenario", "load", "result", "p50 ms", "p99 ms", "/ echo streams", "/ echo Protocol", "/ Redis")
    lines = [(*head, "+1 load process (own usual windows apart)", "CPU % " + "/".join(CPU_PARTS))]
    for name, label, load in scenarios:
        r = rows.get(name)
        if name == "e2e_slices" and "slices_n" in rows.get("e2e", {}):  # the same row, a line of its own
            r = rows["e2e"]
            seconds = f"{r['slice_s']:,.1f} s"
            lines.append((label, f"{r['slices_n']:.0f} slices of {seconds}", slices.describe(r), *[""] * 7))
        elif r is not None:
            ratios = tuple(_n(r.get(f"vs_{base}"), 2) for base in BASELINES)
            cpu = "/".join(_n(r.get(f"cpu_{k}")) for k in CPU_PARTS) if "cpu_loop" in r else ""
            if "cpu_nodes" in r:  # many nodes of one PostgreSQL: their trees, and PostgreSQL's
                cpu = ", ".join(f"{k} {_n(r[f'cpu_{k}'])}" for k in NODE_CPU_PARTS if f"cpu_{k}" in r)
            latency = (_n(r.get("p50_ms"), 1), _n(r.get("p99_ms"), 1))
            where = f"{load}, {r['nodes']:.0f} node{'s' if r['nodes'] != 1 else ''}" if "nodes" in r else load
            lines.append((label, where, _result(name, r), *latency, *ratios, _headroom(name, r), cpu))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _echo_waits(name: str, r: Row) -> bool:
    """An echo row whose loop was under ECHO_BUSY_MIN: not at its own limit."""
    return name.startswith("echo_") and r.get("cpu_loop", 100.0) < ECHO_BUSY_MIN


def ceilings(rows: dict[str, Row]) -> list[str]:
    """The baselines not at their own limit: one more load process raised the
    rate by HEADROOM_LIMIT or more, or an echo's loop was under ECHO_BUSY_MIN."""
    found = []
    for name, r in rows.items():
        if r.get("headroom", 0) >= HEADROOM_LIMIT:
            found.append(f"{name}: +{100 * r['headroom']:.0f}% with one more load process")
        elif _echo_waits(name, r):
            found.append(f"{name}: its loop at {r['cpu_loop']:.0f}% of a core, under {ECHO_BUSY_MIN:.0f}%")
    return found
