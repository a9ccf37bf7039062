"""The benchmark's baselines: a bare echo server of each kind and Redis, driven
like the order server (scenarios.py) to show what the machine and the load
generator allow, each checked with one more load process (`_baseline`).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from pedidos.tools import redis
from pedidos.tools.procs import Child
from pedidos.tools.report import Row
from pedidos.tools.scenarios import LINE, measure, row_of, warm_up


def _baseline(args: argparse.Namespace, child: Child, name: str, rows: dict[str, Row], line: bytes) -> None:
    """A baseline's two rows, each measured again with one more load process: if
    that raises its rate, the generator, not the baseline, was the ceiling.

    The window with one more process is bracketed by two with the usual count,
    and compared with their mean: on a shared VM two 5-s windows of one echo came
    up to 30 % apart, in either direction, so a single before/after pair said
    "generator-bound" or "one more process slows it" at random. Bracketing cancels
    a drift across the three windows; the row shows how far apart its own two
    windows came (`spread`), which is the resolution of that check in that run."""
    warm_up(args, child, line, greeting=False)
    for kind, pipelined in (("rr", False), ("pipe", True)):
        usual = functools.partial(measure, args, child, pipelined, line, greeting=False, check=False)
        first = usual()
        more = usual(procs=args.load_procs + 1)
        second = usual()
        row = mean_row(row_of(first), row_of(second))
        rows[f"{name}_{kind}"] = {
            **row,
            "headroom": more["rate"] / row["rate"] - 1,
            "spread": abs(first["rate"] - second["rate"]) / row["rate"],
        }


def mean_row(a: Row, b: Row) -> Row:
    """Two windows of one baseline as one row: the mean of every figure, but
    the failures of both (a bad reply in either is one too many)."""
    return {k: a[k] + b[k] if k in ("bad", "lost") else (a[k] + b[k]) / 2 for k in a}


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
