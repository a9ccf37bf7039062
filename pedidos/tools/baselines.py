"""The benchmark's baselines: a bare echo server of each kind and Redis, driven
like the order server (scenarios.py) to show what the machine and the load
generator allow, each checked with one more load process (`_baseline`).
"""

from __future__ import annotations

import argparse
import bisect
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

from pedidos.tools import redis
from pedidos.tools.drive import percentile
from pedidos.tools.procs import Child
from pedidos.tools.report import HEADROOM_LIMIT, Row
from pedidos.tools.scenarios import LINE, measure, row_of, warm_up

BRACKETS = 3  # for a noisy row; each: the usual load, one more process, the usual load


def _baseline(args: argparse.Namespace, child: Child, name: str, rows: dict[str, Row], line: bytes) -> None:
    """A baseline's two rows, each measured again with one more load process: if
    that raises its rate, the generator, not the baseline, was the ceiling.

    The window with one more process is bracketed by two with the usual count,
    and compared with their mean: on a shared VM two 5-s windows of one echo came
    up to 30 % apart, in either direction, so a single before/after pair said
    "generator-bound" or "one more process slows it" at random. Bracketing cancels
    a drift across the three windows; the row shows how far apart its own usual
    windows came (`spread`), which is the resolution of that check in that run.

    One bracket cannot resolve a rise under 5 % in a row whose usual windows
    differ by more (Redis's fsync-bound rows: 6 to 29 % apart, their verdict
    −26 % to +11 % in three runs of one benchmark). So a row whose first
    bracket's windows came 5 % or more apart gets `BRACKETS` in all, pooled
    (the rate: every usual window; the rise: every window with one more process
    against that; the spread: the brackets' mean). Whether it gets more is
    decided by that spread alone, never by the rise: measuring again only while
    the verdict is "bound" would stop at the first "valid" and lean towards it."""
    warm_up(args, child, line, greeting=False)
    for kind, pipelined in (("rr", False), ("pipe", True)):
        usual = functools.partial(measure, args, child, pipelined, line, greeting=False, check=False)
        plain: list[dict] = []
        more: list[dict] = []
        spreads: list[float] = []
        for _ in range(BRACKETS):
            first = usual()
            more.append(usual(procs=args.load_procs + 1))
            second = usual()
            plain += [first, second]
            spreads.append(abs(first["rate"] - second["rate"]) / ((first["rate"] + second["rate"]) / 2))
            if spreads[0] < HEADROOM_LIMIT:  # the first bracket resolves a 5 % rise: enough
                break
        row = pooled_row(plain, more)
        rows[f"{name}_{kind}"] = {
            **row,
            "headroom": sum(w["rate"] for w in more) / len(more) / row["rate"] - 1,
            "spread": sum(spreads) / len(spreads),
            "brackets": len(more),
        }


def pooled_row(usual: list[dict], more: list[dict]) -> Row:
    """A baseline's row from its windows (`drive` results): the usual windows'
    mean rate and CPU shares, the percentiles of every reply timed in them (not
    a mean of each window's own), and the failures of every window, those with
    one more load process too (a bad reply in any is one too many)."""
    windows = [row_of(w) for w in usual]
    row = {k: sum(w[k] for w in windows) / len(windows) for k in windows[0]}
    pooled = Pooled([w["latencies"] for w in usual])
    row["p50_ms"] = percentile(pooled, 0.50) * 1000
    row["p99_ms"] = percentile(pooled, 0.99) * 1000
    for key in ("bad", "lost"):
        row[key] = sum(w[key] for w in usual + more)
    return row


class Pooled:
    """Sorted windows of latencies read as one sorted sequence, by index, without
    merging them: a list of every reply of six windows took ~32 bytes a reply
    (hundreds of MB for a fast echo over long windows)."""

    def __init__(self, parts: list[Sequence[float]]) -> None:
        self._parts = [p for p in parts if len(p)]
        self._len = sum(len(p) for p in self._parts)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: int) -> float:
        """The k-th smallest of all: in the part holding it, the value with k
        values below it and more than k at or below it."""
        if not 0 <= k < self._len:
            raise IndexError(k)
        for part in self._parts:
            lo, hi = 0, len(part)
            while lo < hi:
                mid = (lo + hi) // 2
                value = part[mid]
                below = sum(bisect.bisect_left(p, value) for p in self._parts)
                if below > k:
                    hi = mid
                elif sum(bisect.bisect_right(p, value) for p in self._parts) <= k:
                    lo = mid + 1
                else:
                    return value
        raise AssertionError("parts not sorted")


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
        redis.check(child)
    finally:
        child.stop()
