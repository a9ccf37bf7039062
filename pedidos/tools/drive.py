"""One window of load: `drive()` starts the load processes (C or Python), lets
them connect, starts them all at one instant, and merges what they saw.

It runs in the benchmark's own process; the processes are the C generator's
(cload.py) or the Python one's (load.py).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from pedidos.tools import cload
from pedidos.tools.load import GRACE_S, BenchError, PyLoad

START_DELAY_S = 0.3  # from "go" to the first request, so that every process is ready


def _split(total: int, parts: int) -> list[int]:
    """`total` in `parts` as even as can be, the larger first; no empty share."""
    return [s for s in (total // parts + (i < total % parts) for i in range(parts)) if s]


def percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def drive(
    port: int | list[int],
    line: bytes,
    *,
    conns: int,
    depth: int = 1,
    seconds: float,
    warm: float = 0.0,
    procs: int = 2,
    greeting: bool = True,
    check: bool = True,
    limit: int | None = None,
    engine: str = "c",
    during: Callable[[float, float, list[int]], Any] = lambda start, end, pids: None,
) -> dict[str, Any]:
    """Run the load: `conns` connections over `procs` processes, `depth`
    requests in flight each, for `warm` + `seconds` (or `limit` requests per
    connection). Figures cover the `seconds` after `warm`; with `check`, a
    reply without "ok": true is `bad` and neither counted nor timed (`latencies`:
    every timed reply's, sorted, for a row that pools windows); `during(start, end,
    pids)` runs meanwhile, with the window's wall times and the load pids.
    `engine` is "c" (cload, the default where it builds) or "python". With a
    list of ports (nodes of one service), the connections are spread evenly over
    them and each port gets `procs` load processes of its own."""
    ports = port if isinstance(port, list) else [port]
    shares = [
        (p, s) for p, n in zip(ports, _split(conns, len(ports)), strict=False) for s in _split(n, procs)
    ]
    spec = {"host": "127.0.0.1", "line": line, "depth": depth, "limit": limit}
    spec.update(check=check, greeting=greeting, go_timeout=120.0)
    binary = cload.build() if engine == "c" else None
    loads: list[Any] = []
    try:
        for share_port, share in shares:
            share_spec = {**spec, "port": share_port, "conns": share}
            loads.append(cload.CLoad(binary, share_spec) if binary else PyLoad(share_spec))
        ready = [load.ready(120) for load in loads]
        start = time.time() + START_DELAY_S
        for load in loads:
            load.go(start, warm, seconds)
        extra = during(start + warm, start + warm + seconds, [load.pid for load in loads])
        timeout = START_DELAY_S + warm + seconds + GRACE_S + 30
        results = [load.done(r, timeout) for load, r in zip(loads, ready, strict=True)]
        for result, r in zip(results, ready, strict=True):
            result["connect_s"] = r["connect_s"]
    except cload.LoadgenUnavailable as exc:
        raise BenchError(str(exc)) from None
    finally:
        for load in loads:
            load.close()
    latencies = array("d")
    for r in results:
        latencies.frombytes(r.pop("latencies"))
    ordered = array("d", sorted(latencies))
    merged: dict[str, Any] = {k: sum(r[k] for r in results) for k in results[0] if k != "sample_bad"}
    merged["sample_bad"] = next((r["sample_bad"] for r in results if r["sample_bad"]), "")
    merged["connect_s"] = max(r["connect_s"] for r in results)
    merged["rate"] = merged["count"] / seconds if limit is None else None
    merged["p50_ms"] = percentile(ordered, 0.50) * 1000
    merged["p99_ms"] = percentile(ordered, 0.99) * 1000
    merged["latencies"] = ordered
    merged["during"] = extra
    return merged
