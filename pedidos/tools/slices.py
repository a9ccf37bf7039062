"""Steadiness of the end-to-end scenario (`--slices N`): the measured window cut
into N equal slices, with the orders acknowledged and finished in each.

A probe (`estadisticas`, and on PostgreSQL the table's `pg_stat_user_tables`
row) runs at every slice boundary, from the `during` hook of `drive`; each
slice's rates are the counts at its two ends over the time between the two
probes as they actually ran (halfway through each), so a late probe moves a
boundary rather than inflating a rate. The row keeps every slice for `--json`
and sums them up as first slice, last slice, last/first, min and max, so that
decay shows at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pedidos.domain import Estado

RATES = ("listo", "acks")  # per-slice rates, in the order the report shows them
TABLE_STATS = ("n_live_tup", "n_dead_tup", "autovacuum_count")
# The table's row in the cumulative statistics (PostgreSQL 15: each busy backend
# flushes its counts at most once a second, so the figures lag by about that).
TABLE_STATS_SQL = f"SELECT {', '.join(TABLE_STATS)} FROM pg_stat_user_tables WHERE relname = 'pedidos'"

Sample = tuple[float, Any]  # (wall time, what the probe returned), or None without a probe


def counts(figures: dict[str, Any]) -> dict[str, int]:
    """From an `estadisticas` reply: every order stored (each one was acknowledged,
    as the sum of `estados`) and the orders `listo`."""
    return {"acks": sum(figures["estados"].values()), "listo": figures["estados"][Estado.LISTO]}


def table_stats(conn: Any) -> dict[str, int]:
    """The `pedidos` table's live and dead tuples and autovacuum runs so far."""
    found = conn.execute(TABLE_STATS_SQL).fetchone()
    return dict(zip(TABLE_STATS, found or (0,) * len(TABLE_STATS), strict=True))


def sample(probe: Callable[[], Any] | None) -> Sample | None:
    """`probe()` with the wall time halfway through it."""
    if probe is None:
        return None
    began = time.time()
    value = probe()
    return ((began + time.time()) / 2, value)


def sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def run_window(
    start: float, end: float, parts: int, snapshot: Callable[[], Any], probe: Callable[[], Any] | None
) -> tuple[Any, Any, float, list[Sample | None]]:
    """The body of a `during` hook: `snapshot()` (CPU) and `probe()` at `start`,
    `probe()` at each of the `parts` - 1 inner slice boundaries, `snapshot()` and
    `probe()` at `end`. Returns both snapshots, the seconds between them as they
    ran (what CPU shares are of: a snapshot taken late on a busy machine would
    otherwise count CPU past the window against the window's length), and the
    samples, `parts` + 1 of them."""
    if probe is not None:
        probe()  # once before the window: a first query's set-up must not move its first boundary
    sleep_until(start)
    (began, before), samples = sample(snapshot), [sample(probe)]
    for k in range(1, parts):
        sleep_until(start + k * (end - start) / parts)
        samples.append(sample(probe))
    sleep_until(end)
    ended, after = sample(snapshot)
    samples.append(sample(probe))
    return before, after, ended - began, samples


def per_slice(samples: list[Sample], start: float) -> list[dict[str, Any]]:
    """Each slice between two samples: its bounds in seconds from the window's
    start, its rates, and whatever else the probe read at its end (dead tuples)."""
    out = []
    for (t0, v0), (t1, v1) in zip(samples, samples[1:], strict=False):
        took = max(t1 - t0, 1e-9)
        piece = {"from_s": round(t0 - start, 3), "to_s": round(t1 - start, 3)}
        piece.update({f"{k}_per_s": (v1[k] - v0[k]) / took for k in RATES})
        piece.update({k: v for k, v in v1.items() if k not in RATES})
        out.append(piece)
    return out


def figures(samples: list[Sample], start: float) -> dict[str, Any]:
    """The row's fields: every slice, and per rate first, last, last/first, min, max;
    with the table's statistics, its tuples at the end and the autovacuum runs
    over the window."""
    pieces = per_slice(samples, start)
    row: dict[str, Any] = {"slices": pieces, "slices_n": len(pieces)}
    row["slice_s"] = (samples[-1][0] - samples[0][0]) / len(pieces)
    for key in RATES:
        rates = [p[f"{key}_per_s"] for p in pieces]
        first, last = rates[0], rates[-1]
        row.update({f"slice_{key}_first": first, f"slice_{key}_last": last})
        row.update({f"slice_{key}_min": min(rates), f"slice_{key}_max": max(rates)})
        row[f"slice_{key}_ratio"] = last / first if first else None
    first, last = samples[0][1], samples[-1][1]
    if "n_dead_tup" in last:
        row.update(n_dead_tup=last["n_dead_tup"], n_live_tup=last["n_live_tup"])
        row["autovacuums"] = last["autovacuum_count"] - first["autovacuum_count"]
    return row


def describe(r: dict[str, Any]) -> str:
    """The summary the report's steadiness line shows."""
    parts = []
    for key, unit in zip(RATES, ("listo/s", "acks/s"), strict=True):
        ratio = r.get(f"slice_{key}_ratio")
        shown = "n/a" if ratio is None else f"**{ratio:.2f}**"
        first, last = r[f"slice_{key}_first"], r[f"slice_{key}_last"]
        low, high = r[f"slice_{key}_min"], r[f"slice_{key}_max"]
        parts.append(
            f"{unit}: first slice {first:,.0f}, last slice {last:,.0f}, last/first {shown}, "
            f"min/max {low:,.0f}/{high:,.0f}"
        )
    if "n_dead_tup" in r:
        tuples = f"{r['n_dead_tup']:,.0f} dead / {r['n_live_tup']:,.0f} live tuples"
        parts.append(f"at the end {tuples}, {r['autovacuums']:,.0f} autovacuum runs in the window")
    return "; ".join(parts)
