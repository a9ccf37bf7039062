"""The benchmark's Python load generator: processes that each drive many connections.

The same code drives the order server and the echo baselines: each connection
sends one line (an order as JSON) and reads one line back, keeping `depth`
requests in flight. For the order server it first reads the greeting line.
Clients are `asyncio.Protocol`s that count lines with `bytes.count` and write
the next requests in one call, so that the generator costs little per request.

A `PyLoad` is one such process, with the same steps as the C generator's
`CLoad` (cload.py); `drive()` (drive.py) runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import time
from array import array
from collections import deque
from typing import Any

OK = b'"ok": true'
GRACE_S = 10.0  # after the window: how long outstanding replies may take


class BenchError(Exception):
    """The benchmark could not measure; the message says why."""


class Run:
    """What one load process measures, shared by its connections."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.line: bytes = spec["line"]
        self.depth: int = spec["depth"]
        self.limit: int | None = spec.get("limit")  # requests per connection; None: until stop_at
        self.check: bool = spec["check"]  # replies without "ok": true: bad, not counted
        self.greeting: bool = spec["greeting"]
        self.warm_at = self.stop_at = float("inf")
        self.count = self.bad = self.lost = self.connect_failed = self.refused = 0
        self.sample_bad = b""
        self.latencies = array("d")
        self.open: set[Client] = set()
        self.finished: asyncio.Future[None] | None = None

    def replies(self, client: Client, data: bytes) -> None:
        now = time.perf_counter()
        n = data.count(b"\n")
        sent = client.sent
        oks = None  # which of the n replies say "ok": true, when not all do
        if self.check and data.count(OK) != n:
            oks = [OK in reply for reply in data.split(b"\n")[:n]]
            self.bad += n - sum(oks)
            self.sample_bad = self.sample_bad or data[:300]
        if self.warm_at <= now < self.stop_at:
            latencies = self.latencies
            if oks is None:
                self.count += n
                for _ in range(n):
                    latencies.append(now - sent.popleft())
            else:  # a refusal is a reply, not an ack: neither counted nor timed
                self.count += sum(oks)
                for ok in oks:
                    began = sent.popleft()
                    if ok:
                        latencies.append(now - began)
        else:
            for _ in range(n):
                sent.popleft()
        if now < self.stop_at:
            client.send(n, now)
        if not sent:
            self.done(client)

    def done(self, client: Client) -> None:
        self.open.discard(client)
        if not self.open and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)


class Client(asyncio.Protocol):
    def __init__(self, run: Run, loop: asyncio.AbstractEventLoop) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.sent: deque[float] = deque()
        self.requests = 0
        self.buf = b""
        self.waiting_greeting = run.greeting
        self.greeted: asyncio.Future[bool] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.waiting_greeting:
            self.greeted.set_result(True)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        cut = data.rfind(b"\n") + 1
        self.buf = data[cut:]
        if cut == 0:
            return
        if cut < len(data):
            data = data[:cut]
        if self.waiting_greeting:
            self.waiting_greeting = False
            first = data.index(b"\n") + 1
            if not self.greeted.done():
                self.greeted.set_result(OK in data[:first])
            data = data[first:]
            if not data:
                return
        self.run.replies(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.greeted.done():
            self.greeted.set_result(False)
        if self in self.run.open:
            self.run.lost += 1
            self.run.done(self)

    def send(self, n: int, now: float) -> None:
        limit = self.run.limit
        if limit is not None:
            n = min(n, limit - self.requests)
        if n > 0 and self.transport is not None and not self.transport.is_closing():
            self.requests += n
            self.sent.extend([now] * n)
            self.transport.write(self.run.line * n)


def load_main(pipe: Any, spec: dict[str, Any]) -> None:
    """Entry point of a load process: connect, report, wait for "go", run, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark process stops us
    try:
        result = asyncio.run(_load(pipe, spec))
    except BaseException as exc:  # reported to the parent, which raises it
        result = {"error": f"{type(exc).__name__}: {exc}"}
    pipe.send(("done", result))


async def _load(pipe: Any, spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = Run(spec)
    limit = asyncio.Semaphore(spec.get("connect_at_once", 200))

    async def connect() -> Client | None:
        async with limit:
            try:
                _, client = await asyncio.wait_for(
                    loop.create_connection(lambda: Client(run, loop), spec["host"], spec["port"]), 30
                )
                if await asyncio.wait_for(client.greeted, 30):
                    return client
                run.refused += 1
                client.transport.close()  # type: ignore[union-attr]
            except (OSError, asyncio.TimeoutError):
                run.connect_failed += 1
            return None

    began = time.perf_counter()
    clients = [c for c in await asyncio.gather(*(connect() for _ in range(spec["conns"]))) if c]
    pipe.send(("ready", {"connected": len(clients), "connect_s": time.perf_counter() - began}))
    if not pipe.poll(spec["go_timeout"]):
        raise BenchError("no go from the benchmark")
    _, start_wall, warm, seconds = pipe.recv()
    start = time.perf_counter() + (start_wall - time.time())
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    run.warm_at, run.stop_at = start + warm, start + warm + seconds
    run.finished = loop.create_future()
    run.open = set(clients)
    now = time.perf_counter()
    for client in clients:
        client.send(run.depth, now)
    if run.open:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(run.finished, run.stop_at - time.perf_counter() + GRACE_S)
    for client in clients:
        client.transport.close()  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    return {
        "count": run.count,
        "bad": run.bad,
        "sample_bad": run.sample_bad.decode("utf-8", "replace"),
        "lost": run.lost,
        "unanswered": sum(len(c.sent) for c in clients),
        "requests": sum(c.requests for c in clients),
        "connected": len(clients),
        "connect_failed": run.connect_failed,
        "refused": run.refused,
        "latencies": run.latencies.tobytes(),
    }


def _receive(pipe: Any, timeout: float, what: str) -> Any:
    try:
        if pipe.poll(timeout):
            kind, value = pipe.recv()
            if isinstance(value, dict) and "error" in value:
                raise BenchError(f"load process failed: {value['error']}")
            return value
    except EOFError:
        raise BenchError(f"a load process died while {what}") from None
    raise BenchError(f"a load process did not finish {what} within {timeout:.0f} s")


class PyLoad:
    """One Python load process (`load_main`), with the same steps as a C one: ready, go, done."""

    def __init__(self, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipe, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=load_main, args=(theirs, spec), daemon=True)
        self.proc.start()
        theirs.close()
        self.pid = self.proc.pid

    def ready(self, timeout: float) -> dict[str, Any]:
        return _receive(self.pipe, timeout, "connecting")

    def go(self, start: float, warm: float, seconds: float) -> None:
        self.pipe.send(("go", start, warm, seconds))

    def done(self, ready: dict[str, Any], timeout: float) -> dict[str, Any]:
        return _receive(self.pipe, timeout, "running")

    def close(self) -> None:
        self.proc.join(1 if self.proc.exitcode is None else 0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
