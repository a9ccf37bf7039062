"""The Redis baseline: a throwaway `redis-server` that fsyncs every write before its reply.

`appendonly yes` with `appendfsync always` is the same promise the order server
makes (nothing acknowledged is lost), so Redis taking the same JSON with RPUSH
is the yardstick for intake: one process, one fsync per event-loop iteration,
no IPC. It is started on a free loopback port in the benchmark's temporary
folder and stopped with it; without `redis-server` the rows say "skipped".
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from pedidos.tools.load import BenchError
from pedidos.tools.procs import Child

KEY = b"pedidos"


def available() -> str | None:
    return shutil.which("redis-server")


def rpush(line: bytes) -> bytes:
    """The RESP bytes of `RPUSH pedidos LINE` (without its newline): one `:N\\r\\n` reply each."""
    value = line.rstrip(b"\n")
    parts = [b"RPUSH", KEY, value]
    return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(tmp: Path) -> Child:
    program = available()
    assert program is not None
    folder = tmp / "redis"
    folder.mkdir(exist_ok=True)
    port = _free_port()
    argv = [program, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)]
    argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"]
    # No automatic AOF rewrite: it is compaction, not durability (every write
    # is still fsynced before its reply), and with the defaults it forked and
    # rewrote the whole list 3 times in five 5-s windows, on our 2 cores, in
    # whichever window it fell, as noise in the one-more-load-process check.
    # Without it Redis is, if anything, faster: the ratios against it can only
    # be less flattering to the order server.
    argv += ["--auto-aof-rewrite-percentage", "0"]
    return Child(argv, tmp / "redis.log", ready_text="Ready to accept connections", port=port)


def command(port: int, *parts: bytes) -> bytes:
    """One command over a fresh connection: its reply as Redis wrote it (RESP),
    read until the server closes (QUIT follows it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(_resp(p) for p in (parts, (b"QUIT",))))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.removesuffix(b"+OK\r\n")


def _resp(parts: tuple[bytes, ...]) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def check(child: Child) -> None:
    """After the Redis rows: that the Redis they measured fsynced its AOF before
    each reply and answered every RPUSH with its length, not an error. The load
    generator counts Redis's replies without reading them (an error is a line
    too), so a refusal (a full disk, the key of another type) was a reply/s."""
    fsync = command(child.port, b"CONFIG", b"GET", b"appendfsync").split(b"\r\n")
    aof = command(child.port, b"CONFIG", b"GET", b"appendonly").split(b"\r\n")
    info = dict(
        line.split(":", 1)
        for line in command(child.port, b"INFO", b"everything").decode("utf-8", "replace").splitlines()
        if ":" in line and not line.startswith(("$", "#"))
    )
    wrong = []
    if fsync[-2:-1] != [b"always"] or aof[-2:-1] != [b"yes"]:
        wrong.append(f"appendfsync {fsync[-2:-1]}, appendonly {aof[-2:-1]}")
    if info.get("aof_last_write_status") != "ok":
        wrong.append(f"aof_last_write_status {info.get('aof_last_write_status')}")
    if info.get("total_error_replies", "0") != "0":
        errors = {k: v for k, v in info.items() if k.startswith("errorstat_")}
        wrong.append(f"{info['total_error_replies']} error replies {errors}")
    if wrong:
        raise BenchError(f"the Redis baseline was not what its rows say: {'; '.join(wrong)}")
